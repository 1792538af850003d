"""The digits example: data split, a shortened training run that learns, and its CLI commands."""

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits example needs the digits extra (scikit-learn)")

import karras_jax as kj  # noqa: E402
import karras_jax.training as kt  # noqa: E402
from karras_jax.cli import main  # noqa: E402
from karras_jax.examples import digits  # noqa: E402

# about 50 s of training on 2 cores; the full example (2400 steps of 64) takes about 3 minutes
SMALL = dataclasses.replace(digits.DigitsConfig(), steps=500, batch=32, warmup_steps=50, learning_rate=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    metrics = digits.run_example(out, SMALL, guided=200, unguided=200, progress=False)
    return out, metrics


def test_the_split_is_scikit_learns_stratified_30_percent_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x_train, y_train, x_test, y_test = digits.load_split()
    x, y = load_digits(return_X_y=True)
    expected = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    assert x_train.shape == (1257, 8, 8) and x_test.shape == (540, 8, 8)
    np.testing.assert_array_equal(x_train.reshape(1257, 64), expected[0])
    np.testing.assert_array_equal(y_test, expected[3])


def test_pixels_round_trip_through_the_networks_scale():
    pixels = digits.load_split()[0][:5]
    x = digits.to_model(pixels)
    assert x.shape == (5, 8, 8, 1) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(digits.to_pixels(x), pixels, atol=1e-5)


def test_a_shortened_run_learns(trained):
    out, m = trained
    losses = np.asarray(json.loads((out / "metrics.json").read_text())["final_loss_50"])
    assert losses < 0.8  # starts near 1.1 (the network outputs 0 at initialisation)
    assert m["guided_accuracy"] > 0.3  # chance is 0.1; about 0.5 after these 500 steps, 0.996 after 2400
    assert m["frechet_unguided_vs_test"] < m["frechet_gaussian_baseline_vs_test"] * 3
    for name in ("checkpoint.msgpack", "guided.png", "unguided.png", "loss.png", "metrics.json"):
        assert (out / name).stat().st_size > 0


def test_frechet_floor_is_the_distance_between_the_real_splits(trained):
    _, m = trained
    assert 0.1 < m["frechet_train_vs_test_floor"] < 0.3  # 0.188 with this classifier
    assert m["classifier_test_accuracy"] > 0.95


def test_sample_digits_writes_balanced_labelled_samples_on_the_pixel_scale(trained, tmp_path):
    out, _ = trained
    path = tmp_path / "s.npz"
    assert main(["sample-digits", "--checkpoint", str(out), "--out", str(path), "--n", "23"]) == 0
    with np.load(path) as f:
        assert sorted(f.files) == ["labels", "samples"]
        samples, labels = f["samples"], f["labels"]
    assert samples.shape == (23, 8, 8) and samples.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(23)]
    assert samples.min() >= 0 and samples.max() <= 16


def test_sample_digits_is_reproducible_and_unconditional_labels_are_minus_one(trained, tmp_path):
    out, _ = trained
    runs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.npz"
        assert main(["sample-digits", "--checkpoint", str(out), "--out", str(path), "--n", "12",
                     "--unconditional", "--seed", "3"]) == 0
        with np.load(path) as f:
            runs.append((f["samples"], f["labels"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1].tolist() == [-1] * 12


def test_sample_i_does_not_depend_on_the_batch_it_is_drawn_in(trained):
    out, _ = trained
    cfg, params = digits.load_model(out)
    labels = digits.balanced_labels(7)
    whole = digits.sample_digits(cfg, params, 7, labels=labels, guidance=1.0, batch=7)
    chunked = digits.sample_digits(cfg, params, 7, labels=labels, guidance=1.0, batch=3)
    np.testing.assert_allclose(whole, chunked, atol=1e-4)


def cli_error(capsys, args):
    """The one-line message of a refused command (as SystemExit's text or on stderr) and its exit code."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    code = info.value.code
    text = (code if isinstance(code, str) else "") + capsys.readouterr().err
    assert code not in (0, None) and text.strip() and "\n" not in text.strip(), text
    return text


def test_sample_digits_errors_are_one_line(trained, tmp_path, capsys):
    out, _ = trained
    assert "no checkpoint" in cli_error(capsys, ["sample-digits", "--checkpoint", str(tmp_path), "--out",
                                                 str(tmp_path / "x.npz"), "--n", "2"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.msgpack").write_bytes((out / "checkpoint.msgpack").read_bytes())
    kj.save_model_recipe(tmp_path / "other", "generate_models:tiny_mlp")
    other = ["sample-digits", "--checkpoint", str(tmp_path / "other"), "--out", str(tmp_path / "x.npz"),
             "--n", "2"]
    assert "not a digits checkpoint" in cli_error(capsys, other)
    assert ".npz" in cli_error(capsys, ["sample-digits", "--checkpoint", str(out), "--out",
                                        str(tmp_path / "x.txt"), "--n", "2"])
    with pytest.raises(SystemExit):
        main(["sample-digits", "--checkpoint", str(out), "--out", str(tmp_path / "x.npz"), "--n", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_train_digits_command_trains_writes_a_checkpoint_and_resumes(tmp_path, capsys):
    args = ["train-digits", "--out", str(tmp_path), "--steps", "4", "--batch", "16", "--channels", "4",
            "--checkpoint-every", "2", "--no-eval"]
    assert main(args) == 0
    assert "trained 4 steps (resumed at 0)" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.msgpack").exists()
    function, settings = kj.load_model_recipe(tmp_path)  # how `generate --model DIR` rebuilds it
    assert function == digits.RECIPE and settings["channels"] == 4 and settings["steps"] == 4
    assert digits.load_model(tmp_path)[0] == dataclasses.replace(digits.DigitsConfig(), steps=4, batch=16,
                                                                 channels=4)
    assert main(args) == 0
    assert "resumed at 4" in capsys.readouterr().out
    assert "batch (saved 16, now 32)" in cli_error(capsys, [*args[:-1], "--batch", "32", "--no-eval"])


def test_train_digits_command_trains_the_dit_at_a_chosen_learning_rate(tmp_path, capsys):
    args = ["train-digits", "--out", str(tmp_path), "--steps", "2", "--batch", "16", "--channels", "4",
            "--model", "dit", "--learning-rate", "1e-3", "--no-eval"]
    assert main(args) == 0
    assert digits.load_model(tmp_path)[0] == dataclasses.replace(
        digits.DigitsConfig(), steps=2, batch=16, channels=4, model="dit", learning_rate=1e-3)
    assert "--model" in cli_error(capsys, [*args[:-3], "--model", "vit", "--no-eval"])
    assert "--learning-rate" in cli_error(capsys, [*args[:-2], "-1", "--no-eval"])


def test_a_digits_checkpoint_is_a_model_for_generate(trained, tmp_path):
    out, _ = trained
    result = kj.generate(str(out), "0-19", tmp_path, batch=10, guidance=2.0, png=True, progress=False)
    assert result.shards == 2 and kj.verify(tmp_path)["ok"]
    with np.load(tmp_path / "shard-000001.npz") as f:
        assert f["samples"].shape == (10, 8, 8) and f["samples"].min() >= 0 and f["samples"].max() <= 16
    assert (tmp_path / "000000" / "000019.png").exists()
    again = kj.generate(str(out), "0-19", tmp_path, batch=10, guidance=2.0, png=True, progress=False)
    assert again.written == 0  # resumes: the digits shards pass their own checks


def test_a_digits_job_edits_test_digits_and_measures_them_with_the_classifiers_features(trained, tmp_path):
    out, _ = trained
    x_test = digits.load_split()[2][:10]
    np.savez(tmp_path / "test.npz", samples=x_test)
    kj.generate(str(out), "0-9", tmp_path / "zero", init=tmp_path / "test.npz", strength=0.0, progress=False)
    with np.load(tmp_path / "zero" / "shard-000000.npz") as f:  # strength 0: the digits (to_model, to_pixels)
        np.testing.assert_allclose(f["samples"], x_test, atol=1e-5)
    kj.generate(str(out), "0-9", tmp_path / "edit", init=tmp_path / "test.npz", strength=0.5, progress=False,
                features="karras_jax.examples.digits:classifier_features", keep_samples=True)
    with np.load(tmp_path / "edit" / "shard-000000.npz") as f:
        edited, features = f["samples"], f["features"]
    assert features.shape == (10, 64) and not np.allclose(edited, x_test, atol=0.5)
    clf = digits._fitted_classifier()
    want = digits._feature_stats(clf, edited)
    got = kj.FeatureStats.load(tmp_path / "edit" / "stats.npz")
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.covariance, want.covariance, rtol=1e-4, atol=1e-6)


# --- the DiT (issue 17) ----------------------------------------------------------------------

# DigitsConfig(model="dit", learning_rate=1e-3), 2400 steps of 64: guided accuracy 0.998, unguided
# 0.873, Frechet 0.40 (floor 0.19) in 220 s of training, 290 s in all, on 2 cores


def test_a_dit_run_trains_resumes_and_is_a_model_for_generate(tmp_path):
    cfg = dataclasses.replace(digits.DigitsConfig(), model="dit", steps=4, batch=16, channels=4)
    run = digits.train_digits(tmp_path, cfg, progress=False, checkpoint_every=2)
    assert np.isfinite(run.losses).all()
    function, settings = kj.load_model_recipe(tmp_path)
    assert function == digits.RECIPE and settings["model"] == "dit"
    loaded, params = digits.load_model(tmp_path)
    assert loaded == cfg and params["params"]["block_3"]["qkv"]["kernel"].shape == (16, 3, 4, 4)
    pixels = digits.sample_digits(cfg, params, 10, labels=np.arange(10))
    assert pixels.shape == (10, 8, 8) and np.isfinite(pixels).all()
    assert digits.train_digits(tmp_path, cfg, progress=False).resumed_from == 4
    result = kj.generate(str(tmp_path), "0-9", tmp_path / "gen", batch=10, guidance=2.0, progress=False)
    assert result.shards == 1 and kj.verify(tmp_path / "gen")["ok"]


def test_unet_settings_are_saved_without_the_model_field_so_older_folders_resume():
    assert "model" not in digits.DigitsConfig().settings()
    assert digits.DigitsConfig.from_dict(digits.DigitsConfig().settings()) == digits.DigitsConfig()
    assert digits.DigitsConfig(model="dit").settings()["model"] == "dit"


# --- post-hoc EMA (issue 20) -------------------------------------------------------------------


def test_a_run_with_ema_profiles_snapshots_sweeps_and_writes_sample_digits_folders(tmp_path, capsys):
    cfg = dataclasses.replace(digits.DigitsConfig(), steps=6, batch=16, channels=4, ema_profiles=[0.05, 0.1])
    assert cfg.ema_profiles == (0.05, 0.1) and cfg.settings()["ema_profiles"] == (0.05, 0.1)
    digits.train_digits(tmp_path, cfg, progress=False, checkpoint_every=3, snapshot_every=2)
    assert [step for step, _ in kt.list_ema_snapshots(tmp_path)] == [2, 4, 6]
    assert digits.load_model(tmp_path)[0] == cfg  # the recipe's list comes back as the tuple
    assert digits.train_digits(tmp_path, cfg, progress=False, snapshot_every=2).resumed_from == 6
    swept = digits.sweep_ema(tmp_path, (0.05, 0.15), n=20, png=tmp_path / "sweep.png")
    assert swept["sigma_rel"] == [0.05, 0.15] and swept["step"] == 6 and swept["snapshots"] == 3
    assert all(np.isfinite(swept["frechet_vs_test"])) and (tmp_path / "sweep.png").stat().st_size > 0
    written = kt.write_posthoc_ema(tmp_path, tmp_path / "ema", [0.15])
    assert main(["sample-digits", "--checkpoint", str(written[0]), "--out", str(tmp_path / "s.npz"),
                 "--n", "10", "--guidance", "1"]) == 0  # the sweep's compiled sampler
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (10, 8, 8)
    with pytest.raises(ValueError, match=r"ema_profiles\[0\] must be in"):
        dataclasses.replace(cfg, ema_profiles=(0.5,))


def test_settings_hold_ema_profiles_only_when_tracked_so_older_folders_resume():
    assert "ema_profiles" not in digits.DigitsConfig().settings()


# --- inputs checked before anything is loaded, trained or written (issue 16) ----------------


@pytest.mark.parametrize("field, value, error, match", [
    ("steps", 0, ValueError, "steps must be an int >= 1"),
    ("steps", 2.5, ValueError, "steps must be an int >= 1"),
    ("batch", -1, ValueError, "batch must be an int >= 1"),
    ("channels", True, ValueError, "channels must be an int >= 1"),
    ("sample_steps", 0, ValueError, "sample_steps"),
    ("seed", -1, ValueError, "seed must be an int >= 0"),
    ("warmup_steps", -5, ValueError, "warmup_steps must be an int >= 0"),
    ("learning_rate", 0.0, ValueError, "learning_rate must be > 0"),
    ("learning_rate", float("nan"), ValueError, "learning_rate must be > 0"),
    ("sigma_data", -0.75, ValueError, "sigma_data must be > 0"),
    ("cond_drop_prob", 1.5, ValueError, r"cond_drop_prob must be in \[0, 1\]"),
    ("cond_drop_prob", "0.1", TypeError, "cond_drop_prob must be a real number"),
    ("ema_sigma_rel", 0.5, ValueError, r"ema_sigma_rel must be in \(0, 1/sqrt\(12\)"),
    ("guidance", -1.0, ValueError, "guidance must be >= 0"),
    ("model", "vit", ValueError, r"model must be one of \('unet', 'dit'\), got 'vit'"),
])
def test_a_config_field_out_of_range_is_refused_naming_it(field, value, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(digits.DigitsConfig(), **{field: value})


def test_train_digits_refuses_a_bad_out_or_checkpoint_every_before_loading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "load_split", lambda: pytest.fail("loaded the data before checking"))
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(OSError, match="file"):
            digits.train_digits(out, SMALL, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        digits.train_digits(tmp_path / "run", SMALL, progress=False, checkpoint_every=0)
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("counts", [{"guided": 5}, {"unguided": 0}, {"guided": 10.0}])
def test_run_example_refuses_too_few_samples_before_training(tmp_path, monkeypatch, counts):
    monkeypatch.setattr(digits, "train_digits", lambda *a, **k: pytest.fail("trained before checking"))
    with pytest.raises(ValueError, match=rf"{next(iter(counts))} must be an int >= 10"):
        digits.run_example(tmp_path, SMALL, progress=False, **counts)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arguments, error, match", [
    ({"labels": np.full(4, 2.5)}, ValueError, r"labels must be \(4,\) integer classes in 0..9, got float64"),
    ({"labels": np.arange(3)}, ValueError, r"labels must be \(4,\) integer classes"),
    ({"labels": np.array([0, 1, 2, 10])}, ValueError, "with values 0..10"),
    ({"labels": np.arange(4), "guidance": -1.0}, ValueError, "guidance must be >= 0"),
    ({"labels": np.arange(4), "guidance": "2"}, TypeError, "guidance must be a real number"),
    ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    ({"batch": 0}, ValueError, "batch must be an int >= 1"),
])
def test_sample_digits_refuses_bad_inputs_before_sampling(arguments, error, match):
    with pytest.raises(error, match=match):
        digits.sample_digits(SMALL, None, 4, **arguments)  # params are never reached


def test_load_model_names_a_folder_that_is_not_a_digits_model(tmp_path):
    (tmp_path / kj.CHECKPOINT_FILE).write_bytes(b"anything")
    with pytest.raises(ValueError, match=r"is not a digits checkpoint: .* has no model.json"):
        digits.load_model(tmp_path)
    kj.save_model_recipe(tmp_path, "generate_models:tiny_mlp")
    with pytest.raises(ValueError, match="its model.json names generate_models:tiny_mlp, not"):
        digits.load_model(tmp_path)
    kj.save_model_recipe(tmp_path, digits.RECIPE, {"steps": 0})
    with pytest.raises(ValueError, match=r"model.json holds settings that are not a digits config: steps"):
        digits.load_model(tmp_path)
