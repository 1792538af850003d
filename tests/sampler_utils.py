"""Shared helpers for the sampler tests: the contract's noise stream and float64 denoisers.

The noise stream is reproduced here from its definition (DESIGN.md), one key at a time,
independently of the library's vectorised implementation:

    k_init, k_churn = jax.random.split(keys[b])
    x_0[b]   = init_noise_sigma * normal(k_init, sample_shape)
    eps_i[b] = s_noise * normal(fold_in(k_churn, i), sample_shape)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from karras_jax.analytic import GaussianData, GaussianMixture


def contract_noise(keys, init_noise_sigma, s_noise, sample_shape, num_steps, dtype=jnp.float32):
    """(x0, eps) in float64: x0 (B, *shape) already scaled, eps (N, B, *shape) already times s_noise.

    ``dtype`` is the sample dtype: the contract draws the normals in it.
    """
    x0, eps = [], []
    for b in range(keys.shape[0]):
        k_init, k_churn = jax.random.split(keys[b])
        x0.append(np.asarray(jax.random.normal(k_init, sample_shape, dtype), np.float64))
        eps.append([
            np.asarray(jax.random.normal(jax.random.fold_in(k_churn, i), sample_shape, dtype),
                       np.float64)
            for i in range(num_steps)
        ])
    x0 = float(init_noise_sigma) * np.stack(x0)
    eps = float(np.float32(s_noise)) * np.stack(eps, axis=1)
    return x0, eps


def float32_tolerance(x0):
    """Absolute tolerance for float32 results against float64 (or another compilation).

    Round-off of the O(1) result plus that of the start noise (std up to 100-ish, and
    diffusers' levels up to 1e4); observed differences are about 10x below it.
    """
    return 1e-5 + 1e-7 * float(np.max(np.abs(np.asarray(x0, np.float64))))


def standard_normals(keys, sample_shape, num_steps):
    """The unscaled contract normals as float32 NumPy: z0 (B, *shape), z (N, B, *shape)."""
    x0, eps = contract_noise(keys, 1.0, 1.0, sample_shape, num_steps)
    return x0.astype(np.float32), eps.astype(np.float32)


def numpy_gaussian_denoiser(data: GaussianData):
    """Float64 D for N(mu, s^2 I), elementwise."""
    mu = np.asarray(data.mean, np.float64)
    s2 = float(data.std) ** 2

    def denoise(x, sigma):
        return (s2 * np.asarray(x, np.float64) + sigma**2 * mu) / (s2 + sigma**2)

    return denoise


def numpy_mixture_denoiser(mixture: GaussianMixture):
    """Float64 posterior mean E[y | y + n = x] for a Gaussian mixture, by Bayes' rule.

    r_k(x) = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / sum_j w_j N(x; mu_j, (s_j^2 + sigma^2) I),
    D(x) = sum_k r_k(x) E[y | x, k],  E[y | x, k] = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k).
    """
    w = np.asarray(mixture.weights, np.float64)
    mu = np.asarray(mixture.means, np.float64)
    s2 = np.asarray(mixture.stds, np.float64) ** 2
    dim = mu.shape[-1]

    def denoise(x, sigma):
        x = np.asarray(x, np.float64)[..., None, :]  # (..., 1, dim)
        var = s2 + float(sigma) ** 2  # (K,)
        log_dens = (np.log(w) - 0.5 * np.sum((x - mu) ** 2, axis=-1) / var
                    - 0.5 * dim * np.log(2 * np.pi * var))
        log_dens -= log_dens.max(axis=-1, keepdims=True)
        r = np.exp(log_dens)
        r /= r.sum(axis=-1, keepdims=True)
        posterior_means = mu + (s2 / var)[:, None] * (x - mu)
        return np.sum(r[..., None] * posterior_means, axis=-2)

    return denoise


def gaussian_data(dim: int = 3) -> GaussianData:
    """A non-trivial Gaussian: non-zero, unequal mean, std != 1."""
    return GaussianData(mean=jnp.linspace(-1.0, 2.0, dim), std=jnp.asarray(0.7))


def small_mixture() -> GaussianMixture:
    """A 3-component 2-D mixture with unequal weights and widths."""
    return GaussianMixture(
        weights=jnp.asarray([0.5, 0.3, 0.2]),
        means=jnp.asarray([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.5]]),
        stds=jnp.asarray([0.3, 0.5, 0.2]),
    )


def edm_config(**overrides) -> kj.KarrasVeConfig:
    """EDM-like levels (sigma 0.002 .. 80) with churn on inside [0.05, 50]."""
    values = dict(sigma_min=0.002, sigma_max=80.0, s_noise=1.007, s_churn=10.0, s_min=0.05, s_max=50.0)
    values.update(overrides)
    return kj.KarrasVeConfig(**values)


def keys_for(seed: int, batch: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), batch)


# --- jitted entry points shared by the tests (one compile per static signature) ---------------

GAUSS = gaussian_data(3)
MIX = small_mixture()


def gauss_denoise(x, sigma, cond=None):
    """D for GAUSS: elementwise, so bitwise batch-independent."""
    return GAUSS.denoise(x, sigma)


# inpainting's test case: Gaussian data with independent coordinates, coordinates 0 and 2 known
PAINT_DATA = GaussianData(jnp.asarray([1.0, -2.0, 0.5, 3.0]), jnp.asarray(0.7))
PAINT_CFG = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
PAINT_MASK = jnp.asarray([1.0, 0.0, 1.0, 0.0])
PAINT_KNOWN = jnp.asarray([5.0, 0.0, -5.0, 0.0])


def paint_denoise(x, sigma, cond=None):
    return PAINT_DATA.denoise(x, sigma)


def check_paint_marginals(x, seeds, steps):
    """The known coordinates exactly, the free ones with the data's marginal mean and std (5 SE)."""
    x = np.asarray(x, np.float64)
    assert np.all(x[:, 0] == 5.0) and np.all(x[:, 2] == -5.0)
    std, se_mean, se_std = 0.7, 0.7 / np.sqrt(seeds), 0.7 / np.sqrt(2 * seeds)
    for column, mean in ((1, -2.0), (3, 3.0)):
        assert abs(x[:, column].mean() - mean) < 5 * se_mean, x[:, column].mean()
        assert abs(x[:, column].std() - std) < 5 * se_std + 0.005, (steps, x[:, column].std())  # + N's bias


def mix_denoise(x, sigma, cond=None):
    """D for MIX: has reductions over components and dims."""
    return MIX.denoise(x, sigma)


_jitted_sample = jax.jit(
    kj.sample,
    static_argnames=("denoise_fn", "sample_shape", "solver", "dtype", "return_trajectory", "progress"),
)


def fast_sample(denoise_fn, keys, state, config, sample_shape, *args, **kwargs):
    """``kj.sample`` jitted, the config riding in the state (checked against its range here,
    where both are concrete: a traced config beside a traced state cannot be compared)."""
    if config is not None:
        state = state.replace(config=config)
    return _jitted_sample(denoise_fn, keys, state, None, sample_shape, *args, **kwargs)


def ode_errors(solver, steps=(8, 16, 32, 64)):
    """Max |x_N - exact ODE solution| for each N in ``steps``, s_churn = 0, karras schedule.

    Gaussian data N(linspace(-1, 1, 4), 1); 32 seeds; the start noise fed back as ``x_init``.
    """
    data = GaussianData(mean=jnp.linspace(-1.0, 1.0, 4), std=jnp.asarray(1.0))
    cfg = edm_config(s_churn=0.0)
    keys = keys_for(0, 32)

    @jax.jit
    def run(keys, x0, state):
        return kj.sample(data.denoise, keys, state, None, (4,), solver=solver, x_init=x0)

    errors = []
    for n in steps:
        state = kj.set_timesteps(cfg, n, "karras")
        x0 = kj.initial_noise(keys, state, (4,))
        exact = np.asarray(data.ode_solution(np.asarray(x0, np.float64), float(state.sigmas[0])))
        out = np.asarray(run(keys, x0, state), np.float64)
        errors.append(np.abs(out - exact).max())
    return np.asarray(errors)
