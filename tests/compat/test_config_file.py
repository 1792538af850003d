"""scheduler_config.json: diffusers' file format, both directions, and clear errors."""

import json

import pytest

import karras_jax as kj

CUSTOM = dict(sigma_min=0.01, sigma_max=80.0, s_noise=1.003, s_churn=40.0, s_min=0.1, s_max=30.0)


def _write(folder, payload, name="scheduler_config.json"):
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / name
    file.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return file


def _diffusers_scheduler_class():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.schedulers.deprecated.scheduling_karras_ve import KarrasVeScheduler

    return KarrasVeScheduler


# --- round trips -------------------------------------------------------------------------


def test_save_then_from_pretrained_round_trip(tmp_path):
    scheduler = kj.KarrasVeScheduler(**CUSTOM)
    file = scheduler.save_pretrained(tmp_path / "new" / "dir")  # created if needed
    assert file == tmp_path / "new" / "dir" / "scheduler_config.json" and file.is_file()
    loaded, state = kj.KarrasVeScheduler.from_pretrained(tmp_path / "new" / "dir")
    assert isinstance(loaded, kj.KarrasVeScheduler)
    assert loaded.config == scheduler.config
    assert isinstance(state, kj.KarrasVeState) and not state.is_set  # as diffusers' Flax did


def test_saved_file_is_diffusers_format(tmp_path):
    file = kj.KarrasVeScheduler(**CUSTOM).save_pretrained(tmp_path)
    payload = json.loads(file.read_text())
    assert payload.pop("_class_name") == "KarrasVeScheduler"
    assert isinstance(payload.pop("_diffusers_version"), str)
    assert payload == CUSTOM


def test_functional_save_and_load(tmp_path):
    cfg = kj.KarrasVeConfig(**CUSTOM)
    file = kj.save_config(cfg, tmp_path)
    assert kj.load_config(tmp_path) == cfg
    assert kj.load_config(file) == cfg  # the file itself works too


def test_subfolder(tmp_path):
    kj.KarrasVeScheduler(**CUSTOM).save_pretrained(tmp_path / "scheduler")
    loaded, _ = kj.KarrasVeScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.config == kj.KarrasVeConfig(**CUSTOM)
    with pytest.raises(FileNotFoundError):
        kj.KarrasVeScheduler.from_pretrained(tmp_path, subfolder="unet")


def test_missing_keys_take_the_defaults(tmp_path):
    _write(tmp_path, {"_class_name": "KarrasVeScheduler", "s_churn": 0})
    loaded, _ = kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert loaded.config == kj.KarrasVeConfig(s_churn=0.0)


def test_flax_class_name_loads(tmp_path):
    _write(tmp_path, {"_class_name": "FlaxKarrasVeScheduler", "_diffusers_version": "0.12.0",
                      **CUSTOM})
    loaded, _ = kj.FlaxKarrasVeScheduler.from_pretrained(tmp_path)
    assert loaded.config == kj.KarrasVeConfig(**CUSTOM)


# --- diffusers interoperability ----------------------------------------------------------


def test_file_written_by_diffusers_loads(tmp_path):
    theirs = _diffusers_scheduler_class()(sigma_max=80, s_churn=40)  # ints, as users write them
    theirs.save_pretrained(tmp_path)
    loaded, _ = kj.KarrasVeScheduler.from_pretrained(tmp_path)
    for key in CUSTOM:
        assert getattr(loaded.config, key) == pytest.approx(theirs.config[key], rel=1e-12), key


def test_our_file_loads_in_diffusers_with_the_same_values(tmp_path):
    diffusers_cls = _diffusers_scheduler_class()
    kj.KarrasVeScheduler(**CUSTOM).save_pretrained(tmp_path)
    theirs = diffusers_cls.from_pretrained(tmp_path)
    assert isinstance(theirs, diffusers_cls)
    assert {key: theirs.config[key] for key in CUSTOM} == CUSTOM
    assert theirs.init_noise_sigma == CUSTOM["sigma_max"]


# --- errors --------------------------------------------------------------------------------


def test_unknown_keys_warn_naming_them_and_are_ignored(tmp_path):
    _write(tmp_path, {"_class_name": "KarrasVeScheduler", "num_train_timesteps": 1000,
                      "beta_schedule": "linear", **CUSTOM})
    with pytest.warns(UserWarning, match="num_train_timesteps") as record:
        loaded, _ = kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert "beta_schedule" in str(record[0].message)
    assert loaded.config == kj.KarrasVeConfig(**CUSTOM)


def test_underscore_bookkeeping_keys_do_not_warn(tmp_path, recwarn):
    _write(tmp_path, {"_class_name": "KarrasVeScheduler", "_diffusers_version": "0.42.1",
                      "_use_default_values": ["s_noise"], **CUSTOM})
    kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        kj.KarrasVeScheduler.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        kj.KarrasVeScheduler.from_pretrained(tmp_path)  # a directory without the file


def test_hub_id_is_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="local"):
        kj.KarrasVeScheduler.from_pretrained("google/ncsnpp-celebahq-256")


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"sigma_max": NaN}',
                                  b'{"sigma_max": Infinity}', b"\xff\xfe{"],
                         ids=["syntax", "empty", "nan", "infinity", "not-utf8"])
def test_malformed_json_raises_value_error_naming_the_file(tmp_path, data):
    (tmp_path / "scheduler_config.json").write_bytes(data)
    with pytest.raises(ValueError, match="scheduler_config.json") as info:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_json_that_is_not_an_object(tmp_path):
    _write(tmp_path, "[1, 2]")
    with pytest.raises(TypeError, match="scheduler_config.json"):
        kj.KarrasVeScheduler.from_pretrained(tmp_path)


def test_wrong_class_name_raises(tmp_path):
    _write(tmp_path, {"_class_name": "DDPMScheduler", **CUSTOM})
    with pytest.raises(ValueError, match="_class_name") as info:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert "scheduler_config.json" in str(info.value) and "DDPMScheduler" in str(info.value)


@pytest.mark.parametrize("key", list(CUSTOM))
@pytest.mark.parametrize("bad", ["80", True, None, [80.0], {"v": 1}, "__import__('os')"])
def test_wrong_value_type_names_file_and_key(tmp_path, key, bad):
    _write(tmp_path, {"_class_name": "KarrasVeScheduler", **{**CUSTOM, key: bad}})
    with pytest.raises(TypeError, match=key) as info:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert "scheduler_config.json" in str(info.value)


@pytest.mark.parametrize("key,bad,match", [("sigma_min", -1.0, "sigma_min must be > 0"),
                                           ("s_churn", -1, "s_churn must be >= 0"),
                                           ("sigma_max", 1e400, "sigma_max"),
                                           ("s_min", 60.0, "s_min must be <= s_max")])
def test_out_of_range_values_name_file_and_key(tmp_path, key, bad, match):
    _write(tmp_path, json.dumps({**CUSTOM, key: bad}).replace("Infinity", "1e400"))
    with pytest.raises(ValueError, match=match) as info:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert "scheduler_config.json" in str(info.value)


def test_integer_too_large_for_a_float_names_file_and_key(tmp_path):
    _write(tmp_path, '{"sigma_max": 1' + "0" * 400 + "}")
    with pytest.raises(ValueError, match="sigma_max must be finite") as info:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert "scheduler_config.json" in str(info.value)


def test_from_config_dict_errors_name_the_key():
    with pytest.raises(TypeError, match="s_noise"):
        kj.KarrasVeScheduler.from_config({"s_noise": "1.0"})
    with pytest.raises(ValueError, match="_class_name"):
        kj.KarrasVeScheduler.from_config({"_class_name": "EulerDiscreteScheduler"})


def test_from_config_accepts_overrides_like_diffusers():
    scheduler = kj.KarrasVeScheduler.from_config({"sigma_max": 80.0}, s_noise=1.0)
    assert scheduler.config.sigma_max == 80.0 and scheduler.config.s_noise == 1.0


def test_save_config_is_save_pretrained(tmp_path):
    path = kj.KarrasVeScheduler(s_churn=3.0).save_config(tmp_path)
    scheduler, _ = kj.KarrasVeScheduler.from_pretrained(path.parent)
    assert scheduler.config.s_churn == 3.0


def test_unknown_key_warning_points_at_the_callers_line(tmp_path):
    (tmp_path / "scheduler_config.json").write_text('{"beta_start": 0.1}')
    with pytest.warns(UserWarning, match="beta_start") as record:
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    assert record[0].filename == __file__


# --- writes are atomic; odd files are named errors ---------------------------------------------


def test_a_failed_save_leaves_the_previous_file_byte_for_byte(tmp_path):
    import subprocess
    import sys
    import textwrap

    kj.KarrasVeScheduler(s_churn=3.0).save_pretrained(tmp_path)
    file = tmp_path / "scheduler_config.json"
    before = file.read_bytes()
    script = textwrap.dedent(f"""
        import resource, sys
        import karras_jax as kj
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))  # smaller than any config file
        try:
            kj.KarrasVeScheduler(s_churn=7.0).save_pretrained({str(tmp_path)!r})
        except OSError as err:
            print(err)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 3, result.stderr
    assert f"cannot write {file}" in result.stdout
    assert file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler_config.json"]


def test_save_into_a_folder_that_refuses_files(tmp_path, monkeypatch):
    import errno
    import tempfile

    kj.save_config(kj.KarrasVeConfig(), tmp_path)
    before = (tmp_path / "scheduler_config.json").read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match="cannot write .*scheduler_config.json: Read-only file system"):
        kj.save_config(kj.KarrasVeConfig(s_churn=1.0), tmp_path)
    assert (tmp_path / "scheduler_config.json").read_bytes() == before


def test_deeply_nested_json_is_a_value_error_naming_the_file(tmp_path):
    file = tmp_path / "scheduler_config.json"
    file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="scheduler_config.json.*nested too deeply"):
        kj.load_config(tmp_path)


def test_a_pipeline_folder_suggests_the_scheduler_subfolder(tmp_path):
    kj.KarrasVeScheduler().save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match='pass subfolder="scheduler"'):
        kj.KarrasVeScheduler.from_pretrained(tmp_path)
    scheduler, _ = kj.KarrasVeScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert scheduler.config == kj.KarrasVeConfig()
