"""DPM-Solver++(2M): against a float64 transcription of the paper's update (with and without
churn), second-order convergence on the Gaussian ODE, N evaluations, and k-diffusion's
``sample_dpmpp_2m`` where k-diffusion is installed."""

import jax
import numpy as np
import oracle
import pytest
from kdiffusion import sampling as k_diffusion_sampling
from sampler_utils import (
    contract_noise,
    edm_config,
    fast_sample,
    float32_tolerance,
    gauss_denoise,
    gaussian_data,
    keys_for,
    mix_denoise,
    numpy_gaussian_denoiser,
    numpy_mixture_denoiser,
    ode_errors,
    small_mixture,
)

import karras_jax as kj

SHAPE = (3,)


@pytest.mark.parametrize("schedule", ["karras", "ve"])
@pytest.mark.parametrize("n", [1, 2, 5, 18])
def test_deterministic_matches_the_float64_transcription(schedule, n):
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, n, schedule)
    keys = keys_for(3, 4)
    x0, _ = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, SHAPE, n)
    want = oracle.dpmpp_2m(numpy_gaussian_denoiser(gaussian_data()), x0, np.asarray(state.sigmas))
    got = fast_sample(gauss_denoise, keys, state, cfg, SHAPE, solver="dpmpp_2m")
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))


@pytest.mark.parametrize("window", [(0.05, 50.0), (0.5, 5.0)])
def test_with_churn_matches_the_float64_transcription(window):
    # Churn before every step; churned steps are first order, the others use the history.
    cfg = edm_config(s_churn=10.0, s_min=window[0], s_max=window[1])
    state = kj.set_timesteps(cfg, 12, "karras")
    keys = keys_for(5, 4)
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (2,), 12)
    want = oracle.dpmpp_2m(numpy_mixture_denoiser(small_mixture()), x0, np.asarray(state.sigmas),
                           cfg.s_churn, cfg.s_min, cfg.s_max, eps)
    got = fast_sample(mix_denoise, keys, state, cfg, (2,), solver="dpmpp_2m")
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))


def test_churned_steps_ignore_the_history():
    # With churn everywhere, every step is first order: the same as Euler with churn.
    cfg = edm_config(s_churn=10.0, s_min=0.0, s_max=1e9)
    state = kj.set_timesteps(cfg, 9, "karras")
    keys = keys_for(6, 4)
    dpm = fast_sample(mix_denoise, keys, state, cfg, (2,), solver="dpmpp_2m")
    euler = fast_sample(mix_denoise, keys, state, cfg, (2,), solver="euler")
    np.testing.assert_allclose(dpm, euler, rtol=1e-6, atol=1e-6)
    # ... while without churn the history changes the result.
    cfg0 = cfg.replace(s_churn=0.0)
    assert not np.allclose(fast_sample(mix_denoise, keys, state, cfg0, (2,), solver="dpmpp_2m"),
                           fast_sample(mix_denoise, keys, state, cfg0, (2,), solver="euler"), atol=1e-3)


def test_second_order_on_the_gaussian_ode():
    errors = ode_errors("dpmpp_2m", steps=(16, 32, 64, 128))
    ratios = errors[:-1] / errors[1:]
    # About 4x per doubling of N (from N=16 on; 8 -> 16 is still pre-asymptotic, 2.7x).
    assert np.all(ratios >= 3.0), (errors, ratios)
    assert errors[-1] < 0.005, errors
    # At the same number of network evaluations it beats Euler by far.
    assert errors[-1] < 0.1 * ode_errors("euler", steps=(128,))[0]


def test_costs_one_evaluation_per_step():
    calls = []

    def counting(x, sigma, cond):
        calls.append(1)
        return gauss_denoise(x, sigma)

    cfg = edm_config()
    state = kj.set_timesteps(cfg, 7, "karras")
    jax.make_jaxpr(lambda k: kj.sample(counting, k, state, cfg, SHAPE, solver="dpmpp_2m"))(keys_for(0, 2))
    assert len(calls) == 2  # traced once in the loop body, once for the last step
    assert kj.dpmpp_2m().evaluations(7) == 7 and kj.dpmpp_2m().order == 2


def test_matches_k_diffusion_sample_dpmpp_2m():
    sampling = k_diffusion_sampling()
    import torch
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 10, "karras")
    keys = keys_for(9, 4)
    x0 = np.asarray(kj.initial_noise(keys, state, SHAPE), np.float64)
    data = gaussian_data()
    mu, s2 = torch.tensor(np.asarray(data.mean, np.float64)), float(data.std) ** 2

    def model(x, sigma):
        sigma = sigma.reshape(-1, 1)
        return (s2 * x + sigma**2 * mu) / (s2 + sigma**2)

    sigmas = torch.tensor(np.asarray(state.sigmas, np.float64))
    want = sampling.sample_dpmpp_2m(model, torch.tensor(x0), sigmas, disable=True).numpy()
    got = kj.sample(gauss_denoise, keys, state, cfg, SHAPE, solver="dpmpp_2m")
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))
