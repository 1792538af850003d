"""kj.generate / kj.verify in one process: layout, batch invariance, resume, refusals, guidance, PNGs;
and its three parts alone: planning, shard scanning, writing."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from shard_files import read_shards

import karras_jax as kj
from karras_jax.cli import main
from karras_jax.generation import job
from karras_jax.generation._writer import shard_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models


def _files(folder):
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    kj.generate("mixture", "0-99", out, batch=32, progress=False)
    return out


def test_the_folder_holds_shards_and_a_manifest_with_their_checksums(done):
    names = sorted(p.name for p in done.iterdir())
    assert names == ["manifest.json"] + [f"shard-{i:06d}.npz" for i in range(4)]
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["seeds"] == "0-99" and manifest["num_shards"] == 4 and manifest["shard_size"] == 32
    assert manifest["model"] == "mixture:default_mixture" and manifest["solver"] == "heun"
    assert manifest["steps"] == 18 and len(manifest["sigmas"]) == 19 and "jax" in manifest["versions"]
    for name, checksum in manifest["checksums"].items():
        assert hashlib.sha256((done / name).read_bytes()).hexdigest() == checksum
    seeds, samples = read_shards(done)
    assert seeds.tolist() == list(range(100)) and seeds.dtype == np.int64
    assert samples.shape == (100, 2) and samples.dtype == np.float32
    assert kj.verify(done)["ok"]


def test_sample_s_does_not_depend_on_the_batch_it_was_generated_in(done, tmp_path):
    kj.generate("mixture", "0-99", tmp_path, batch=7, progress=False)
    np.testing.assert_allclose(read_shards(tmp_path)[1], read_shards(done)[1], rtol=1e-5, atol=1e-6)


def test_sample_s_is_kj_sample_with_the_key_of_seed_s(done):
    model = kj.load_generate_model("mixture")
    state = kj.set_timesteps(model.config, model.steps, model.schedule)
    sampler = kj.make_sampler(model.apply_fn, state, model.config, (2,))
    direct = sampler(None, kj.seed_keys(np.asarray([3, 50])))
    np.testing.assert_allclose(read_shards(done)[1][[3, 50]], direct, rtol=1e-5, atol=1e-6)


def test_a_rerun_keeps_complete_shards_and_regenerates_missing_or_corrupt_ones(done, tmp_path):
    for name, data in _files(done).items():
        (tmp_path / name).write_bytes(data)
    again = kj.generate("mixture", "0-99", tmp_path, batch=32, progress=False)
    assert (again.written, again.skipped) == (0, 4)
    corrupt = bytearray((tmp_path / "shard-000001.npz").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (tmp_path / "shard-000001.npz").write_bytes(bytes(corrupt))
    (tmp_path / "shard-000003.npz").unlink()
    report = kj.verify(tmp_path)
    assert not report["ok"] and report["missing"] == ["shard-000003.npz"]
    assert list(report["corrupt"]) == ["shard-000001.npz"]
    fixed = kj.generate("mixture", "0-99", tmp_path, batch=50, progress=False)  # any batch resumes
    assert (fixed.written, fixed.skipped) == (2, 2)
    assert _files(tmp_path) == _files(done)


def test_a_shard_replaced_by_a_valid_file_of_other_content_fails_its_checksum(done, tmp_path):
    for name, data in _files(done).items():
        (tmp_path / name).write_bytes(data)
    with np.load(tmp_path / "shard-000000.npz") as f:
        seeds, samples = f["seeds"], f["samples"]
    np.savez(tmp_path / "shard-000000.npz", seeds=seeds, samples=samples + 1)
    assert "checksum" in kj.verify(tmp_path)["corrupt"]["shard-000000.npz"]


@pytest.mark.parametrize("change, named", [
    (dict(seeds="0-98"), "seeds"), (dict(s_churn=0.0), "config.s_churn"), (dict(steps=10), "steps"),
    (dict(solver="euler"), "solver"), (dict(model="generate_models:gaussian_images"), "model")])
def test_a_folder_of_another_job_is_refused_naming_what_differs(done, change, named):
    args = dict(model="mixture", seeds="0-99", batch=32, progress=False)
    args.update(change)
    with pytest.raises(ValueError, match=f"what differs: .*{named}"):
        kj.generate(args.pop("model"), args.pop("seeds"), done, **args)


def test_guidance_and_pngs_for_a_conditional_image_model(tmp_path):
    seeds = "0-29"
    plain = kj.generate("generate_models:gaussian_images", seeds, tmp_path / "w1", batch=16, progress=False)
    guided = kj.generate("generate_models:gaussian_images", seeds, tmp_path / "w3", batch=16, guidance=3.0,
                         png=True, progress=False)
    assert plain.shards == guided.shards == 2
    s, x1 = read_shards(tmp_path / "w1")
    _, x3 = read_shards(tmp_path / "w3")
    high = (s % 3) == 2  # class mean +1
    assert abs(x1[high].mean() - 1.0) < 0.25 and x3[high].mean() > 1.5  # guidance pushes past the mean
    assert x3.shape == (30, 4, 4) and kj.verify(tmp_path / "w3")["ok"]  # the postprocessed shape
    again = kj.generate("generate_models:gaussian_images", seeds, tmp_path / "w3", batch=16, guidance=3.0,
                        png=True, progress=False)
    assert again.written == 0
    png = tmp_path / "w3" / "000000" / "000017.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "w3" / "000000").glob("*.png"))) == 30


BAD_MODELS = [("nowhere:thing", "cannot load"), ("generate_models:not_a_model", "int"),
              ("no-colon", "neither")]


@pytest.mark.parametrize("model, match", BAD_MODELS)
def test_bad_models_are_named(tmp_path, model, match):
    with pytest.raises(ValueError, match=match):
        kj.generate(model, "0-3", tmp_path, progress=False)


def test_guidance_needs_a_conditional_model(tmp_path):
    with pytest.raises(ValueError, match="conditional"):
        kj.generate("mixture", "0-3", tmp_path, guidance=2.0, progress=False)


def test_the_command_generates_verifies_and_reports_problems(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "--model", "mixture", "--seeds", "0-49", "--batch", "20", "--out", str(out),
                 "--no-progress"]) == 0
    assert "3 shards (3 written now" in capsys.readouterr().out
    assert main(["generate", "--verify", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{out}: 3 shards; the job is complete.",
                                                    "          3 complete: seeds 0-49"]
    (out / "shard-000002.npz").unlink()
    assert main(["generate", "--verify", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "rerun the same generate command to finish it" in lines[0]
    assert lines[1:] == ["          2 complete: seeds 0-39", "          1 missing: seeds 40-49"]
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--model", "mixture", "--seeds", "0-50", "--out", str(out), "--no-progress"])
    assert refused.value.code == 2 and "another generation job" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", "mixture", "--out", str(out)])
    assert "needs --seeds" in capsys.readouterr().err


def _partial(done, tmp_path):
    """``done`` as a kill left it mid-job: shards 0, 1 recorded in progress-p0.json, 2 written unrecorded,
    3 not written; and shard 1 then damaged on disk."""
    folder = tmp_path / "partial"
    folder.mkdir()
    manifest = json.loads((done / "manifest.json").read_text())
    first_two = ("shard-000000.npz", "shard-000001.npz")
    recorded = {k: v for k, v in manifest["checksums"].items() if k in first_two}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "checksums": {}}))
    (folder / "progress-p0.json").write_text(json.dumps(recorded))
    for i in range(3):
        name = f"shard-{i:06d}.npz"
        (folder / name).write_bytes((done / name).read_bytes())
    data = bytearray((folder / "shard-000001.npz").read_bytes())
    data[-30] ^= 0xFF
    (folder / "shard-000001.npz").write_bytes(bytes(data))
    return folder


def test_verify_summarises_each_state_of_a_partial_folder_with_its_seed_ranges(done, tmp_path, capsys):
    folder = _partial(done, tmp_path)
    report = kj.verify(folder)
    assert (report["complete"], report["written"], report["unrecorded"], report["missing"]) == (
        [], ["shard-000000.npz"], ["shard-000002.npz"], ["shard-000003.npz"])
    assert list(report["corrupt"]) == ["shard-000001.npz"] and not report["ok"]
    assert report["seed_ranges"]["written"] == [(0, 31)] and report["seed_ranges"]["missing"] == [(96, 99)]
    assert main(["generate", "--verify", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "rerun the same generate command" in lines[0]
    assert "1 written, checksum in progress-pN.json" in lines[1] and lines[1].endswith("seeds 0-31")
    assert "1 corrupt" in "".join(lines) and "seeds 32-63" in "".join(lines)
    assert main(["generate", "--verify", str(folder), "--verbose"]) == 1
    verbose = capsys.readouterr().out
    assert "shard-000001.npz: " in verbose and "shard-000003.npz" in verbose
    assert kj.generate("mixture", "0-99", folder, batch=32, progress=False).skipped == 1
    assert kj.verify(folder)["ok"] and _files(folder) == _files(done)


def test_verify_ranges_split_where_the_seed_set_skips(tmp_path):
    kj.generate("mixture", "0-9,100-109", tmp_path, batch=5, progress=False)
    for i in (1, 2):
        (tmp_path / f"shard-{i:06d}.npz").unlink()
    assert kj.verify(tmp_path)["seed_ranges"]["missing"] == [(5, 9), (100, 104)]


def test_verify_gives_many_shards_as_a_few_ranges(tmp_path, capsys):
    kj.generate("mixture", "0-59", tmp_path, batch=2, shard_size=2, progress=False)
    for i in (3, 4, 5, 9, 20, 22, 24, 26):
        (tmp_path / f"shard-{i:06d}.npz").unlink()
    report = kj.verify(tmp_path)
    assert report["seed_ranges"]["missing"] == [(6, 11), (18, 19), (40, 41), (44, 45), (48, 49), (52, 53)]
    assert report["seed_ranges"]["complete"][:2] == [(0, 5), (12, 17)]
    main(["generate", "--verify", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "          8 missing: seeds 6-11, 18-19, 40-41, 44-45 and 2 more ranges"

def test_planning_checks_overrides_and_builds_the_manifest_without_writing(tmp_path):
    out = tmp_path / "new"
    plan = job._plan("mixture", "0-9", out, batch=4, s_churn=0.0, steps=5)
    assert not out.exists()  # planning writes nothing
    assert plan.config.s_churn == 0.0 and plan.manifest["config"]["s_churn"] == 0.0
    assert plan.manifest["steps"] == 5 and len(plan.manifest["sigmas"]) == 6
    assert (plan.manifest["shard_size"], plan.manifest["num_shards"]) == (4, 3)  # shard size: the batch
    assert plan.seeds.take(0, 99).tolist() == list(range(10)) and not plan.resumed
    assert plan.manifest["checksums"] == {} and "jax" in plan.manifest["versions"]


def test_planning_a_resume_reads_the_saved_manifest_and_keeps_its_shard_size(done):
    plan = job._plan("mixture", "0-99", done, batch=7)
    assert plan.resumed and plan.manifest["shard_size"] == 32 and len(plan.manifest["checksums"]) == 4
    with pytest.raises(ValueError, match="what differs: .*shard_size"):
        job._plan("mixture", "0-99", done, batch=7, shard_size=10)


def test_process_0_changes_the_folder_only_once_every_process_has_read_and_probed_it(tmp_path, monkeypatch):
    # Two processes, played by hand: before the wait, a manifest written by process 0 would make a
    # process still planning take the new job for a resume (another path, other collectives), and
    # the sweep of temporary files would delete that process's write probe.
    plan = job._plan("mixture", "0-9", tmp_path, batch=4)
    probe = tmp_path / ".karras_jax_write_probe.other.tmp"  # process 1's, mid-write
    probe.touch()
    seen = []

    def wait(value, processes, message):
        seen.append((int(value), processes, sorted(p.name for p in tmp_path.iterdir())))

    monkeypatch.setattr(job, "_same_everywhere", wait)
    monkeypatch.setattr(job, "_barrier", lambda processes, name: None)
    job._open(plan, 0, 2)
    assert seen == [(0, 2, [probe.name])]  # not resumed; nothing written, the probe still there
    assert sorted(p.name for p in tmp_path.iterdir()) == [job.MANIFEST]  # then the sweep and the manifest

@pytest.mark.parametrize("args, match", [
    (dict(batch=0), "batch must be an int >= 1"), (dict(batch=2.0), "batch"), (dict(batch=True), "batch"),
    (dict(shard_size=-1), "shard_size must be an int >= 1"),
    (dict(png=True), r"png \(--png\) needs an image model"), (dict(guidance=1.0), "conditional")])
def test_planning_refuses_bad_arguments_naming_them(tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        job._plan("mixture", "0-9", tmp_path, **args)
    assert not list(tmp_path.iterdir())


def _manifest(seeds="0-9", shard_size=4, shape=(2,)):
    return {"seeds": seeds, "shard_size": shard_size, "num_shards": -(-10 // shard_size),
            "sample_shape": list(shape)}


def _shard(folder, index, seeds, value=0.0):
    data = shard_bytes(np.asarray(seeds), np.full((len(seeds), 2), value, np.float32))
    (folder / f"shard-{index:06d}.npz").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_scanning_keeps_only_shards_whose_recorded_checksum_matches(tmp_path):
    sha = _shard(tmp_path, 0, [0, 1, 2, 3])
    _shard(tmp_path, 1, [4, 5, 6, 7])  # right, but nothing vouches for it
    bad = _shard(tmp_path, 2, [8, 9, 10])  # one seed too many, checksum recorded
    scan = job._scan(tmp_path, _manifest(), {"shard-000000.npz": sha, "shard-000002.npz": bad})
    assert scan.done == {"shard-000000.npz": sha}
    assert list(scan.todo) == [1, 2]
    assert scan.problems == {"shard-000001.npz": "no checksum recorded for it",
                             "shard-000002.npz": "holds other seeds"}
    (tmp_path / "shard-000001.npz").unlink()
    assert job._scan(tmp_path, _manifest(), {}).problems["shard-000001.npz"] == "missing"


def test_scanning_checks_known_checksums_and_splits_shards_over_processes(tmp_path):
    known = {f"shard-{i:06d}.npz": _shard(tmp_path, i, list(range(4 * i, min(4 * i + 4, 10))))
             for i in range(3)}
    wrong = {**known, "shard-000001.npz": "0" * 64}
    scan = job._scan(tmp_path, _manifest(), wrong)
    assert list(scan.todo) == [1] and "checksum" in scan.problems["shard-000001.npz"]
    second = job._scan(tmp_path, _manifest(), known, process=1, processes=2)  # shard i is process i % 2's
    assert list(second.done) == ["shard-000001.npz"] and not second.todo
    first = job._scan(tmp_path, _manifest(), known, process=0, processes=2)
    assert list(first.done) == ["shard-000000.npz", "shard-000002.npz"]


def test_writing_generates_exactly_the_todo_shards_and_records_their_checksums(tmp_path):
    plan = job._plan("mixture", "0-9", tmp_path, batch=4)
    scan = job._Scan(done={"shard-000000.npz": "a" * 64}, todo=[1], problems={})
    assert job._write(plan, scan) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress-p0.json", "shard-000001.npz"]
    record = json.loads((tmp_path / "progress-p0.json").read_text())
    sha = hashlib.sha256((tmp_path / "shard-000001.npz").read_bytes()).hexdigest()
    assert record == {"shard-000000.npz": "a" * 64, "shard-000001.npz": sha}
    sampler = kj.make_sampler(plan.model.apply_fn, plan.state, plan.model.config, (2,))
    direct = sampler(None, kj.seed_keys(np.arange(4, 8)))
    with np.load(tmp_path / "shard-000001.npz") as f:
        assert f["seeds"].tolist() == [4, 5, 6, 7]
        np.testing.assert_allclose(f["samples"], direct, rtol=1e-5, atol=1e-6)


def test_writing_nothing_records_the_complete_shards_only(tmp_path):
    plan = job._plan("mixture", "0-9", tmp_path, batch=4)
    assert job._write(plan, job._Scan(done={"shard-000002.npz": "b" * 64}, todo=[], problems={})) == 0
    assert json.loads((tmp_path / "progress-p0.json").read_text()) == {"shard-000002.npz": "b" * 64}


def test_a_writer_error_stops_writing_and_reaches_the_caller(tmp_path):
    plan = job._plan("mixture", "0-9", tmp_path / "gone", batch=4)  # the folder does not exist
    with pytest.raises(OSError, match="shard-00000"):
        job._write(plan, job._Scan(done={}, todo=[0, 1], problems={}))


def test_a_second_job_reuses_the_compiled_sampler(tmp_path):
    kj.generate("mixture", "0-9", tmp_path / "a", batch=5, progress=False)
    before = job._compiled_sampler.cache_info()
    kj.generate("mixture", "20-29", tmp_path / "b", batch=5, progress=False)  # another seed range
    after = job._compiled_sampler.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    kj.generate("mixture", "0-9", tmp_path / "c", batch=5, steps=4, progress=False)  # other levels: compiled
    assert job._compiled_sampler.cache_info().misses == before.misses + 1


def test_pngs_without_pillow_are_refused_before_anything_is_sampled(tmp_path, monkeypatch):
    real = job.importlib.util.find_spec
    monkeypatch.setattr(job.importlib.util, "find_spec", lambda name: None if name == "PIL" else real(name))
    with pytest.raises(ImportError, match=r"karras-jax\[png\]"):
        kj.generate("generate_models:gaussian_images", "0-3", tmp_path / "out", png=True, progress=False)
    assert not (tmp_path / "out").exists()


# --- what a resume trusts: a schema-checked manifest, recorded checksums, finite samples -------------


def _copy(folder, to, **replace):
    to.mkdir(exist_ok=True)
    for name, data in _files(folder).items():
        (to / name).write_bytes(replace.get(name, data))
    return to


DAMAGED = [
    (b'{"format": "karras_jax.gen', "not valid JSON"), (b"[]", "JSON list, not an object"),
    (b"\xff\xfe", "not text"),
    (b'{"format": "karras_jax.generation/0"}', "format is 'karras_jax.generation/0'"),
    (b'{"format": "something else"}', "not a karras_jax generation manifest")]


def _edited(done, **changes):
    manifest = {**json.loads((done / "manifest.json").read_text()), **changes}
    return json.dumps({k: v for k, v in manifest.items() if v is not ...}).encode()


@pytest.mark.parametrize("case", range(len(DAMAGED) + 5))
def test_a_damaged_or_foreign_manifest_is_refused_naming_it_and_nothing_is_adopted(done, tmp_path, case):
    wrong_shapes = [(dict(model=...), "no 'model'"), (dict(num_shards="4"), "'num_shards' is str, not int"),
                    (dict(shard_size=True), "'shard_size' is bool"), (dict(num_shards=5), "disagree"),
                    (dict(checksums={"shard-000000.npz": "x"}), "'checksums' is not a table")]
    data, what = DAMAGED[case] if case < len(DAMAGED) else (_edited(done, **wrong_shapes[case - 5][0]),
                                                            wrong_shapes[case - 5][1])
    folder = _copy(done, tmp_path / "gen", **{"manifest.json": data})
    before = _files(folder)
    with pytest.raises(ValueError, match="manifest.json") as refused:
        kj.generate("mixture", "0-99", folder, batch=32, s_churn=0.0, progress=False)  # other settings
    assert what in str(refused.value) and f"delete {folder}" in str(refused.value)
    with pytest.raises(ValueError, match=what.replace("(", r"\(").replace(")", r"\)")):
        kj.verify(folder)
    assert _files(folder) == before  # nothing written, nothing adopted


@pytest.mark.parametrize("leftover", ["shard-000000.npz and more", "progress-p0.json"])
def test_shards_or_progress_records_without_a_manifest_are_refused(done, tmp_path, leftover):
    folder = _copy(done, tmp_path / "gen")
    (folder / "manifest.json").unlink()
    if leftover == "progress-p0.json":
        (folder / "progress-p0.json").write_text("{}")
        for shard in folder.glob("shard-*"):
            shard.unlink()
    with pytest.raises(ValueError, match=f"{leftover}.* but no manifest.json, so no job vouches"):
        kj.generate("mixture", "0-99", folder, batch=32, progress=False)
    assert not (folder / "manifest.json").exists()


@pytest.mark.parametrize("record, kept", [(None, 4), ("{not json", 0), ('["shard-000000.npz"]', 0),
                                          ('{"shard-000000.npz": "not a sha"}', 0)])
def test_an_unfinished_job_keeps_only_the_shards_its_progress_records_vouch_for(done, tmp_path, record, kept):
    manifest = json.loads((done / "manifest.json").read_text())
    folder = _copy(done, tmp_path / "gen", **{"manifest.json": _edited(done, checksums={})})
    (folder / "progress-p0.json").write_text(json.dumps(manifest["checksums"]) if record is None else record)
    report = kj.verify(folder)  # the manifest vouches for none yet; a sound progress record for all
    assert not report["ok"] and not report["complete"]
    assert (len(report["written"]), len(report["unrecorded"])) == (kept, 4 - kept)
    again = kj.generate("mixture", "0-99", folder, batch=32, progress=False)
    assert (again.skipped, again.written) == (kept, 4 - kept)  # a damaged record: regenerated, not adopted
    assert _files(folder) == _files(done) and kj.verify(folder)["ok"]


@pytest.mark.parametrize("model, seeds, batch, named, bad_shard", [
    ("generate_models:nan_at_seed_7", "0-19", 4, "seed 7;", "shard-000001.npz"),
    ("generate_models:inf_at_seeds_3_and_12", "0-19", 16, "seeds 3, 12;", "shard-000000.npz"),
    ("generate_models:nan_at_seed_7", "5,7,9", 1, "seed 7;", "shard-000001.npz")])
def test_non_finite_samples_stop_the_job_naming_the_seeds_and_write_nothing_of_their_shard(
        tmp_path, model, seeds, batch, named, bad_shard):
    for _ in range(2):  # a rerun fails the same way: never a folder generate and verify disagree about
        with pytest.raises(FloatingPointError, match=named):
            kj.generate(model, seeds, tmp_path, batch=batch, progress=False)
        report = kj.verify(tmp_path)
        assert not report["ok"] and not report["corrupt"]
        assert bad_shard in report["missing"] and not (tmp_path / bad_shard).exists()
        assert not report["unrecorded"]
        for name in report["written"]:  # the shards before it: recorded, finite
            with np.load(tmp_path / name) as shard:
                assert np.isfinite(shard["samples"]).all()


@pytest.mark.parametrize("change", [dict(image_range=None), dict(image_range=(0.0, 1.0)),
                                    dict(image_range=(0.0, 1.0), sample_shape=(3, 4, 4))])
def test_png_is_refused_up_front_for_samples_that_are_not_images(tmp_path, change):
    model = kj.load_generate_model("mixture")._replace(**change)
    with pytest.raises(ValueError, match=r"png \(--png\) needs an image model.*\(H, W\), \(H, W, 1\) or "
                                         r"\(H, W, 3\); this model's samples are \("):
        kj.generate(model, "0-3", tmp_path / "out", png=True, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["file", "below a file", "dangling symlink"])
def test_an_out_that_cannot_be_a_folder_is_refused_naming_it(tmp_path, make):
    (tmp_path / "f").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    out, what = {"file": (tmp_path / "f", "is a file"), "below a file": (tmp_path / "f" / "x", "is below"),
                 "dangling symlink": (tmp_path / "link", "is a symlink to .*nowhere, which does not")}[make]
    with pytest.raises(OSError, match=f"{out} {what}"):
        kj.generate("mixture", "0-3", out, progress=False)


def test_a_dry_run_plans_and_counts_but_writes_nothing(done, tmp_path):
    fresh = kj.generate("mixture", "0-4294967295", tmp_path / "new", batch=512, dry_run=True)
    assert (fresh.shards, fresh.written, fresh.skipped) == (2**23, 2**23, 0)
    assert not (tmp_path / "new").exists()
    folder = _copy(done, tmp_path / "gen")
    (folder / "shard-000002.npz").unlink()
    before = _files(folder)
    resume = kj.generate("mixture", "0-99", folder, batch=32, dry_run=True)
    assert (resume.written, resume.skipped) == (1, 3) and _files(folder) == before


def test_a_flow_schedule_job_writes_strict_json_and_resumes(tmp_path):
    kj.generate("mixture", "0-9", tmp_path, schedule="flow", progress=False)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    manifest = json.loads((tmp_path / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["sigmas"][0] == "inf" and manifest["sigmas"][-1] == 0.0
    assert kj.verify(tmp_path)["ok"]
    assert kj.generate("mixture", "0-9", tmp_path, schedule="flow", progress=False).written == 0
