"""Discrete-time models: exact epsilon and v networks of Gaussian data wrapped by
discrete_time_denoiser give the exact denoiser, and sampling one reproduces the data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import keys_for

import karras_jax as kj
from karras_jax.analytic import GaussianData

ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM's linear betas
DATA = GaussianData(mean=jnp.asarray([0.5, -1.0]), std=jnp.asarray(0.7))


def test_discrete_sigmas():
    sigmas = np.asarray(kj.discrete_sigmas(ABAR), np.float64)
    np.testing.assert_allclose(sigmas, np.sqrt((1 - ABAR) / ABAR), rtol=1e-6)
    assert np.all(np.diff(sigmas) > 0)


def _exact_net(prediction, quantize):
    """The exact epsilon / v network of DATA at timestep t (int or fractional)."""
    log_sigmas = jnp.log(kj.discrete_sigmas(ABAR))

    def net(params, x_scaled, t, cond):
        if quantize:
            sigma = jnp.exp(log_sigmas[t])
        else:
            sigma = jnp.exp(jnp.interp(t, jnp.arange(1000.0), log_sigmas))
        alpha = 1 / jnp.sqrt(sigma**2 + 1)
        x = x_scaled / alpha
        d = DATA.denoise(x, sigma)
        eps = (x - d) / sigma
        return {"epsilon": eps, "v": alpha * eps - sigma * alpha * d, "sample": d}[prediction]

    return net


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("quantize", [True, False])
def test_an_exact_network_gives_the_exact_denoiser(prediction, quantize):
    apply_fn = kj.discrete_time_denoiser(_exact_net(prediction, quantize), ABAR, prediction, quantize)
    x = jax.random.normal(jax.random.key(0), (5, 2)) * 3
    grid = np.asarray(kj.discrete_sigmas(ABAR))
    levels = grid[[5, 300, 999]] if quantize else (0.05, 0.8, 20.0)  # off the grid when interpolating
    for sigma in levels:
        sigma = jnp.float32(sigma)
        np.testing.assert_allclose(apply_fn(None, x, sigma, None), DATA.denoise(x, sigma),
                                   rtol=2e-4, atol=2e-5)


def test_timesteps_quantized_or_interpolated_and_per_sample():
    seen = []

    def net(params, x_scaled, t, cond):
        seen.append(t)
        return jnp.zeros_like(x_scaled)

    grid = np.asarray(kj.discrete_sigmas(ABAR))
    x = jnp.ones((3, 2))
    kj.discrete_time_denoiser(net, ABAR)(None, x, jnp.float32(grid[417] * 1.001), None)
    halfway = jnp.float32(math.sqrt(grid[10] * grid[11]))  # the midpoint in log sigma
    kj.discrete_time_denoiser(net, ABAR, quantize=False)(None, x, halfway, None)
    kj.discrete_time_denoiser(net, ABAR, sigma_shape="batch")(None, x, jnp.float32(grid[7]), None)
    assert int(seen[0]) == 417 and seen[0].dtype == jnp.int32
    assert abs(float(seen[1]) - 10.5) < 0.01
    assert seen[2].shape == (3,) and np.all(np.asarray(seen[2]) == 7)


def test_sampling_an_exact_epsilon_model_reproduces_the_data():
    grid = np.asarray(kj.discrete_sigmas(ABAR), np.float64)
    cfg = kj.KarrasVeConfig(sigma_min=float(grid[0]), sigma_max=float(grid[-1]), s_churn=0.0)
    levels = grid[np.round(np.linspace(999, 0, 40)).astype(int)]
    state = kj.set_timesteps(cfg, sigmas=levels)
    apply_fn = kj.discrete_time_denoiser(_exact_net("epsilon", True), ABAR)
    x = np.asarray(kj.make_sampler(apply_fn, state, cfg, (2,))(None, keys_for(4, 4096)), np.float64)
    se = 0.7 / math.sqrt(4096)
    np.testing.assert_array_less(np.abs(x.mean(0) - [0.5, -1.0]), 5 * se)
    np.testing.assert_array_less(np.abs(x.std(0) - 0.7), 5 * 0.7 / math.sqrt(2 * 4096))


@pytest.mark.parametrize("call, match", [
    (lambda: kj.discrete_time_denoiser(lambda p, x, t, c: x, ABAR, "x0"), "prediction must be"),
    (lambda: kj.discrete_time_denoiser(lambda p, x, t, c: x, ABAR[::-1]), "strictly decreasing"),
    (lambda: kj.discrete_sigmas(np.asarray([0.5, 1.5])), r"\(0, 1\]"),
    (lambda: kj.discrete_sigmas(np.ones((2, 2))), "1-D"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_one_sigma_per_sample_equals_each_sample_at_its_own_scalar_sigma(prediction):
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    net = lambda params, x_scaled, t, cond: jnp.cos(x_scaled) * (1 + t.reshape((-1, 1)) / 1000)  # noqa: E731
    apply_fn = kj.discrete_time_denoiser(net, abar, prediction)
    x = jax.random.normal(jax.random.key(1), (3, 2))
    sigma = jnp.asarray([0.05, 1.0, 30.0])
    together = apply_fn(None, x, sigma, None)
    for i in range(3):
        np.testing.assert_allclose(together[i], apply_fn(None, x[i:i + 1], sigma[i], None)[0], rtol=1e-6)


# Issue 16: an alphas_cumprod of exactly 1 (sigma_0 = 0, allowed by the docs) stays finite.

ABAR_ONE = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 100))[1:]])  # abar_0 = 1


def _oracle(abar, sigma, prediction, quantize, x):
    """Float64 NumPy: the timestep (as documented) and D for the network eps = cos(x_s) (1 + t/100)."""
    levels = np.sqrt((1 - abar) / abar)  # levels[0] == 0
    if quantize:
        t = 0 if sigma == 0 else 1 + int(np.argmin(np.abs(np.log(sigma) - np.log(levels[1:]))))
    elif sigma < levels[1]:
        t = sigma / levels[1]
    else:
        t = float(np.interp(np.log(sigma), np.log(levels[1:]), np.arange(1, len(abar))))
    scale = 1 / np.sqrt(sigma**2 + 1)
    out = np.cos(x * scale) * (1 + t / 100)
    return t, {"epsilon": x - sigma * out, "v": x * scale**2 - sigma * scale * out, "sample": out}[prediction]


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("quantize", [True, False])
def test_an_alpha_of_one_gives_finite_results_matching_a_float64_oracle(prediction, quantize):
    seen = []

    def net(params, x_scaled, t, cond):
        seen.append(t)
        return jnp.cos(x_scaled) * (1 + jnp.asarray(t, jnp.float32) / 100)

    apply_fn = kj.discrete_time_denoiser(net, ABAR_ONE, prediction, quantize)
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 3)), np.float64)
    levels = np.sqrt((1 - ABAR_ONE) / ABAR_ONE)
    for sigma in (0.0, 1e-6, 1e-3, 0.5 * levels[1], levels[1], 0.9 * levels[2] + 0.1 * levels[1],
                  float(levels[-1]), 2 * float(levels[-1])):
        got = np.asarray(apply_fn(None, jnp.asarray(x, jnp.float32), jnp.float32(sigma), None), np.float64)
        want_t, want = _oracle(ABAR_ONE, float(np.float32(sigma)), prediction, quantize, x)
        assert np.all(np.isfinite(got)) and np.isfinite(float(seen[-1]))
        np.testing.assert_allclose(float(seen[-1]), want_t, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_alpha_of_one_keeps_the_gradient_and_vmap_finite():
    apply_fn = kj.discrete_time_denoiser(lambda p, x_s, t, c: x_s * (1 + t), ABAR_ONE, quantize=False)
    x = jnp.ones((1, 2))
    grads = jax.vmap(jax.grad(lambda s: apply_fn(None, x, s, None).sum()))(jnp.asarray([1e-4, 0.02, 0.3]))
    assert np.all(np.isfinite(np.asarray(grads)))
    # continuous where the linear piece meets the interpolation in log sigma
    level = float(np.sqrt((1 - ABAR_ONE[1]) / ABAR_ONE[1]))
    below, above = (apply_fn(None, x, jnp.float32(level * f), None) for f in (1 - 1e-4, 1 + 1e-4))
    np.testing.assert_allclose(below, above, atol=1e-3)


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf"), jnp.float32(-0.5)])
def test_a_concrete_sigma_that_is_not_finite_and_nonnegative_is_refused(sigma):
    apply_fn = kj.discrete_time_denoiser(lambda p, x, t, c: x, ABAR)
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        apply_fn(None, jnp.ones((1, 2)), sigma, None)
    jax.jit(lambda s: apply_fn(None, jnp.ones((1, 2)), s, None))(sigma)  # traced: not checked


@pytest.mark.parametrize("call, error, match", [
    (lambda: kj.discrete_sigmas(np.asarray([1.0, 0.5, 0.0])), ValueError, r"got 0.0 at index 2"),
    (lambda: kj.discrete_sigmas(np.asarray([1.0, np.nan])), ValueError, r"\(0, 1\]"),
    (lambda: kj.discrete_sigmas(["a", "b"]), TypeError, "alphas_cumprod must be an array of real"),
    (lambda: jax.jit(kj.discrete_sigmas)(jnp.asarray([0.9, 0.5])), TypeError, "must be concrete"),
    (lambda: kj.discrete_time_denoiser(lambda p, x, t, c: x, np.asarray([1.0, 1.0, 0.5])), ValueError,
     "strictly decreasing"),
    (lambda: kj.discrete_time_denoiser(lambda p, x, t, c: x, ABAR, quantize="no"), TypeError,
     "quantize must be a bool"),
    (lambda: kj.discrete_time_denoiser(lambda p, x, t, c: x, ABAR, ["v"]), ValueError, "prediction must be"),
    (lambda: kj.discrete_time_denoiser(lambda p, x: x, ABAR), TypeError, "net_fn is called as"),
])
def test_bad_schedules_and_options_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
