"""Feature statistics while generating: ``kj.generate(features=...)``, ``generate --features``, ``fd``.

A job with a feature function writes each shard's features (not its samples, unless kept)
and, once complete, ``stats.npz``: the FeatureStats of every sample's features, the same bytes
after a kill and resume; verify checks it; ``karras-jax fd`` compares two of them.
"""

import functools
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from shard_files import read_shards

import karras_jax as kj
from karras_jax.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models

import generate_models  # noqa: E402

FEATURES = "generate_models:square_features"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    kj.generate("mixture", "0-99", out, batch=32, progress=False)
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("measured")
    kj.generate("mixture", "0-99", out, batch=32, features=FEATURES, progress=False)
    return out


def test_the_stats_are_those_of_every_samples_features_in_float64(plain, measured):
    features = generate_models.square_features(read_shards(plain)[1]).astype(np.float64)
    stats = kj.FeatureStats.load(measured / "stats.npz")
    assert int(stats.count) == 100 and stats.dim == 4
    np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-7)


def test_shards_hold_features_and_not_samples_unless_kept(plain, measured, tmp_path):
    for path in sorted(measured.glob("shard-*.npz")):
        with np.load(path) as shard:
            assert sorted(shard.files) == ["features", "seeds"] and shard["features"].dtype == np.float32
    manifest = json.loads((measured / "manifest.json").read_text())
    assert manifest["features"] == {"function": FEATURES, "dim": 4, "samples": False}
    kj.generate("mixture", "0-99", tmp_path, batch=32, features=FEATURES, keep_samples=True, progress=False)
    with np.load(tmp_path / "shard-000001.npz") as shard, np.load(plain / "shard-000001.npz") as want:
        assert sorted(shard.files) == ["features", "samples", "seeds"]
        np.testing.assert_array_equal(shard["samples"], want["samples"])
    assert (tmp_path / "stats.npz").read_bytes() == (measured / "stats.npz").read_bytes()


def test_a_killed_job_resumed_writes_the_same_stats_bytes(measured, tmp_path):
    kj.generate("mixture", "0-99", tmp_path, batch=32, features=FEATURES, progress=False)
    (tmp_path / "stats.npz").unlink()
    (tmp_path / "shard-000002.npz").unlink()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "checksums": {}}))  # as if never finished
    (tmp_path / "progress-p0.json").write_text(json.dumps(
        {k: v for k, v in manifest["checksums"].items() if k != "shard-000002.npz"}))
    again = kj.generate("mixture", "0-99", tmp_path, batch=32, features=FEATURES, progress=False)
    assert (again.written, again.skipped) == (1, 3)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in measured.iterdir()}


def test_verify_checks_the_stats_against_the_shards(measured, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in measured.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert kj.verify(folder)["ok"]
    kj.FeatureStats.empty(4).update(np.ones((3, 4), np.float32)).save(folder / "stats.npz")
    report = kj.verify(folder)
    assert not report["ok"] and "not the statistics of the shards" in report["stats"]
    (folder / "stats.npz").unlink()
    assert "stats.npz" in kj.verify(folder)["stats"]
    assert kj.generate("mixture", "0-99", folder, features=FEATURES, progress=False).written == 0
    assert kj.verify(folder)["ok"]


def test_another_feature_function_is_another_job(measured):
    with pytest.raises(ValueError, match="features"):
        kj.generate("mixture", "0-99", measured, batch=32, progress=False)
    with pytest.raises(ValueError, match="features"):
        kj.generate("mixture", "0-99", measured, batch=32, features="generate_models:nan_features",
                    progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(features="generate_models:no_such_function"), ValueError, "cannot load"),
    (dict(features=42), TypeError, "features must be a function"),
    (dict(features=functools.partial(generate_models.square_features)), ValueError, "module-level function"),
    (dict(features=lambda x: x), ValueError, "module-level function"),
    (dict(features="generate_models:one_dim_features"), ValueError, "must return \\(1, dim\\)"),
    (dict(features="generate_models:complex_features"), ValueError, "real numbers"),
    (dict(features="generate_models:in_place_features"), ValueError, "read-only"),
    (dict(keep_samples=True), ValueError, "keep_samples"),
])
def test_bad_feature_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        kj.generate("mixture", "0-9", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_non_finite_features_stop_the_job_naming_the_seeds(tmp_path):
    with pytest.raises(FloatingPointError, match="the feature function gave non-finite features"):
        kj.generate("mixture", "0-99", tmp_path, batch=32, features="generate_models:nan_features",
                    progress=False)


def test_the_cli_generates_stats_and_fd_compares_them(plain, measured, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["generate", "--model", "mixture", "--seeds", "0-99", "--batch", "32", "--out", str(out),
                 "--features", FEATURES, "--no-progress"]) == 0
    assert "stats.npz" in capsys.readouterr().out
    assert (out / "stats.npz").read_bytes() == (measured / "stats.npz").read_bytes()
    assert main(["fd", str(out), str(measured / "stats.npz")]) == 0
    value, rest = capsys.readouterr().out.split(maxsplit=1)
    assert abs(float(value)) < 1e-8 and rest.strip() == "(REF 100 samples, GEN 100, 4 features)"
    # a folder of samples, measured on the fly, against the stats: the same set
    assert main(["fd", str(plain), str(out), "--features", FEATURES]) == 0
    assert float(capsys.readouterr().out.split()[0]) < 1e-9
    with pytest.raises(SystemExit):
        main(["fd", str(plain), str(out)])
    assert "holds no stats.npz; pass a feature function" in capsys.readouterr().err


def test_fd_against_a_reference_matches_the_float64_formula(plain, measured, tmp_path):
    reference = np.random.default_rng(0).normal(size=(500, 4))
    kj.FeatureStats.empty(4).update(reference.astype(np.float32)).save(tmp_path / "ref.npz")
    got = kj.frechet_distance(kj.FeatureStats.load(tmp_path / "ref.npz"),
                              kj.FeatureStats.load(measured / "stats.npz"))
    ours = generate_models.square_features(read_shards(plain)[1]).astype(np.float64)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    mu_a, mu_b = reference.mean(0), ours.mean(0)
    s_a, s_b = np.cov(reference, rowvar=False), np.cov(ours, rowvar=False)
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy_linalg.sqrtm(s_a @ s_b).real)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_module_level_function_is_recorded_by_its_name(tmp_path):
    kj.generate("mixture", "0-9", tmp_path, features=generate_models.square_features, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["features"]["function"] == "generate_models:square_features"


def test_stats_reduced_with_other_round_off_still_verify_and_are_not_rewritten(measured, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in measured.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    features = np.concatenate([np.load(p)["features"] for p in sorted(folder.glob("shard-*.npz"))])
    other = kj.FeatureStats.empty(4).update(features[::-1].copy())  # another order: other round-off
    other.save(folder / "stats.npz")
    before = (folder / "stats.npz").read_bytes()
    assert before != (measured / "stats.npz").read_bytes()
    assert kj.verify(folder)["ok"]
    assert kj.generate("mixture", "0-99", folder, features=FEATURES, progress=False).written == 0
    assert (folder / "stats.npz").read_bytes() == before


def test_fd_refuses_an_unfinished_job_folder(plain, tmp_path, capsys):
    folder = tmp_path / "partial"
    folder.mkdir()
    for path in plain.iterdir():
        if path.name != "shard-000003.npz":
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="unfinished generation job \\(3 of 4 shards complete\\)"):
        kj.stats_of(folder, FEATURES)


@pytest.mark.parametrize("value, match", [
    (5, "'features' is not"), ({"function": "m:f", "dim": 0, "samples": False}, "'features' is not"),
    ({"function": "m:f", "dim": 4, "samples": 1}, "'features' is not")])
def test_a_damaged_features_record_is_a_damaged_manifest(measured, tmp_path, value, match):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in measured.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "features": value}))
    with pytest.raises(ValueError, match=match):
        kj.verify(folder)
