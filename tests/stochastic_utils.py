"""Shared by the stochastic-solver tests: the solver noise stream from its definition, float64
NumPy transcriptions of the three solvers composed with Algorithm 2's churn, k-diffusion runs
fed the same noise, and the energy distance of a solver on the built-in mixture.

The transcriptions follow the published updates step by step (k-diffusion's loops, with the
churn of Algorithm 2 in front of every step and karras_jax's documented history rule: a
churned step is first order, and no step reaches back across a churned one). They never call
karras_jax's solvers.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import oracle

import karras_jax as kj
from karras_jax.analytic import default_mixture, energy_distance


def step_normals(keys, sample_shape, num_steps):
    """z (N, B, *shape) float64: draw 0 of each step, ``normal(fold_in(fold_in(split(k_b, 3)[2], i), 0))``."""
    rows = []
    for b in range(keys.shape[0]):
        k_solver = jax.random.split(keys[b], 3)[2]
        rows.append([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(k_solver, i), 0),
                                                  sample_shape), np.float64) for i in range(num_steps)])
    return np.stack(rows, axis=1)


def _churned(x, sigma, i, n, churn, eps):
    """Algorithm 2's churn of step i: (x_hat, sigma_hat, gamma)."""
    s_churn, s_min, s_max = churn
    g = oracle.gamma(s_churn, s_min, s_max, n, sigma)
    if eps is None or g == 0:
        return x, sigma, g
    x_hat, sigma_hat = oracle.add_noise_to_input(x, sigma, g, eps[i])
    return x_hat, sigma_hat, g


def euler_ancestral(denoise, x0, sigmas, z, eta, s_noise, churn=(0.0, 0.0, math.inf), eps=None):
    """Churn, then k-diffusion's ``sample_euler_ancestral`` step from (x_hat, sigma_hat)."""
    sigmas = [float(s) for s in sigmas]
    n, x = len(sigmas) - 1, np.asarray(x0, np.float64)
    for i in range(n):
        x, sigma_hat, _ = _churned(x, sigmas[i], i, n, churn, eps)
        sigma_next = sigmas[i + 1]
        denoised = denoise(x, sigma_hat)
        up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma_hat**2 - sigma_next**2) / sigma_hat**2))
        down = math.sqrt(sigma_next**2 - up**2)
        x = x + (down - sigma_hat) * (x - denoised) / sigma_hat
        if sigma_next > 0:
            x = x + z[i] * s_noise * up
    return x


def dpmpp_2m_sde(denoise, x0, sigmas, z, eta, s_noise, solver_type="midpoint",
                 churn=(0.0, 0.0, math.inf), eps=None, cut=True):
    """Churn, then k-diffusion's ``sample_dpmpp_2m_sde`` step from (x_hat, sigma_hat).

    ``cut=False`` keeps the history across churned steps (the rule karras_jax does not use).
    """
    sigmas = [float(s) for s in sigmas]
    n, x = len(sigmas) - 1, np.asarray(x0, np.float64)
    past = []  # (D, t_hat) of the steps since the last churn
    for i in range(n):
        x, sigma_hat, g = _churned(x, sigmas[i], i, n, churn, eps)
        if g > 0 and cut:
            past = []
        sigma_next = sigmas[i + 1]
        denoised = denoise(x, sigma_hat)
        t = -math.log(sigma_hat)
        if sigma_next == 0:
            x = denoised
        else:
            h = -math.log(sigma_next) - t
            eta_h = eta * h
            x = sigma_next / sigma_hat * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
            if past:
                previous, t_previous = past[-1]
                r = (t - t_previous) / h
                if solver_type == "heun":
                    scale = -math.expm1(-h - eta_h) / (-h - eta_h) + 1
                else:
                    scale = -0.5 * math.expm1(-h - eta_h)
                x = x + scale / r * (denoised - previous)
            x = x + z[i] * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
        past.append((denoised, t))
    return x


def dpmpp_3m_sde(denoise, x0, sigmas, z, eta, s_noise, churn=(0.0, 0.0, math.inf), eps=None):
    """Churn, then k-diffusion's ``sample_dpmpp_3m_sde`` step from (x_hat, sigma_hat)."""
    sigmas = [float(s) for s in sigmas]
    n, x = len(sigmas) - 1, np.asarray(x0, np.float64)
    past = []
    for i in range(n):
        x, sigma_hat, g = _churned(x, sigmas[i], i, n, churn, eps)
        if g > 0:
            past = []
        sigma_next = sigmas[i + 1]
        denoised = denoise(x, sigma_hat)
        t = -math.log(sigma_hat)
        if sigma_next == 0:
            x = denoised
        else:
            h = -math.log(sigma_next) - t
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if len(past) >= 2:
                (d_1, t_1), (d_2, t_2) = past[-1], past[-2]
                r0, r1 = (t - t_1) / h, (t_1 - t_2) / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif past:
                d_1, t_1 = past[-1]
                x = x + phi_2 * (denoised - d_1) / ((t - t_1) / h)
            x = x + z[i] * sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        past.append((denoised, t))
    return x


def k_diffusion_run(sampler, denoise, x0, sigmas, keys, sample_shape, **kwargs):
    """k-diffusion's ``sampler`` in float64 torch on ``denoise`` (a float64 NumPy D(x, sigma)),
    from ``x0``, fed ``step_normals`` through its ``noise_sampler(sigma, sigma_next)``."""
    import torch

    sigmas = np.asarray(sigmas, np.float64)
    z = step_normals(keys, sample_shape, len(sigmas) - 1)
    step_of = {float(s): i for i, s in enumerate(sigmas[:-1])}
    calls = []

    def noise_sampler(sigma, sigma_next):
        i = step_of[float(sigma)]
        calls.append(i)
        return torch.from_numpy(z[i])

    def model(x, sigma):
        return torch.from_numpy(denoise(x.numpy(), float(sigma[0])))

    out = sampler(model, torch.from_numpy(np.asarray(x0, np.float64)), torch.from_numpy(sigmas),
                  disable=True, noise_sampler=noise_sampler, **kwargs).numpy()
    return out, calls


# The figure: the mean energy distance of ENERGY_SETS independent sets of ENERGY_SEEDS samples
# each, against as many true sets. On converged solvers a set's distance is mostly its
# finite-sample part (about 1/ENERGY_SEEDS), which swings by +-50% from set to set: one set, even
# of 32768 samples, can rank two solvers either way; the mean of 32 sets is stable to ~10%.
ENERGY_STEPS, ENERGY_SEEDS, ENERGY_SETS = 50, 4096, 32
_MIXTURE = default_mixture()


@functools.cache
def mixture_energy(solver, steps=ENERGY_STEPS, seed=0):
    """The mean energy distance (see above) of float32 samples of the built-in mixture drawn
    with ``solver`` in N = ``steps`` steps (karras schedule and levels as the CLI demo, no churn)."""
    cfg = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_noise=1.0, s_churn=0.0)
    state = kj.set_timesteps(cfg, steps, "karras")
    total = ENERGY_SEEDS * ENERGY_SETS
    keys = jax.random.split(jax.random.key(seed), total)
    samples = jax.jit(lambda k: kj.sample(_MIXTURE.denoise, k, state, None, (2,), solver=solver))(keys)
    return mean_energy(samples, seed)


def mean_energy(samples, seed=0):
    """The figure above for ENERGY_SETS * ENERGY_SEEDS given samples of the built-in mixture."""
    total = ENERGY_SEEDS * ENERGY_SETS
    truth = _MIXTURE.sample(jax.random.key(seed + 1_000_003), total)
    shape = (ENERGY_SETS, ENERGY_SEEDS, 2)
    pairs = zip(np.asarray(samples).reshape(shape), truth.reshape(shape), strict=True)
    return float(np.mean([float(_energy(x, y)) for x, y in pairs]))


_energy = jax.jit(energy_distance)
