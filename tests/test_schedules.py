"""Noise-level schedules against the float64 oracle (ALGORITHM.md, "Noise levels")."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj
from karras_jax import schedules

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


@pytest.mark.parametrize("name", ["ve", "karras", "diffusers", "vp", "exponential", "polyexponential",
                                  "flow"])
def test_a_traced_range_passes_the_range_check(name):
    fn = kj.get_schedule(name)
    swept = jax.vmap(lambda hi: fn(0.02, hi, 4))(jnp.asarray([50.0, 80.0]))
    for i, hi in enumerate((50.0, 80.0)):
        np.testing.assert_allclose(swept[i], fn(0.02, hi, 4), rtol=1e-6)


# --- the registry ----------------------------------------------------------------------------


def test_the_registry_names_every_schedule_function():
    assert kj.SCHEDULES == ("ve", "karras", "diffusers", "vp", "iddpm", "exponential", "polyexponential",
                            "flow")
    functions = (kj.ve_sigmas, kj.karras_sigmas, kj.diffusers_sigmas, kj.vp_sigmas, kj.iddpm_sigmas,
                 kj.ve_sigmas, schedules.polyexponential_sigmas, schedules.flow_sigmas)
    for name, fn in zip(kj.SCHEDULES, functions, strict=True):
        assert kj.get_schedule(name) is fn


@pytest.mark.parametrize("bad", ["edm", "", "VE", 3, kj.ve_sigmas])  # None is set_timesteps' default
def test_unknown_schedule_names_are_refused_listing_the_names(bad):
    listed = (r"schedule must be one of \('ve', 'karras', 'diffusers', 'vp', 'iddpm', 'exponential', "
              r"'polyexponential', 'flow'\)")
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


def test_rho_reaches_only_the_schedules_that_take_it():
    # A rho the schedule does not take is checked and then ignored (set_timesteps always passed
    # one, so this stays accepted); shift, newer, is refused instead.
    cfg = kj.KarrasVeConfig()
    for name, fn in (("karras", kj.karras_sigmas), ("polyexponential", schedules.polyexponential_sigmas)):
        with_3 = kj.set_timesteps(cfg, 6, name, rho=3.0).sigmas
        np.testing.assert_array_equal(with_3[:-1], fn(cfg.sigma_min, cfg.sigma_max, 6, rho=3.0))
        assert not np.array_equal(with_3, kj.set_timesteps(cfg, 6, name).sigmas)
    for name in ("ve", "diffusers", "vp", "iddpm", "exponential", "flow"):
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


# --- k-diffusion's exponential and polyexponential schedules ------------------------------------


def _exponential_oracle(sigma_min, sigma_max, n):
    """k-diffusion's get_sigmas_exponential in float64: uniform in log sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _polyexponential_oracle(sigma_min, sigma_max, n, rho=1.0):
    """k-diffusion's get_sigmas_polyexponential in float64."""
    ramp = np.linspace(1.0, 0.0, n) ** rho
    return np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))


@pytest.mark.parametrize("n", [1, 2, 5, 18, 50])
@pytest.mark.parametrize("smin,smax", [(0.02, 100.0), (0.002, 80.0), (0.5, 3.0)])
def test_exponential_is_the_ve_formula_and_matches_k_diffusion(n, smin, smax):
    assert kj.get_schedule("exponential") is kj.ve_sigmas
    cfg = kj.KarrasVeConfig(sigma_min=smin, sigma_max=smax)
    levels = kj.set_timesteps(cfg, n, "exponential").sigmas
    np.testing.assert_array_equal(levels, kj.set_timesteps(cfg, n, "ve").sigmas)
    np.testing.assert_allclose(np.asarray(levels[:-1]), _exponential_oracle(smin, smax, n), rtol=RTOL)


@pytest.mark.parametrize("n", [1, 2, 5, 18, 50])
@pytest.mark.parametrize("rho", [0.5, 1.0, 2.0, 7.0])
@pytest.mark.parametrize("smin,smax", [(0.02, 100.0), (0.002, 80.0)])
def test_polyexponential_matches_k_diffusion(n, rho, smin, smax):
    levels = schedules.polyexponential_sigmas(smin, smax, n, rho=rho)
    assert levels.shape == (n,) and levels.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(levels), _polyexponential_oracle(smin, smax, n, rho), rtol=RTOL)
    assert float(levels[0]) == np.float32(smax) and (n == 1 or float(levels[-1]) == np.float32(smin))


def test_polyexponential_rho_one_is_exponential_and_larger_rho_crowds_sigma_min():
    one = np.asarray(schedules.polyexponential_sigmas(0.002, 80.0, 12), np.float64)
    np.testing.assert_allclose(one, np.asarray(kj.ve_sigmas(0.002, 80.0, 12), np.float64), rtol=RTOL)
    three = np.asarray(schedules.polyexponential_sigmas(0.002, 80.0, 12, rho=3.0), np.float64)
    assert np.all(three[1:-1] < one[1:-1])  # (1 - t)^3 < 1 - t inside (0, 1)


def test_exponential_schedules_trace_like_the_others():
    got = jax.jit(lambda hi, r: schedules.polyexponential_sigmas(0.02, hi, 6, rho=r))(jnp.float32(80.0), 2.0)
    np.testing.assert_allclose(got, _polyexponential_oracle(0.02, 80.0, 6, 2.0), rtol=1e-5)
    got = jax.jit(lambda hi: kj.get_schedule("exponential")(0.02, hi, 6))(jnp.float32(80.0))
    np.testing.assert_allclose(got, _exponential_oracle(0.02, 80.0, 6), rtol=1e-5)


@pytest.mark.parametrize("rho", [0.0, -1.0, np.nan, np.inf])
def test_polyexponential_checks_rho(rho):
    with pytest.raises(ValueError, match="rho must be finite and > 0"):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, "polyexponential", rho=rho)


def test_rho_none_is_each_schedules_own_default():
    cfg = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0)
    karras = kj.set_timesteps(cfg, 10, "karras").sigmas
    np.testing.assert_array_equal(karras, kj.set_timesteps(cfg, 10, "karras", rho=7.0).sigmas)
    np.testing.assert_array_equal(karras[:-1], kj.karras_sigmas(0.002, 80.0, 10, rho=7.0))
    poly = kj.set_timesteps(cfg, 10, "polyexponential").sigmas
    np.testing.assert_array_equal(poly, kj.set_timesteps(cfg, 10, "polyexponential", rho=1.0).sigmas)
    np.testing.assert_allclose(np.asarray(poly[:-1]), _polyexponential_oracle(0.002, 80.0, 10, 1.0),
                               rtol=RTOL)
    assert not np.allclose(poly, kj.set_timesteps(cfg, 10, "polyexponential", rho=7.0).sigmas)


# --- flow matching (diffusers' FlowMatchEulerDiscreteScheduler) -----------------------------------


def _flow_oracle(n, shift, train_steps=1000):
    """diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(n) in float64, as sigma = t/(1-t)."""
    def shifted(t):
        return shift * t / (1 + (shift - 1) * t)

    train = shifted(np.arange(train_steps, 0, -1) / train_steps)  # construction: shifted once
    t = shifted(np.linspace(train[0] * train_steps, train[-1] * train_steps, n) / train_steps)  # twice
    with np.errstate(divide="ignore"):
        return t / (1 - t)


def _diffusers_flow_times(n, shift):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (and torch) compare the flow levels")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(n)
    return scheduler.sigmas.numpy().astype(np.float64)  # flow times t, then the final 0


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 2, 10, 28, 50])
def test_flow_levels_are_diffusers_flow_match_times_as_karras_levels(n, shift):
    t = _diffusers_flow_times(n, shift)
    state = kj.set_timesteps(kj.KarrasVeConfig(), n, "flow", shift=shift)
    ours = np.asarray(state.sigmas, np.float64)
    assert ours.shape == t.shape == (n + 1,) and t[0] == 1.0 and t[-1] == 0.0
    assert ours[0] == np.inf and ours[-1] == 0.0 and float(state.init_noise_sigma) == np.inf
    # Back to flow times: diffusers' float32 times to within an ulp of 1.
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(1 / (1 + 1 / ours), t, rtol=0, atol=2e-7)
    # As levels: diffusers' t is float32, so t / (1 - t) carries its rounding 2^-24 / (1 - t).
    finite = slice(1, n)
    ref = t[finite] / (1 - t[finite])
    tol = ref * (2e-7 + 2.0**-23 / (1 - t[finite]))
    assert np.all(np.abs(ours[finite] - ref) <= tol), np.abs(ours[finite] / ref - 1).max()


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 7.0])
@pytest.mark.parametrize("n", [1, 2, 10, 28, 50, 200])
def test_flow_levels_match_a_float64_transcription(n, shift):
    ours = np.asarray(schedules.flow_sigmas(0.02, 100.0, n, shift=shift), np.float64)
    ref = _flow_oracle(n, shift)
    assert ours[0] == ref[0] == np.inf
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=RTOL)
    assert np.all(np.diff(ours[1:]) < 0) and np.all(ours[1:] > 0)


def test_flow_last_level_is_shifted_twice():
    # diffusers shifts t = 1/1000 at construction and the spaced times again: s^2/1000 to first order.
    last = float(schedules.flow_sigmas(0.02, 100.0, 10, shift=3.0)[-1])
    assert last == pytest.approx(3.0 * (3.0 / 1002) / (999 / 1002), rel=1e-6)
    assert last == pytest.approx(9.0 / 999, rel=1e-6)


def test_flow_default_shift_is_one_and_shift_traces():
    np.testing.assert_array_equal(kj.set_timesteps(kj.KarrasVeConfig(), 7, "flow").sigmas,
                                  kj.set_timesteps(kj.KarrasVeConfig(), 7, "flow", shift=1.0).sigmas)
    traced = jax.jit(lambda s: schedules.flow_sigmas(0.02, 100.0, 7, shift=s))(3.0)
    assert float(traced[0]) == np.inf
    np.testing.assert_allclose(traced[1:], _flow_oracle(7, 3.0)[1:], rtol=1e-5)


def test_flow_ignores_the_configs_range():
    a = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.02, sigma_max=100.0), 9, "flow", shift=3.0)
    b = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.5, sigma_max=2.0), 9, "flow", shift=3.0)
    np.testing.assert_array_equal(a.sigmas, b.sigmas)


def test_flow_levels_are_float64_under_x64():
    with jax.enable_x64(True):
        levels = schedules.flow_sigmas(0.02, 100.0, 28, shift=3.0)
        assert levels.dtype == jnp.float64
        np.testing.assert_allclose(levels[1:], _flow_oracle(28, 3.0)[1:], rtol=1e-13)


@pytest.mark.parametrize("shift", [0.0, -3.0, np.nan, np.inf])
def test_flow_checks_shift(shift):
    with pytest.raises(ValueError, match="shift must be finite and > 0"):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, "flow", shift=shift)
    with pytest.raises(ValueError, match="shift must be finite and > 0"):
        schedules.flow_sigmas(0.02, 100.0, 5, shift=shift)


@pytest.mark.parametrize("shift, match", [(1e40, "beyond the largest float32"),
                                          (1e-42, "below the smallest normal float32")])
def test_flow_levels_outside_the_level_dtype_are_refused(shift, match):
    with pytest.raises(ValueError, match=rf"shift=1e.4. give noise levels {match}"):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, "flow", shift=shift)


@pytest.mark.parametrize("name", [name for name in kj.SCHEDULES if name != "flow"])
def test_shift_is_refused_by_every_schedule_but_flow(name):
    with pytest.raises(ValueError, match=rf"schedule '{name}' takes no shift="):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, name, shift=3.0)
    with pytest.raises(ValueError, match="takes no shift"):
        kj.set_timesteps(kj.KarrasVeConfig(), 5, sigmas=[3.0, 1.0], shift=3.0)


# --- a table of levels interpolated in log sigma (Align Your Steps) ---------------------------------

# Align Your Steps' published 10-step levels for Stable Diffusion 1.5 (11 levels, the 0 left out).
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def _loglinear_oracle(table, n):
    """AYS's loglinear_interp in float64: ascending log sigma interpolated over [0, 1]."""
    ys = np.log(np.asarray(table, np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), ys))[::-1]


@pytest.mark.parametrize("n", [2, 5, 7, 20, 100])
def test_interpolated_ays_table_matches_loglinear_interp(n):
    levels = schedules.interpolated_sigmas(AYS_SD15, n)
    assert levels.shape == (n,) and levels.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(levels), _loglinear_oracle(AYS_SD15, n), rtol=RTOL)
    assert float(levels[0]) == np.float32(14.615) and float(levels[-1]) == np.float32(0.029)
    assert np.all(np.diff(np.asarray(levels)) < 0)


def test_interpolation_keeps_the_table_bitwise_at_its_own_length():
    table = np.array([80.0, 7.123456789012345, 0.3, 0.002], np.float64)  # not float32 values
    levels = schedules.interpolated_sigmas(table, 4)
    assert np.asarray(levels).tobytes() == np.asarray(kj.custom_sigmas(table)).tobytes()
    state = kj.set_timesteps(kj.KarrasVeConfig(), 4, sigmas=table)
    assert np.asarray(state.sigmas[:-1]).tobytes() == np.asarray(kj.custom_sigmas(table)).tobytes()


def test_interpolation_is_linear_in_log_sigma_between_table_points():
    # 2(L-1)+1 levels land on every table point and on every midpoint between two:
    # the table's own levels, then the geometric means of neighbours.
    table = np.asarray(AYS_SD15, np.float64)
    levels = np.asarray(schedules.interpolated_sigmas(AYS_SD15, 2 * len(table) - 1), np.float64)
    np.testing.assert_allclose(levels[::2], table, rtol=RTOL)
    np.testing.assert_allclose(levels[1::2], np.sqrt(table[:-1] * table[1:]), rtol=RTOL)


def test_interpolation_of_a_small_table():
    np.testing.assert_allclose(schedules.interpolated_sigmas([100.0, 1.0, 0.01], 5),
                               [100.0, 10.0, 1.0, 0.1, 0.01], rtol=RTOL)
    np.testing.assert_array_equal(schedules.interpolated_sigmas([100.0, 1.0, 0.01], 1), [100.0])
    np.testing.assert_allclose(schedules.interpolated_sigmas([4.0, 1.0], 3), [4.0, 2.0, 1.0], rtol=RTOL)


def test_set_timesteps_interpolates_a_table_to_any_step_count():
    cfg = kj.KarrasVeConfig()
    state = kj.set_timesteps(cfg, 20, sigmas=AYS_SD15)
    assert state.num_inference_steps == 20 and state.schedule_name == "custom"
    assert state.sigmas.shape == (21,) and float(state.sigmas[-1]) == 0.0
    np.testing.assert_array_equal(state.sigmas[:-1], schedules.interpolated_sigmas(AYS_SD15, 20))
    assert float(state.init_noise_sigma) == np.float32(14.615)
    np.testing.assert_array_equal(state.schedule, state.sigmas[:-1][::-1])


def test_a_traced_table_interpolates_the_same():
    got = jax.jit(lambda table: schedules.interpolated_sigmas(table, 20))(jnp.asarray(AYS_SD15))
    np.testing.assert_allclose(got, _loglinear_oracle(AYS_SD15, 20), rtol=1e-5)
    assert float(got[0]) == np.float32(14.615) and float(got[-1]) == np.float32(0.029)


def test_interpolated_levels_are_float64_under_x64():
    with jax.enable_x64(True):
        levels = schedules.interpolated_sigmas(AYS_SD15, 20)
        assert levels.dtype == jnp.float64
        np.testing.assert_allclose(levels, _loglinear_oracle(AYS_SD15, 20), rtol=1e-13)
        assert float(levels[0]) == 14.615 and float(levels[-1]) == 0.029


@pytest.mark.parametrize(
    "bad,match",
    [(np.ones((2, 2)), "1-D"), (np.array([]), "non-empty"), ([3.0, np.nan, 1.0], "finite"),
     ([np.inf, 1.0], "finite"), ([3.0, 1.0, 0.0], "> 0"), ([1.0, 2.0, 3.0], "strictly descending"),
     ([3.0, 2.0, 2.0], "strictly descending")],
)
def test_bad_tables_are_refused_before_interpolating(bad, match):
    with pytest.raises(ValueError, match=match):
        schedules.interpolated_sigmas(bad, 7)
    with pytest.raises(ValueError, match=match):
        kj.set_timesteps(kj.KarrasVeConfig(), 7, sigmas=bad)


def test_a_single_level_cannot_be_stretched_and_merged_levels_are_refused():
    with pytest.raises(ValueError, match="single level"):
        kj.set_timesteps(kj.KarrasVeConfig(), 3, sigmas=[2.0])
    np.testing.assert_array_equal(kj.set_timesteps(kj.KarrasVeConfig(), 1, sigmas=[2.0]).sigmas, [2.0, 0.0])
    with pytest.raises(ValueError, match="round to equal neighbours in float32"):
        schedules.interpolated_sigmas([1.0, 0.9999], 10_000)
    with pytest.raises(ValueError, match="num_inference_steps"):
        schedules.interpolated_sigmas(AYS_SD15, 0)
