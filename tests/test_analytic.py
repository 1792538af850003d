"""karras_jax.analytic: the analytic denoisers, exact samplers, moments and the energy distance,
checked against float64 NumPy computed independently (Bayes' rule, Tweedie's formula, an
ODE integrator, Monte Carlo)."""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from sampler_utils import numpy_gaussian_denoiser, numpy_mixture_denoiser, small_mixture

from karras_jax.analytic import (
    GaussianData,
    GaussianMixture,
    default_mixture,
    energy_distance,
)

SIGMAS = [0.002, 0.05, 0.3, 1.0, 4.0, 80.0]

# Jitted once (the dataclasses are pytrees): far cheaper than dispatching each op eagerly.
mixture_denoise = jax.jit(lambda mixture, x, sigma: mixture.denoise(x, sigma))
mixture_sample = jax.jit(GaussianMixture.sample, static_argnums=2)
energy = jax.jit(energy_distance)


def _gaussian():
    return GaussianData(mean=jnp.asarray([-1.0, 0.5, 2.0]), std=jnp.asarray(0.7))


# --- GaussianData -------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_denoise_is_the_posterior_mean(sigma):
    data = _gaussian()
    x = np.random.default_rng(0).normal(size=(5, 3)) * (1 + sigma)
    # Posterior of y ~ N(mu, s^2) given x = y + n, n ~ N(0, sigma^2): precision-weighted mean.
    mu, s = np.asarray(data.mean, np.float64), float(data.std)
    expected = (x / sigma**2 + mu / s**2) / (1 / sigma**2 + 1 / s**2)
    np.testing.assert_allclose(np.asarray(data.denoise(x, sigma)), expected, rtol=1e-5, atol=1e-6)


def _rk4_probability_flow(denoise, x, sigma_start, steps=4000):
    """Integrates dx/dsigma = (x - D(x; sigma)) / sigma from sigma_start to 0 in float64."""
    grid = np.linspace(sigma_start, 0.0, steps + 1)

    def f(x, sigma):
        if sigma == 0.0:  # (x - D)/sigma -> 0 for a Gaussian as sigma -> 0
            return np.zeros_like(x)
        return (x - denoise(x, sigma)) / sigma

    for a, b in zip(grid[:-1], grid[1:], strict=True):
        h = b - a
        k1 = f(x, a)
        k2 = f(x + h / 2 * k1, a + h / 2)
        k3 = f(x + h / 2 * k2, a + h / 2)
        k4 = f(x + h * k3, b)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.mark.parametrize("sigma_start", [0.5, 5.0, 80.0])
def test_gaussian_ode_solution_is_the_probability_flow(sigma_start):
    data = _gaussian()
    x0 = np.random.default_rng(1).normal(size=(4, 3)) * sigma_start
    exact = np.asarray(data.ode_solution(x0, sigma_start))
    integrated = _rk4_probability_flow(numpy_gaussian_denoiser(data), x0, sigma_start)
    np.testing.assert_allclose(exact, integrated, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exact, oracle.gaussian_ode_solution(x0, np.asarray(data.mean), 0.7,
                                                                   sigma_start),
                               rtol=1e-5, atol=1e-5)


def test_gaussian_sample_moments():
    data = _gaussian()
    draws = np.asarray(data.sample(jax.random.key(0), 100_000, 3), np.float64)
    assert draws.shape == (100_000, 3)
    se_mean = 0.7 / np.sqrt(len(draws))
    np.testing.assert_allclose(draws.mean(0), np.asarray(data.mean), atol=5 * se_mean)
    se_std = 0.7 / np.sqrt(2 * len(draws))
    np.testing.assert_allclose(draws.std(0), 0.7, atol=5 * se_std)


# --- GaussianMixture ----------------------------------------------------------------------


def _mixtures():
    return [small_mixture(), default_mixture()]


def _log_density(mixture, x, sigma):
    """log p_sigma(x) of the noisy mixture, float64 NumPy, x (..., dim)."""
    w = np.asarray(mixture.weights, np.float64)
    mu = np.asarray(mixture.means, np.float64)
    var = np.asarray(mixture.stds, np.float64) ** 2 + sigma**2
    dim = mu.shape[-1]
    sq = np.sum((x[..., None, :] - mu) ** 2, axis=-1)
    log_terms = np.log(w) - 0.5 * sq / var - 0.5 * dim * np.log(2 * np.pi * var)
    top = log_terms.max(-1, keepdims=True)
    return (top + np.log(np.sum(np.exp(log_terms - top), axis=-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("which", [0, 1])
def test_mixture_denoise_is_the_posterior_mean(which, sigma):
    mixture = _mixtures()[which]
    rng = np.random.default_rng(2)
    # Points near the data, between components and far away (softmax must stay stable).
    x = np.concatenate([rng.normal(size=(20, 2)) * (2 + sigma), [[40.0, -35.0], [0.0, 0.0]]])
    got = np.asarray(mixture_denoise(mixture, jnp.asarray(x, jnp.float32), sigma), np.float64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, numpy_mixture_denoiser(mixture)(x, sigma), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_mixture_denoise_satisfies_tweedie(sigma):
    # Tweedie: D(x; sigma) = x + sigma^2 grad log p_sigma(x), with the gradient by central
    # differences in float64: independent of the posterior-weight formula.
    mixture = default_mixture()
    x = np.random.default_rng(3).normal(size=(10, 2)) * 2
    h = 1e-5
    grad = np.stack([
        (_log_density(mixture, x + h * e, sigma) - _log_density(mixture, x - h * e, sigma)) / (2 * h)
        for e in np.eye(2)
    ], axis=-1)
    got = np.asarray(mixture_denoise(mixture, jnp.asarray(x, jnp.float32), sigma), np.float64)
    np.testing.assert_allclose(got, x + sigma**2 * grad, rtol=1e-4, atol=1e-4)


def test_mixture_denoise_keeps_dtype_and_batch_shape():
    mixture = small_mixture()
    x = jnp.ones((2, 5, 2), jnp.bfloat16)
    out = mixture_denoise(mixture, x, 0.5)
    assert out.shape == (2, 5, 2) and out.dtype == jnp.bfloat16
    single = mixture_denoise(mixture, jnp.ones((2,)), 0.5)
    assert single.shape == (2,)


def test_mixture_one_component_is_the_gaussian():
    mixture = GaussianMixture(weights=jnp.ones(1), means=jnp.asarray([[1.0, -2.0]]), stds=jnp.asarray([0.4]))
    data = GaussianData(mean=jnp.asarray([1.0, -2.0]), std=jnp.asarray(0.4))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(6, 2)), jnp.float32)
    for sigma in (0.1, 2.0):
        np.testing.assert_allclose(np.asarray(mixture_denoise(mixture, x, sigma)),
                                   np.asarray(data.denoise(x, sigma)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1])
def test_mixture_moments(which):
    mixture = _mixtures()[which]
    w = np.asarray(mixture.weights, np.float64)
    mu = np.asarray(mixture.means, np.float64)
    s2 = np.asarray(mixture.stds, np.float64) ** 2
    # Direct formulas: E[y] = sum w mu; Cov = sum w (s^2 I + mu mu^T) - E[y] E[y]^T.
    mean = w @ mu
    cov = np.einsum("k,ki,kj->ij", w, mu, mu) + np.sum(w * s2) * np.eye(2) - np.outer(mean, mean)
    np.testing.assert_allclose(np.asarray(mixture.mean()), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mixture.covariance()), cov, rtol=1e-5, atol=1e-6)

    n = 200_000
    draws = np.asarray(mixture_sample(mixture, jax.random.key(5), n), np.float64)
    assert draws.shape == (n, 2)
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * se_mean)
    centred = draws - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(products.mean(0) - cov), 5 * se_cov)


def test_mixture_sample_component_frequencies():
    # Well-separated components: assign each draw to its nearest mean and count.
    mixture = default_mixture()
    n = 100_000
    draws = np.asarray(mixture_sample(mixture, jax.random.key(6), n), np.float64)
    mu = np.asarray(mixture.means, np.float64)
    nearest = np.argmin(np.sum((draws[:, None, :] - mu) ** 2, axis=-1), axis=-1)
    freq = np.bincount(nearest, minlength=len(mu)) / n
    w = np.asarray(mixture.weights, np.float64)
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / n) + 2e-3)


def test_default_mixture():
    mixture = default_mixture()
    assert mixture.dim == 2
    assert mixture.weights.shape == (9,) and mixture.means.shape == (9, 2) and mixture.stds.shape == (9,)
    np.testing.assert_allclose(float(jnp.sum(mixture.weights)), 1.0, rtol=1e-6)
    assert np.all(np.asarray(mixture.stds) > 0)


# --- energy distance ----------------------------------------------------------------------


def _energy_distance_loops(x, y):
    """The V-statistic 2 E|X-Y| - E|X-X'| - E|Y-Y'| with explicit pairwise norms, float64."""
    def mean_dist(a, b):
        return np.mean(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_energy_distance_matches_the_definition():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 2))
    y = rng.normal(size=(70, 2)) + [0.5, -0.2]
    np.testing.assert_allclose(float(energy(x, y)), _energy_distance_loops(x, y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(energy(x, y)), float(energy(y, x)), rtol=1e-5)
    assert abs(float(energy(x, x))) < 1e-5


def test_energy_distance_near_zero_for_the_same_distribution_positive_when_shifted():
    mixture = default_mixture()
    a = mixture_sample(mixture, jax.random.key(8), 2000)
    b = mixture_sample(mixture, jax.random.key(9), 2000)
    same = float(energy(a, b))
    shifted = float(energy(a, b + jnp.asarray([0.5, 0.0])))
    wider = float(energy(a, b * 1.3))
    # V-statistic bias ~ E|X-X'| / n: tiny for the same law; a shift of 0.5 is far above it.
    assert 0.0 <= same < 0.01
    assert shifted > 10 * max(same, 1e-3)
    assert wider > 10 * max(same, 1e-3)


def test_energy_distance_in_blocks_equals_the_full_matrix():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2500, 2)), rng.normal(0.3, 1.0, size=(1300, 2))

    def mean_dist(a, b):
        return np.mean(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)))

    want = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
    np.testing.assert_allclose(float(energy_distance(x, y)), want, rtol=1e-4, atol=1e-5)


# --- Checks (issue 16): bad records are refused where built; rebuilt and traced ones are not -----

W2, M2, S2 = jnp.asarray([0.25, 0.75]), jnp.asarray([[0.0, 1.0], [2.0, -1.0]]), jnp.asarray([0.3, 0.5])


@pytest.mark.parametrize("std, match", [
    (-1.0, "std must be > 0, got -1.0"), (0.0, "std must be > 0"),
    (jnp.float32(np.nan), "std must be finite"), (np.inf, "std must be finite"),
])
def test_gaussian_data_refuses_a_bad_std(std, match):
    with pytest.raises(ValueError, match=match):
        GaussianData(mean=jnp.zeros(2), std=std)


def test_gaussian_data_refuses_a_mean_that_is_not_finite():
    with pytest.raises(ValueError, match=r"mean must be finite: .* index \(1,\)"):
        GaussianData(mean=jnp.asarray([0.0, np.nan]), std=1.0)


@pytest.mark.parametrize("fields, match", [
    ({"weights": jnp.asarray([0.5, 0.6])}, r"weights must be >= 0 and sum to 1, .*sum 1.1"),
    ({"weights": jnp.asarray([1.5, -0.5])}, "weights must be >= 0 and sum to 1"),
    ({"weights": jnp.asarray([np.nan, 1.0])}, "weights must be finite"),
    ({"means": M2.at[1, 0].set(np.inf)}, r"means must be finite: .* index \(1, 0\)"),
    ({"stds": jnp.asarray([0.3, -0.5])}, "stds must be > 0"),
    ({"stds": jnp.asarray([0.3, 0.0])}, "stds must be > 0"),
    ({"means": jnp.zeros((3, 2))}, r"shapes \(K,\), \(K, dim\) and \(K,\); got \(2,\), \(3, 2\) and \(2,\)"),
    ({"means": jnp.zeros(2)}, r"got \(2,\), \(2,\) and \(2,\)"),
    ({"stds": jnp.asarray(0.3)}, r"got \(2,\), \(2, 2\) and \(\)"),
])
def test_gaussian_mixture_refuses_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"weights": W2, "means": M2, "stds": S2, **fields})
    with pytest.raises(ValueError, match=match):
        GaussianMixture(W2, M2, S2).replace(**fields)


def test_rebuilt_and_traced_records_are_not_checked():
    mixture = GaussianMixture(W2, M2, S2)
    zeros = jax.tree.map(jnp.zeros_like, mixture)  # stds of 0, weights summing to 0: not a user's record
    assert float(zeros.stds.sum()) == 0.0
    grads = jax.grad(lambda m: m.denoise(jnp.ones(2), 0.5).sum())(mixture)  # gradients may be negative
    assert isinstance(grads, GaussianMixture) and np.all(np.isfinite(np.asarray(grads.stds)))
    built = jax.jit(lambda w: GaussianMixture(w, M2, S2).mean())(jnp.asarray([0.5, 0.6]))  # traced
    np.testing.assert_allclose(built, 0.5 * M2[0] + 0.6 * M2[1], rtol=1e-6)
    solve = lambda s: GaussianData(jnp.zeros(1), s).ode_solution(jnp.ones(1), 1.0)  # noqa: E731
    draws = jax.vmap(solve)(jnp.asarray([1.0, 2.0]))
    assert draws.shape == (2, 1)
    assert GaussianMixture(W2.astype(jnp.bfloat16), M2, S2).dim == 2  # a coarse dtype's rounding is allowed


@pytest.mark.parametrize("x, y, match", [
    (np.ones((3, 2)), np.ones((3, 3)), r"same d and n >= 1; got shapes \(3, 2\) and \(3, 3\)"),
    (np.ones(3), np.ones((3, 1)), r"got shapes \(3,\) and \(3, 1\)"),
    (np.full((3, 2), np.nan), np.ones((3, 2)), "x must be finite"),
    (np.ones((3, 2)), np.full((3, 2), np.inf), "y must be finite"),
])
def test_energy_distance_refuses_bad_point_sets(x, y, match):
    with pytest.raises(ValueError, match=match):
        energy_distance(x, y)
