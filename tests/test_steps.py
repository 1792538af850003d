"""The step formulas of :mod:`karras_jax.steps` against the float64 oracle: churn, slope, Euler
update, Heun slope, one public name each, and composed into Algorithm 2."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj
from karras_jax import steps

CFG = kj.KarrasVeConfig()  # s_churn 80, window [0.05, 50], s_noise 1.007
SHAPE = (2, 3)
RTOL, ATOL = 2e-6, 1e-6  # float32 against float64
FORMULAS = ("add_churn", "churn_gamma", "churn_levels", "churn_std", "euler_update", "heun_slope", "slope")


def _x(seed=0, shape=SHAPE, scale=1.0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def _f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


# --- one public name per formula ---------------------------------------------------------


def test_the_formulas_are_the_public_names_of_the_module_and_the_package():
    assert sorted(steps.__all__) == sorted(FORMULAS)
    for name in FORMULAS:
        assert getattr(kj, name) is getattr(steps, name), name
    # One name per formula: the unchecked twin of churn_gamma is gone.
    assert not hasattr(steps, "gamma_of")


# --- churn_gamma ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 50, 200, 1000])
@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.3, 10.0, 50.0, 50.01, 1e4])
def test_churn_gamma_matches_oracle(n, sigma):
    got = float(kj.churn_gamma(CFG, n, sigma))
    want = oracle.gamma(CFG.s_churn, CFG.s_min, CFG.s_max, n, sigma)
    assert got == pytest.approx(want, rel=1e-6, abs=0)


def test_churn_gamma_window_ends_are_inclusive():
    cfg = kj.KarrasVeConfig(s_churn=1.0, s_min=0.5, s_max=2.0)
    assert float(kj.churn_gamma(cfg, 10, 0.5)) == pytest.approx(0.1)
    assert float(kj.churn_gamma(cfg, 10, 2.0)) == pytest.approx(0.1)
    assert float(kj.churn_gamma(cfg, 10, np.nextafter(np.float32(0.5), 0))) == 0.0
    assert float(kj.churn_gamma(cfg, 10, np.nextafter(np.float32(2.0), 3))) == 0.0


def test_churn_gamma_is_capped_at_sqrt2_minus_1():
    # S_churn / N = 80 / 50 = 1.6 > sqrt(2) - 1: the cap keeps sigma_hat <= sqrt(2) sigma.
    assert float(kj.churn_gamma(CFG, 50, 1.0)) == pytest.approx(math.sqrt(2) - 1, rel=1e-7)
    assert float(kj.churn_gamma(CFG.replace(s_churn=0.0), 50, 1.0)) == 0.0


def test_churn_gamma_is_elementwise_over_levels_in_the_level_dtype():
    levels = (100.0, 50.0, 1.0, 0.5, 0.01)
    got = kj.churn_gamma(CFG, 4, jnp.asarray(levels, jnp.float16))  # any float dtype in, levels out
    assert got.shape == (5,) and got.dtype == jnp.float32
    want = [oracle.gamma(CFG.s_churn, CFG.s_min, CFG.s_max, 4, s) for s in levels]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_churn_gamma_traced_config_and_level_under_jit():
    f = jax.jit(lambda cfg, sigma: kj.churn_gamma(cfg, 10, sigma))
    for s_churn, sigma in ((0.0, 1.0), (1.0, 1.0), (1.0, 60.0), (80.0, 1.0)):
        got = float(f(CFG.replace(s_churn=s_churn), jnp.float32(sigma)))
        assert got == pytest.approx(oracle.gamma(s_churn, CFG.s_min, CFG.s_max, 10, sigma), rel=1e-6)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_churn_gamma_checks_the_step_count(bad, exc):
    with pytest.raises(exc, match="num_inference_steps"):
        kj.churn_gamma(CFG, bad, 1.0)


def test_churn_gamma_checks_the_config():
    with pytest.raises(TypeError, match="config"):
        kj.churn_gamma({"s_churn": 1.0}, 10, 1.0)


# --- churn_std and churn_levels ------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1e-7, 1e-3, 0.1, math.sqrt(2) - 1])
@pytest.mark.parametrize("sigma", [0.02, 1.0, 80.0, 1e4])
def test_churn_std_is_the_root_of_the_difference_of_squares(sigma, gamma):
    got = float(kj.churn_std(jnp.float32(sigma), jnp.float32(gamma)))
    sigma64, gamma64 = float(np.float32(sigma)), float(np.float32(gamma))
    want = math.sqrt((sigma64 * (1 + gamma64)) ** 2 - sigma64**2)
    assert got == pytest.approx(want, rel=1e-6)


def test_churn_std_at_gamma_zero_is_zero_with_a_finite_gradient():
    assert float(kj.churn_std(jnp.float32(3.0), jnp.float32(0.0))) == 0.0
    d_sigma, d_gamma = jax.grad(lambda s, g: kj.churn_std(s, g), argnums=(0, 1))(3.0, 0.0)
    assert float(d_sigma) == 0.0 and np.isfinite(d_gamma)


@pytest.mark.parametrize("schedule", ["ve", "karras", "diffusers"])
@pytest.mark.parametrize("n", [1, 7, 40])
def test_churn_levels_of_all_levels_match_the_oracle(schedule, n):
    state = kj.set_timesteps(CFG, n, schedule)
    sigmas = state.sigmas[:-1]
    sigma_hat, noise_std = kj.churn_levels(CFG, n, sigmas)
    assert sigma_hat.shape == noise_std.shape == (n,)
    assert sigma_hat.dtype == noise_std.dtype == jnp.float32
    for i, sigma in enumerate(_f64(sigmas).tolist()):
        g = oracle.gamma(CFG.s_churn, CFG.s_min, CFG.s_max, n, sigma)
        want_hat = sigma * (1 + g)
        assert float(sigma_hat[i]) == pytest.approx(want_hat, rel=1e-6)
        want_std = CFG.s_noise * math.sqrt(want_hat**2 - sigma**2)
        assert float(noise_std[i]) == pytest.approx(want_std, rel=1e-5, abs=1e-30)


def test_churn_levels_scale_the_std_by_s_noise_and_not_the_level():
    sigma = jnp.float32(1.0)
    hat_1, std_1 = kj.churn_levels(CFG.replace(s_noise=1.0), 10, sigma)
    hat_2, std_2 = kj.churn_levels(CFG.replace(s_noise=2.0), 10, sigma)
    assert float(hat_1) == float(hat_2)
    assert float(std_2) == pytest.approx(2 * float(std_1), rel=1e-7)
    assert float(kj.churn_levels(CFG.replace(s_noise=0.0), 10, sigma)[1]) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_add_churn_adds_scaled_noise_in_the_sample_dtype(dtype):
    x, z = _x(1, dtype=dtype), _x(2, dtype=dtype)
    got = kj.add_churn(x, jnp.float32(0.75), z)
    assert got.dtype == dtype
    tol = {jnp.float32: 1e-6, jnp.float16: 2e-3, jnp.bfloat16: 2e-2}[dtype]
    np.testing.assert_allclose(_f64(got), _f64(x) + 0.75 * _f64(z), rtol=tol, atol=tol)


# --- slope, euler_update, heun_slope -----------------------------------------------------


@pytest.mark.parametrize("sigma", [0.02, 1.3, 80.0, 1e4])
def test_slope_is_x_minus_denoised_over_sigma(sigma):
    x, denoised = _x(1, scale=sigma), _x(2)
    got = kj.slope(x, denoised, jnp.float32(1.0 / sigma))
    np.testing.assert_allclose(got, (_f64(x) - _f64(denoised)) / sigma, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("sigma_hat,sigma_next", [(80.0, 40.0), (1.3, 0.9), (0.5, 0.0), (1e4, 141.4)])
def test_slope_and_euler_update_are_diffusers_euler_step(sigma_hat, sigma_next):
    x_hat, m = _x(1, scale=sigma_hat), _x(2)
    denoised = _f64(x_hat) + sigma_hat * _f64(m)
    d = kj.slope(x_hat, jnp.asarray(denoised, jnp.float32), jnp.float32(1.0 / sigma_hat))
    got = kj.euler_update(x_hat, d, jnp.float32(sigma_next) - jnp.float32(sigma_hat))
    want_prev, want_d, _ = oracle.step(_f64(m), sigma_hat, sigma_next, _f64(x_hat))
    np.testing.assert_allclose(d, want_d, rtol=RTOL, atol=ATOL * max(1.0, sigma_hat) * 4)
    np.testing.assert_allclose(got, want_prev, rtol=RTOL, atol=ATOL * sigma_hat * 4)


def test_euler_update_to_zero_lands_on_the_denoiser():
    denoise = oracle.gaussian_denoiser(mu=3.0, s=0.5)
    x = _x(3, scale=2.0)
    denoised = denoise(_f64(x), 2.0)
    d = kj.slope(x, jnp.asarray(denoised, jnp.float32), jnp.float32(0.5))
    np.testing.assert_allclose(kj.euler_update(x, d, jnp.float32(-2.0)), denoised, rtol=1e-6, atol=1e-6)


def test_heun_slope_is_the_average_and_gives_the_heun_correction():
    sigma_hat, sigma_next = 1.5, 1.0
    x_hat, m1, m2 = _x(1), _x(2), _x(3)
    first_prev, first_d, _ = oracle.step(_f64(m1), sigma_hat, sigma_next, _f64(x_hat))
    d = jnp.asarray(first_d, jnp.float32)
    x_euler = jnp.asarray(first_prev, jnp.float32)
    d_next = kj.slope(x_euler, x_euler + sigma_next * m2, jnp.float32(1.0 / sigma_next))
    averaged = kj.heun_slope(d, d_next)
    np.testing.assert_allclose(averaged, 0.5 * (_f64(d) + _f64(d_next)), rtol=1e-7, atol=1e-7)
    got = kj.euler_update(x_hat, averaged, jnp.float32(sigma_next - sigma_hat))
    want, want_slope, _ = oracle.step_correct(_f64(m2), sigma_hat, sigma_next, _f64(x_hat),
                                              _f64(x_euler), _f64(d))
    np.testing.assert_allclose(averaged, want_slope, rtol=RTOL, atol=4 * ATOL)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=4 * ATOL)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_elementwise_formulas_keep_the_sample_dtype(dtype):
    x, denoised = _x(1, dtype=dtype), _x(2, dtype=dtype)
    d = kj.slope(x, denoised, jnp.float32(0.5))
    x_next = kj.euler_update(x, d, jnp.float32(-0.25))
    chex.assert_trees_all_equal_dtypes((d, x_next, kj.heun_slope(d, d)), (x, x, x))


def test_python_scalars_are_accepted_where_arrays_are():
    x, denoised = _x(1), _x(2)
    np.testing.assert_array_equal(kj.slope(x, denoised, 0.5), kj.slope(x, denoised, jnp.float32(0.5)))
    d = kj.slope(x, denoised, 0.5)
    np.testing.assert_array_equal(kj.euler_update(x, d, -0.25), kj.euler_update(x, d, jnp.float32(-0.25)))
    np.testing.assert_array_equal(kj.add_churn(x, 0.5, denoised), kj.add_churn(x, jnp.float32(0.5), denoised))


# --- the formulas composed into Algorithm 2 ------------------------------------------------


@pytest.mark.parametrize("heun", [True, False])
@pytest.mark.parametrize("s_churn", [0.0, 10.0])
def test_the_formulas_compose_into_algorithm2(heun, s_churn):
    # A loop written only with the public formulas, as a solver outside the package would be.
    cfg = kj.KarrasVeConfig(sigma_min=0.02, sigma_max=20.0, s_churn=s_churn, s_min=0.1, s_max=5.0)
    state = kj.set_timesteps(cfg, 6, "karras")
    n = state.num_inference_steps
    denoise = oracle.gaussian_denoiser(mu=0.7, s=0.4)

    def d_of(x, sigma):
        return jnp.asarray(denoise(_f64(x), float(sigma)), jnp.float32)

    sigmas = state.sigmas
    sigma_hats, stds = kj.churn_levels(cfg, n, sigmas[:-1])
    keys = jax.random.split(jax.random.key(0), n + 1)
    x = state.init_noise_sigma * jax.random.normal(keys[0], SHAPE)
    x0, noises = _f64(x), []
    for i in range(n):
        z = jax.random.normal(keys[i + 1], SHAPE)
        noises.append(cfg.s_noise * _f64(z))
        x_hat, sigma_hat, sigma_next = kj.add_churn(x, stds[i], z), sigma_hats[i], sigmas[i + 1]
        d = kj.slope(x_hat, d_of(x_hat, sigma_hat), 1.0 / sigma_hat)
        x = kj.euler_update(x_hat, d, sigma_next - sigma_hat)
        if heun and float(sigma_next) != 0:
            d_next = kj.slope(x, d_of(x, sigma_next), 1.0 / sigma_next)
            x = kj.euler_update(x_hat, kj.heun_slope(d, d_next), sigma_next - sigma_hat)
    want = oracle.algorithm2(denoise, x0, _f64(sigmas), cfg.s_churn, cfg.s_min, cfg.s_max, noises,
                             heun=heun)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
