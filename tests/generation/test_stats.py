"""FeatureStats and frechet_distance: float32 streaming against float64 two-pass, merging, 8 devices,
the Frechet distance against pytorch-fid's formula with scipy's sqrtm, files, and refusals."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from karras_jax.generation import stats as stats_module
from karras_jax.generation.stats import FeatureStats, frechet_distance

DIM = 64


def hard_features(batches=100, rows=100, dim=DIM, mean=1e3, seed=0):
    """float32 (batches, rows, dim): mean ~1e3, standard deviations ~1, correlated features."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    z = rng.normal(size=(batches * rows, dim)) @ mix
    x = mean + rng.uniform(-1, 1, dim) + z
    return x.astype(np.float32).reshape(batches, rows, dim)


def two_pass(x):
    """The float64 oracle: two-pass mean and unbiased covariance of the (float32) rows."""
    x64 = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    mean = x64.mean(0)
    centred = x64 - mean
    return mean, centred.T @ centred / (len(x64) - 1)


def covariance_error(cov, reference):
    """max_ij |C_ij - R_ij| / sqrt(R_ii R_jj): the error relative to the standard deviations."""
    scale = np.sqrt(np.outer(np.diag(reference), np.diag(reference)))
    return float(np.max(np.abs(cov - reference) / scale))


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's calculate_frechet_distance, transcribed (float64, scipy.linalg.sqrtm)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))  # pytorch-fid adds disp=False (deprecated)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def of(x):
    x = np.asarray(x)
    return FeatureStats.empty(x.shape[-1]).update(x.reshape(-1, x.shape[-1]))


# --- the numerics -----------------------------------------------------------------------------


def test_float32_streaming_over_100_batches_equals_float64_two_pass_for_mean_1e3_std_1():
    x = hard_features()
    mean, cov = two_pass(x)

    @jax.jit
    def stream(batches):
        return jax.lax.scan(lambda s, b: (s.update(b), None), FeatureStats.empty(DIM), batches)[0]

    assert not jax.config.jax_enable_x64
    stats = stream(jnp.asarray(x))
    assert stats.sum_hi.dtype == jnp.float32 and int(stats.count) == 10_000
    assert np.max(np.abs(stats.mean - mean) / np.sqrt(np.diag(cov))) < 1e-6  # about 6e-9
    assert covariance_error(stats.covariance, cov) < 1e-6  # about 6e-8
    assert np.linalg.norm(stats.covariance - cov) / np.linalg.norm(cov) < 1e-6
    eager = FeatureStats.empty(DIM)
    for batch in x:
        eager = eager.update(batch)
    assert covariance_error(eager.covariance, cov) < 1e-6

    # the case is hard: float32 sums of x and x x^T lose the covariance entirely
    flat = jnp.asarray(x.reshape(-1, DIM))
    naive_mean = flat.sum(0) / len(flat)
    naive = (flat.T @ flat - len(flat) * jnp.outer(naive_mean, naive_mean)) / (len(flat) - 1)
    assert covariance_error(np.asarray(naive, np.float64), cov) > 0.1


def test_the_low_words_carry_precision_the_high_words_lose():
    stats = of(hard_features(batches=100))  # one update of 10_000 rows: the Gram's own error dominates
    stream = FeatureStats.empty(DIM)
    for batch in hard_features():
        stream = stream.update(batch)
    highs_only = stream.replace(sum_lo=0 * stream.sum_lo, outer_lo=0 * stream.outer_lo)
    _, cov = two_pass(hard_features())
    assert covariance_error(highs_only.covariance, cov) > 3 * covariance_error(stream.covariance, cov)
    assert covariance_error(stats.covariance, cov) < 1e-5


def test_two_sum_accumulation_survives_xla_compilation():
    # if XLA reassociated (s - a) - b the compensation would vanish: 1e5 additions of 0.1 in float32
    def body(_, carry):
        return stats_module._add(*carry, jnp.float32(0.1))

    hi, lo = jax.jit(lambda: jax.lax.fori_loop(0, 100_000, body, (jnp.float32(0), jnp.float32(0))))()
    exact = 100_000 * np.float64(np.float32(0.1))
    assert abs(float(hi) + float(lo) - exact) < 1e-9 * exact
    plain = jax.jit(lambda: jax.lax.fori_loop(0, 100_000, lambda _, s: s + np.float32(0.1), jnp.float32(0)))()
    assert abs(float(plain) - exact) > 1e-5 * exact


def test_one_update_holds_its_sums_around_the_shift_exactly():
    # the sums of a batch around the shift, with t read once (no FMA-contracted second copy of t)
    x = hard_features(batches=1)[0]
    stats = of(x)
    y = x.astype(np.float64) - np.asarray(stats.shift, np.float64)
    np.testing.assert_array_equal(stats.shift, x[0])
    s1 = np.asarray(stats.sum_hi, np.float64) + np.asarray(stats.sum_lo, np.float64)
    assert np.max(np.abs(s1 - y.sum(0))) < 1e-5 * np.sqrt(len(x))  # an inconsistent t gave 3e-3


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, np.float64])
def test_any_float_dtype_is_accumulated_in_float32(dtype):
    x = np.random.default_rng(1).normal(size=(50, 4))
    given = jnp.asarray(x, dtype) if dtype != np.float64 else x
    stats = FeatureStats.empty(4).update(given)
    assert stats.sum_hi.dtype == jnp.float32
    mean, cov = two_pass(np.asarray(jnp.asarray(given, jnp.float32)))
    np.testing.assert_allclose(stats.mean, mean, atol=1e-6)
    np.testing.assert_allclose(stats.covariance, cov, atol=1e-6)


# --- merging, devices, masks ------------------------------------------------------------------


def test_merging_two_halves_equals_the_whole():
    x = hard_features(batches=20)
    first, second = FeatureStats.empty(DIM), FeatureStats.empty(DIM)
    for batch in x[:10]:
        first = first.update(batch)
    for batch in x[10:] + np.float32(3.0):  # the second half elsewhere: different shifts
        second = second.update(batch)
    whole = FeatureStats.empty(DIM)
    for batch in np.concatenate([x[:10], x[10:] + np.float32(3.0)]):
        whole = whole.update(batch)
    merged = first.merge(second)
    assert int(merged.count) == 2000
    mean, cov = two_pass(np.concatenate([x[:10], x[10:] + np.float32(3.0)]))
    assert np.max(np.abs(merged.mean - whole.mean)) < 1e-7  # standard deviations are about 1
    assert covariance_error(merged.covariance, whole.covariance) < 1e-6
    assert covariance_error(merged.covariance, cov) < 1e-6
    assert covariance_error(second.merge(first).covariance, cov) < 1e-6
    np.testing.assert_array_equal(jax.jit(FeatureStats.merge)(first, second).covariance, merged.covariance)


def test_an_empty_state_is_the_identity_of_merge():
    stats = of(hard_features(batches=1))
    empty = FeatureStats.empty(DIM)
    for merged in (stats.merge(empty), empty.merge(stats)):
        for name in ("count", "shift", "sum_hi", "sum_lo", "outer_hi", "outer_lo"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(stats, name))


def test_8_devices_equal_one():
    assert jax.device_count() == 8
    x = hard_features(batches=1, rows=800)[0]
    mesh = jax.make_mesh((8,), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    one = FeatureStats.empty(DIM).update(jax.device_put(x, jax.devices()[0]))
    eight = FeatureStats.empty(DIM).update(sharded)
    jitted = jax.jit(FeatureStats.update)(FeatureStats.empty(DIM), sharded)
    mean, cov = two_pass(x)
    for stats in (eight, jitted):
        np.testing.assert_array_equal(stats.shift, one.shift)
        assert np.max(np.abs(stats.mean - one.mean)) < 1e-6  # of a standard deviation (about 1)
        assert covariance_error(stats.covariance, one.covariance) < 1e-6
        assert covariance_error(stats.covariance, cov) < 1e-6
    # hosts: each its own statistics, folded with merge
    parts = [FeatureStats.empty(DIM).update(np.asarray(shard.data)) for shard in sharded.addressable_shards]
    folded = parts[0]
    for part in parts[1:]:
        folded = folded.merge(part)
    assert int(folded.count) == 800
    assert covariance_error(folded.covariance, cov) < 1e-6
    assert np.max(np.abs(folded.mean - mean)) < 1e-6


def test_a_mask_drops_rows_even_nan_ones():
    x = hard_features(batches=1, rows=40, dim=8)[0]
    mask = np.arange(40) % 3 != 0
    padded = np.where(mask[:, None], x, np.nan).astype(np.float32)
    masked = FeatureStats.empty(8).update(jnp.asarray(padded), mask)
    kept = FeatureStats.empty(8).update(x[mask])
    assert int(masked.count) == int(mask.sum())
    np.testing.assert_array_equal(masked.shift, x[1])  # the first kept row
    mean, cov = two_pass(x[mask])
    for stats in (masked, kept):
        np.testing.assert_allclose(stats.mean, mean, rtol=0, atol=1e-7)
        assert covariance_error(stats.covariance, cov) < 1e-6
    host = FeatureStats.empty(8).update(padded, mask)  # host NaN rows too, when masked out
    assert int(host.count) == int(mask.sum()) and covariance_error(host.covariance, cov) < 1e-6
    with pytest.raises(ValueError, match="features"):  # a NaN row that counts is refused
        FeatureStats.empty(8).update(padded, np.ones(40, bool))
    nothing = FeatureStats.empty(8).update(jnp.asarray(padded), np.zeros(40, bool))
    assert int(nothing.count) == 0 and np.all(np.asarray(nothing.shift) == 0)
    assert int(nothing.update(x).count) == 40


def test_a_second_update_of_the_same_shape_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(stats, batch):
        return stats.update(batch)

    stats = FeatureStats.empty(DIM)
    for batch in hard_features(batches=3, rows=10):
        stats = step(stats, batch)
    assert int(stats.count) == 30
    chex.clear_trace_counter()


def test_an_empty_batch_returns_the_same_state():
    stats = FeatureStats.empty(3)
    assert stats.update(np.zeros((0, 3), np.float32)) is stats


# --- the Frechet distance -----------------------------------------------------------------------


def gaussian_sets(dim=32, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim)) @ (np.eye(dim) + 0.2 * rng.normal(size=(dim, dim)))
    b = 0.5 + rng.normal(size=(n, dim)) @ (1.3 * np.eye(dim) + 0.2 * rng.normal(size=(dim, dim)))
    return a.astype(np.float32), b.astype(np.float32)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a, _ = gaussian_sets()
    stats = of(a)
    assert abs(frechet_distance(stats, stats)) < 1e-8
    assert abs(frechet_distance(stats, of(a[::-1]))) < 1e-8  # the same set, another order
    few = of(a[:10])  # rank 9 < 32: a singular covariance
    assert 0.0 <= frechet_distance(few, few) < 1e-8  # never below 0, round-off or not


def test_frechet_distance_matches_pytorch_fids_formula_with_scipy_sqrtm():
    a, b = gaussian_sets()
    mu_a, cov_a = two_pass(a)
    mu_b, cov_b = two_pass(b)
    expected = pytorch_fid_distance(mu_a, cov_a, mu_b, cov_b)
    assert expected > 1
    got = frechet_distance(of(a), of(b))
    assert abs(got - expected) < 1e-6 * expected
    assert abs(frechet_distance(of(b), of(a)) - expected) < 1e-6 * expected


def test_frechet_distance_of_isotropic_gaussians_is_the_closed_form():
    # N(mu_a, s^2 I) vs N(mu_b, u^2 I): |mu_a - mu_b|^2 + dim (s - u)^2, from exact moments
    a = np.concatenate([np.eye(4), -np.eye(4)]) * 2.0  # mean 0, covariance 8/7 I
    b = 3.0 * a + 1.0
    expected = 4 * 1.0 + 4 * (np.sqrt(8 / 7) - 3 * np.sqrt(8 / 7)) ** 2
    assert frechet_distance(of(a), of(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_refuses_mismatched_or_unusable_statistics():
    a, _ = gaussian_sets(dim=4, n=10)
    with pytest.raises(ValueError, match="stats_a and stats_b must have the same dim, got 4 and 3"):
        frechet_distance(of(a), of(a[:, :3]))
    with pytest.raises(TypeError, match="stats_b must be a FeatureStats, got ndarray"):
        frechet_distance(of(a), a)
    with pytest.raises(ValueError, match="stats_b must hold at least 2 row"):
        frechet_distance(of(a), of(a[:1]))
    infinite = FeatureStats.empty(4).update(jnp.asarray(a).at[0, 0].set(jnp.inf))  # device: not inspected
    with pytest.raises(ValueError, match="stats_a is not finite"):
        frechet_distance(infinite, of(a))


# --- reading, refusals --------------------------------------------------------------------------


def test_moments_need_rows_and_are_read_on_the_host():
    with pytest.raises(ValueError, match="at least 1 row"):
        _ = FeatureStats.empty(2).mean
    with pytest.raises(ValueError, match="at least 2 row"):
        _ = FeatureStats.empty(2).update(np.ones((1, 2))).covariance
    with pytest.raises(TypeError, match="cannot be read inside jit"):
        jax.jit(lambda s: s.mean)(FeatureStats.empty(2).update(np.ones((3, 2))))
    one = FeatureStats.empty(2).update(np.array([[1.0, 2.0]]))
    assert one.mean.dtype == np.float64 and one.mean.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("features, error, match", [
    (np.ones((3, 2, 1)), ValueError, r"features must be \(n, dim\) = \(n, 4\), got shape \(3, 2, 1\)"),
    (np.ones(4), ValueError, r"features must be \(n, dim\) = \(n, 4\), got shape \(4,\)"),
    (np.ones((3, 5)), ValueError, r"got shape \(3, 5\)"),
    (np.ones((3, 4), np.int32), TypeError, "features must hold floating-point numbers, got dtype int32"),
    (np.full((3, 4), np.nan), ValueError, "features must be finite"),
    ("x", TypeError, "features must be an"),
])
def test_update_refuses_bad_features_naming_them(features, error, match):
    with pytest.raises(error, match=match):
        FeatureStats.empty(4).update(features)


def test_update_refuses_a_bad_mask_and_empty_refuses_a_bad_dim():
    with pytest.raises(ValueError, match=r"mask must be \(3,\)"):
        FeatureStats.empty(2).update(np.ones((3, 2)), np.ones(2, bool))
    with pytest.raises(TypeError, match="mask must hold bools, got dtype float64"):
        FeatureStats.empty(2).update(np.ones((3, 2)), np.ones(3))
    for dim in (0, 2.0, True):
        with pytest.raises(ValueError, match="dim must be an int >= 1"):
            FeatureStats.empty(dim)
    with pytest.raises(ValueError, match="other must have dim 2 like self, got dim 3"):
        FeatureStats.empty(2).merge(FeatureStats.empty(3))
    with pytest.raises(TypeError, match="other must be a FeatureStats"):
        FeatureStats.empty(2).merge(np.ones(2))


# --- files --------------------------------------------------------------------------------------


def test_save_load_round_trips_bit_for_bit_and_pytorch_fid_can_read_it(tmp_path):
    stats = FeatureStats.empty(DIM)
    for batch in hard_features(batches=3):
        stats = stats.update(batch)
    path = stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(path)
    for name in ("count", "shift", "sum_hi", "sum_lo", "outer_hi", "outer_lo"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
        assert getattr(loaded, name).dtype == getattr(stats, name).dtype
    with np.load(path) as f:  # what pytorch-fid reads
        np.testing.assert_array_equal(f["mu"], stats.mean)
        np.testing.assert_array_equal(f["sigma"], stats.covariance)
    assert frechet_distance(loaded, stats) == frechet_distance(stats, stats)
    FeatureStats.empty(3).save(tmp_path / "empty.npz")
    assert int(FeatureStats.load(tmp_path / "empty.npz").count) == 0


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "stats.npz"
    of(np.ones((2, 3)) + np.eye(2, 3)).save(path)
    before = path.read_bytes()

    def broken(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stats_module.np, "savez", broken)
    with pytest.raises(OSError, match="stats.npz"):
        of(np.zeros((2, 3)) + np.eye(2, 3)).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["stats.npz"]


def test_save_refuses_non_finite_statistics(tmp_path):
    bad = FeatureStats.empty(2).update(jnp.array([[1.0, jnp.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="not finite"):
        bad.save(tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()


def file_with(path, **changes):
    """A saved file's entries with ``changes`` (None deletes an entry), written to ``path``."""
    good = path.parent / "good.npz"
    of(np.arange(12.0).reshape(4, 3) ** 1.5).save(good)
    with np.load(good) as f:
        entries = {k: f[k] for k in f.files}
    for key, value in changes.items():
        if value is None:
            del entries[key]
        else:
            entries[key] = value
    np.savez(path, **entries)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"format": np.asarray("something else")}, "format entry is 'something else'"),
    ({"format": None}, "format entry is none"),
    ({"version": np.asarray(2)}, "its version is 2, this reads version 1"),
    ({"outer_lo": None}, "it has no outer_lo"),
    ({"count": np.asarray(-1)}, "count must be an integer >= 0"),
    ({"count": np.asarray(2.5)}, "count must be an integer >= 0"),
    ({"sum_hi": np.zeros(4, np.float32)}, r"must be \(dim,\) x 3 and \(dim, dim\) x 2"),
    ({"outer_hi": np.zeros((3, 3), np.int32)}, "share one floating dtype"),
    ({"outer_hi": np.full((3, 3), np.nan, np.float32)}, "it holds NaN or inf"),
])
def test_load_refuses_a_wrong_file_naming_it_and_the_fault(tmp_path, changes, match):
    path = file_with(tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=rf"bad.npz is not a FeatureStats file: .*{match}"):
        FeatureStats.load(path)


def test_load_refuses_corrupt_truncated_and_foreign_files(tmp_path):
    good = of(np.arange(12.0).reshape(4, 3) ** 1.5).save(tmp_path / "good.npz")
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "noise.npz": bytes(range(256)) * 4,
        "empty.npz": b"",
        "flipped.npz": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} is not a FeatureStats file"):
            FeatureStats.load(tmp_path / name)
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"array.npy is not a FeatureStats file: .*one .npy array"):
        FeatureStats.load(tmp_path / "array.npy")
    np.savez(tmp_path / "fid.npz", mu=np.zeros(3), sigma=np.eye(3))  # pytorch-fid's own statistics
    with pytest.raises(ValueError, match="fid.npz is not a FeatureStats file: its format entry is none"):
        FeatureStats.load(tmp_path / "fid.npz")
    with pytest.raises(FileNotFoundError):
        FeatureStats.load(tmp_path / "missing.npz")


def test_load_converts_a_float64_file_into_the_float32_state(tmp_path):
    stats = of(hard_features(batches=1, rows=50, dim=4)[0])
    wide = {name: np.asarray(getattr(stats, name), np.float64)
            for name in ("shift", "sum_hi", "sum_lo", "outer_hi", "outer_lo")}
    wide["sum_hi"] = wide["sum_hi"] + wide["sum_lo"]  # one float64 word, as an x64 state could hold
    wide["sum_lo"] = np.zeros_like(wide["sum_lo"])
    np.savez(tmp_path / "wide.npz", format=np.asarray("karras_jax.FeatureStats"), version=np.asarray(1),
             count=np.asarray(stats.count), **wide)
    loaded = FeatureStats.load(tmp_path / "wide.npz")
    assert loaded.sum_hi.dtype == jnp.float32
    np.testing.assert_array_equal(loaded.sum_hi, stats.sum_hi)
    np.testing.assert_array_equal(loaded.sum_lo, stats.sum_lo)
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-12)
