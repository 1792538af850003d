"""kj.generate / kj.verify in one process: layout, batch invariance, resume, refusals, guidance, PNGs."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import karras_jax as kj
from karras_jax.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models


def _samples(folder):
    seeds, samples = [], []
    for path in sorted(Path(folder).glob("shard-*.npz")):
        with np.load(path) as f:
            seeds.append(f["seeds"])
            samples.append(f["samples"])
    return np.concatenate(seeds), np.concatenate(samples)


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
    seeds, samples = _samples(done)
    assert seeds.tolist() == list(range(100)) and seeds.dtype == np.int64
    assert samples.shape == (100, 2) and samples.dtype == np.float32
    assert kj.verify(done)["ok"]


def test_sample_s_does_not_depend_on_the_batch_it_was_generated_in(done, tmp_path):
    kj.generate("mixture", "0-99", tmp_path, batch=7, progress=False)
    np.testing.assert_allclose(_samples(tmp_path)[1], _samples(done)[1], rtol=1e-5, atol=1e-6)


def test_sample_s_is_kj_sample_with_the_key_of_seed_s(done):
    model = kj.load_generate_model("mixture")
    state = kj.set_timesteps(model.config, model.steps, model.schedule)
    sampler = kj.make_sampler(model.apply_fn, state, model.config, (2,))
    direct = sampler(None, kj.seed_keys(np.asarray([3, 50])))
    np.testing.assert_allclose(_samples(done)[1][[3, 50]], direct, rtol=1e-5, atol=1e-6)


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
    s, x1 = _samples(tmp_path / "w1")
    _, x3 = _samples(tmp_path / "w3")
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
    assert "3/3 shards complete" in capsys.readouterr().out
    (out / "shard-000002.npz").unlink()
    assert main(["generate", "--verify", str(out)]) == 1
    assert "missing    shard-000002.npz" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="another generation job"):
        main(["generate", "--model", "mixture", "--seeds", "0-50", "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit):
        main(["generate", "--model", "mixture", "--out", str(out)])
    assert "needs --seeds" in capsys.readouterr().err
