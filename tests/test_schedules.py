"""Noise-level schedules against the float64 oracle (ALGORITHM.md, "Noise levels")."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj

RTOL = 1e-6  # float32 levels, correctly rounded from float64

NAMED = {
    "ve": (kj.ve_sigmas, oracle.ve_sigmas),
    "karras": (kj.karras_sigmas, oracle.karras_sigmas),
    "diffusers": (kj.diffusers_sigmas, oracle.diffusers_sigmas),
}


@pytest.mark.parametrize("name", list(NAMED))
@pytest.mark.parametrize("n", [1, 2, 5, 18, 50])
@pytest.mark.parametrize("smin,smax", [(0.02, 100.0), (0.002, 80.0), (0.5, 3.0)])
def test_named_schedule_matches_oracle(name, n, smin, smax):
    ours, ref = NAMED[name]
    levels = ours(smin, smax, n)
    assert levels.shape == (n,)
    assert levels.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(levels), ref(smin, smax, n), rtol=RTOL)


@pytest.mark.parametrize("name", list(NAMED))
@pytest.mark.parametrize("n", [2, 7])
def test_schedules_run_from_max_to_min_strictly_descending(name, n):
    ours, _ = NAMED[name]
    levels = np.asarray(ours(0.02, 100.0, n), np.float64)
    assert np.all(np.diff(levels) < 0)
    power = 2 if name == "diffusers" else 1  # diffusers' levels are the paper's t = sigma^2
    np.testing.assert_allclose([levels[0], levels[-1]], [100.0**power, 0.02**power], rtol=RTOL)


def test_single_step_is_the_first_level():
    # N == 1: one step from the first level to 0 (diffusers divides by zero here).
    np.testing.assert_allclose(kj.ve_sigmas(0.02, 100.0, 1), [100.0])
    np.testing.assert_allclose(kj.karras_sigmas(0.02, 100.0, 1), [100.0], rtol=RTOL)
    np.testing.assert_allclose(kj.diffusers_sigmas(0.02, 100.0, 1), [1e4])


def test_diffusers_levels_are_the_squared_ve_levels_as_in_algorithm_md():
    # ALGORITHM.md: with the defaults and N = 5 diffusers' levels are [1e4, 141.4, 2, 0.0283, 4e-4].
    levels = kj.diffusers_sigmas(0.02, 100.0, 5)
    np.testing.assert_allclose(levels, [1e4, 141.42136, 2.0, 0.028284271, 4e-4], rtol=RTOL)
    np.testing.assert_allclose(levels, np.asarray(kj.ve_sigmas(0.02, 100.0, 5), np.float64) ** 2,
                               rtol=1e-6)


def test_ve_levels_are_geometric():
    levels = np.asarray(kj.ve_sigmas(0.02, 100.0, 6), np.float64)
    ratios = levels[1:] / levels[:-1]
    np.testing.assert_allclose(ratios, np.full(5, (0.02 / 100.0) ** 0.2), rtol=1e-6)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0, 10.0])
def test_karras_rho_matches_oracle(rho):
    np.testing.assert_allclose(
        kj.karras_sigmas(0.002, 80.0, 18, rho=rho), oracle.karras_sigmas(0.002, 80.0, 18, rho),
        rtol=RTOL,
    )


def test_karras_rho_one_is_linear_in_sigma():
    levels = np.asarray(kj.karras_sigmas(1.0, 5.0, 5, rho=1.0))
    np.testing.assert_allclose(levels, [5.0, 4.0, 3.0, 2.0, 1.0], rtol=RTOL)


def test_karras_edm_defaults_match_the_paper():
    # EDM's own setting: sigma_min 0.002, sigma_max 80, N = 18, rho = 7.
    levels = np.asarray(kj.karras_sigmas(0.002, 80.0, 18))
    assert levels[0] == pytest.approx(80.0, rel=RTOL)
    assert levels[-1] == pytest.approx(0.002, rel=1e-5)


@pytest.mark.parametrize("name", list(NAMED))
def test_traced_sigma_max_uses_the_same_formula(name):
    ours, ref = NAMED[name]
    levels = jax.jit(lambda hi: ours(0.02, hi, 6))(jnp.float32(80.0))
    np.testing.assert_allclose(levels, ref(0.02, 80.0, 6), rtol=1e-5)


def test_levels_are_float64_under_x64():
    with jax.enable_x64(True):
        levels = kj.ve_sigmas(0.02, 100.0, 5)
        assert levels.dtype == jnp.float64
        np.testing.assert_allclose(levels, oracle.ve_sigmas(0.02, 100.0, 5), rtol=1e-14)


# --- custom sigmas -----------------------------------------------------------------------


def test_custom_sigmas_pass_through_as_float32():
    levels = kj.custom_sigmas([3.0, 2.0, 0.5])
    assert levels.dtype == jnp.float32
    np.testing.assert_array_equal(levels, [3.0, 2.0, 0.5])
    np.testing.assert_array_equal(kj.custom_sigmas(np.array([7.0])), [7.0])


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.ones((2, 2)), "1-D"),
        (np.array(2.0), "1-D"),
        (np.array([]), "non-empty"),
        ([3.0, np.nan, 1.0], "finite"),
        ([np.inf, 1.0], "finite"),
        ([3.0, 1.0, 0.0], "> 0"),
        ([3.0, -1.0], "> 0"),
        ([1.0, 2.0, 3.0], "strictly descending"),
        ([3.0, 2.0, 2.0], "strictly descending"),
    ],
)
def test_bad_custom_sigmas_raise_value_error_naming_sigmas(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        kj.custom_sigmas(bad)
    assert "sigmas" in str(info.value)


@pytest.mark.parametrize(
    "bad,match",
    [([1.0, 1.0 - 1e-12], "strictly descending"),  # distinct in float64, equal in float32
     ([1.0, 1e-50], "> 0"),  # underflows to a 0 level: sigma_hat = 0 would divide by zero
     ([1e39, 1.0], "finite")],  # overflows float32
)
def test_custom_sigmas_are_checked_in_the_level_dtype(bad, match):
    with pytest.raises(ValueError, match=match):
        kj.custom_sigmas(np.array(bad, np.float64))


def test_non_numeric_custom_sigmas_raise_type_error():
    with pytest.raises(TypeError, match="sigmas"):
        kj.custom_sigmas(np.array([True, False]))


# --- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, -7.0, np.nan, np.inf])
def test_rho_must_be_finite_and_positive(rho):
    with pytest.raises(ValueError, match="rho"):
        kj.karras_sigmas(0.02, 100.0, 5, rho=rho)


@pytest.mark.parametrize("name", kj.SCHEDULES)
@pytest.mark.parametrize("lo,hi,exc,match", [
    (0.0, 100.0, ValueError, "sigma_min must be > 0"),
    (-1.0, 100.0, ValueError, "sigma_min must be > 0"),
    (1.0, 0.5, ValueError, "sigma_max must be > sigma_min"),
    (1.0, 1.0, ValueError, "sigma_max must be > sigma_min"),
    (math.nan, 100.0, ValueError, "sigma_min must be finite"),
    (0.02, math.inf, ValueError, "sigma_max must be finite"),
    (None, 100.0, TypeError, "sigma_min must be a real number"),
    (0.02, [50.0, 100.0], TypeError, "sigma_max must be a real number"),
    (0.02, "100", TypeError, "sigma_max must be a real number"),
])
def test_every_schedule_checks_its_range(name, lo, hi, exc, match):
    with pytest.raises(exc, match=match):
        kj.get_schedule(name)(lo, hi, 5)


@pytest.mark.parametrize("name", ["ve", "karras", "diffusers", "vp"])
def test_a_traced_range_passes_the_range_check(name):
    fn = kj.get_schedule(name)
    swept = jax.vmap(lambda hi: fn(0.02, hi, 4))(jnp.asarray([50.0, 80.0]))
    for i, hi in enumerate((50.0, 80.0)):
        np.testing.assert_allclose(swept[i], fn(0.02, hi, 4), rtol=1e-6)


# --- the registry ----------------------------------------------------------------------------


def test_the_registry_names_every_schedule_function():
    assert kj.SCHEDULES == ("ve", "karras", "diffusers", "vp", "iddpm")
    functions = (kj.ve_sigmas, kj.karras_sigmas, kj.diffusers_sigmas, kj.vp_sigmas, kj.iddpm_sigmas)
    for name, fn in zip(kj.SCHEDULES, functions, strict=True):
        assert kj.get_schedule(name) is fn


@pytest.mark.parametrize("bad", ["edm", "", "VE", 3, kj.ve_sigmas])  # None is set_timesteps' default
def test_unknown_schedule_names_are_refused_listing_the_names(bad):
    listed = r"schedule must be one of \('ve', 'karras', 'diffusers', 'vp', 'iddpm'\)"
    with pytest.raises(ValueError, match=listed):
        kj.get_schedule(bad)
    with pytest.raises(ValueError, match="schedule must be one of"):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, bad)


@pytest.mark.parametrize("name", kj.SCHEDULES)
def test_set_timesteps_dispatches_through_the_registry(name):
    cfg = kj.KarrasVeConfig(sigma_min=0.01, sigma_max=80.0)
    state = kj.set_timesteps(cfg, 6, name)
    assert state.schedule_name == name
    np.testing.assert_array_equal(state.sigmas[:-1], kj.get_schedule(name)(0.01, 80.0, 6))


def test_rho_reaches_only_the_schedule_that_takes_it():
    cfg = kj.KarrasVeConfig()
    karras_3 = kj.set_timesteps(cfg, 6, "karras", rho=3.0).sigmas
    np.testing.assert_array_equal(karras_3[:-1], kj.karras_sigmas(cfg.sigma_min, cfg.sigma_max, 6, rho=3.0))
    assert not np.array_equal(karras_3, kj.set_timesteps(cfg, 6, "karras").sigmas)
    for name in ("ve", "diffusers", "vp", "iddpm"):
        np.testing.assert_array_equal(kj.set_timesteps(cfg, 6, name, rho=3.0).sigmas,
                                      kj.set_timesteps(cfg, 6, name).sigmas)


@pytest.mark.parametrize("fn", [kj.ve_sigmas, kj.karras_sigmas, kj.diffusers_sigmas])
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-3, ValueError), (2.0, TypeError),
                                     (True, TypeError), ("5", TypeError)])
def test_schedules_check_num_steps(fn, bad, exc):
    with pytest.raises(exc, match="num_inference_steps"):
        fn(0.02, 100.0, bad)


@pytest.mark.parametrize("schedule", ["ve", "karras"])
def test_first_and_last_levels_are_exactly_sigma_max_and_sigma_min(schedule):
    # (100 ** (1/7)) ** 7 is 99.99999999999997 in float64: the ends are pinned, not recomputed.
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.05, sigma_max=100.0), 7, schedule)
    assert float(state.sigmas[0]) == np.float32(100.0)
    assert float(state.sigmas[-2]) == np.float32(0.05)
    assert float(state.init_noise_sigma) == np.float32(100.0)


@pytest.mark.parametrize("schedule", ["ve", "diffusers"])
def test_rho_is_checked_whatever_the_schedule(schedule):
    with pytest.raises(ValueError, match="rho"):
        kj.set_timesteps(kj.KarrasVeConfig(), 3, schedule, rho=-1.0)


# --- levels never leave the representable range ---------------------------------------------


@pytest.mark.parametrize(
    "config, schedule, kwargs, match",
    [
        (dict(sigma_max=1e39), "ve", {}, r"sigma_max=1e\+39 give noise levels beyond the largest float32"),
        (dict(sigma_max=1e20), "diffusers", {}, r"sigma_max=1e\+20 \(diffusers' levels are the squares\)"),
        (dict(sigma_min=1e-40, sigma_max=1.0), "ve", {}, r"sigma_min=1e-40 .* below the smallest normal"),
        (dict(sigma_min=1e-20, sigma_max=1.0), "diffusers", {}, r"below the smallest normal float32"),
        (dict(sigma_min=1e-40, sigma_max=1.0), "karras", {}, r"below the smallest normal"),
        (dict(), "karras", dict(rho=1e-3), r"rho=0.001 give NaN noise levels"),
    ],
)
def test_levels_outside_the_level_dtype_are_refused(config, schedule, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kj.set_timesteps(kj.KarrasVeConfig(**config), 5, schedule, **kwargs)


def test_custom_levels_that_round_to_subnormals_are_refused():
    with pytest.raises(ValueError, match="sigmas give noise levels below the smallest normal"):
        kj.set_timesteps(kj.KarrasVeConfig(), sigmas=[1.0, 1e-39])


def test_extreme_but_representable_levels_are_fine():
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=1e-30, sigma_max=1e30), 5, "karras", rho=3.0)
    assert np.all(np.isfinite(np.asarray(state.sigmas))) and float(state.sigmas[-2]) > 0


# --- the other discretizations of Table 1 ----------------------------------------------------


def _vp_oracle(sigma_min, sigma_max, n, eps=1e-3):
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps - math.log(sigma_max**2 + 1)) / (eps - 1)
    beta_min = math.log(sigma_max**2 + 1) - beta_d / 2
    t = [1 + (i / (n - 1) if n > 1 else 0.0) * (eps - 1) for i in range(n)]
    return np.asarray([math.sqrt(math.exp(beta_d * ti**2 / 2 + beta_min * ti) - 1) for ti in t])


@pytest.mark.parametrize("n", [1, 2, 5, 18, 100])
@pytest.mark.parametrize("lo, hi", [(0.002, 80.0), (0.0105, 152.2)])
def test_vp_levels_match_table_1(n, lo, hi):
    got = np.asarray(kj.set_timesteps(kj.KarrasVeConfig(sigma_min=lo, sigma_max=hi), n, "vp").sigmas)
    np.testing.assert_allclose(got[:-1], _vp_oracle(lo, hi, n), rtol=5e-6)
    assert got[0] == np.float32(hi) and (n == 1 or got[-2] == np.float32(lo)) and got[-1] == 0


def test_vp_inverse_recovers_t():
    # t(sigma) of Table 1 inverts sigma_vp(t) (with Table 1's own betas).
    t = np.linspace(1e-3, 1.0, 7)
    sigma = np.sqrt(np.expm1(19.9 * t**2 / 2 + 0.1 * t))
    back = (np.sqrt(0.1**2 + 2 * 19.9 * np.log1p(sigma**2)) - 0.1) / 19.9
    np.testing.assert_allclose(back, t, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(kj.precondition_coefficients(sigma.astype(np.float32), "vp")[3]),
                               999 * t, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 18, 256])
def test_iddpm_levels_are_the_subsampled_training_levels(n):
    import oracle

    cfg = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=81.0)
    u = oracle.iddpm_u()
    kept = u[(u >= 0.002) & (u <= 81.0)]
    index = np.round((len(kept) - 1) * (np.arange(n) / (n - 1) if n > 1 else np.zeros(1))).astype(int)
    got = np.asarray(kj.set_timesteps(cfg, n, "iddpm").sigmas)
    np.testing.assert_allclose(got[:-1], kept[index], rtol=1e-6)
    assert np.all(np.diff(got[:-1]) < 0) or n == 1


def test_iddpm_needs_levels_in_range():
    with pytest.raises(ValueError, match="fewer than two iDDPM levels"):
        kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.0100, sigma_max=0.0101), 5, "iddpm")
