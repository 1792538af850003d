"""DPM-Solver++(3M) SDE: k-diffusion's ``sample_dpmpp_3m_sde`` fed the same noise, third order at
eta = 0, a float64 transcription of churn-then-step with churn on, one sample alone equal to
its place in a batch, its accuracy on the built-in mixture, the levels of a flow schedule,
and its hyperparameter checks."""

import jax.numpy as jnp
import numpy as np
import pytest
import stochastic_utils as su
from kdiffusion import sampling as k_diffusion_sampling
from sampler_utils import (
    contract_noise,
    edm_config,
    fast_sample,
    float32_tolerance,
    keys_for,
    mix_denoise,
    numpy_mixture_denoiser,
    ode_errors,
    small_mixture,
)

import karras_jax as kj
from karras_jax.solvers import dpmpp_3m_sde
from karras_jax.solvers.base import levels_of

SHAPE = (2,)


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8), (1.6, 1.1), (0.0, 1.0)])
def test_matches_k_diffusion_sample_dpmpp_3m_sde(eta, s_noise):
    sampling = k_diffusion_sampling()
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 12, "karras")
    keys = keys_for(51, 4)
    x0 = kj.initial_noise(keys, state, SHAPE)
    want, calls = su.k_diffusion_run(sampling.sample_dpmpp_3m_sde, numpy_mixture_denoiser(small_mixture()),
                                     x0, state.sigmas, keys, SHAPE, eta=eta, s_noise=s_noise)
    assert calls == (list(range(11)) if eta else [])  # one draw per step with sigma_next > 0
    got = kj.sample(mix_denoise, keys, state, None, SHAPE, solver=dpmpp_3m_sde(eta, s_noise), x_init=x0)
    # float32 against float64: rtol 1e-5 plus float32_tolerance (1e-5 + 1e-7 |x0|).
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))


def test_eta_zero_converges_ahead_of_dpmpp_2m():
    # The third-order formula is warmed up by a first- and a second-order step (as in
    # k-diffusion), whose local errors keep the global error of the run at about N^-2 on this
    # problem (the float64 transcription gives the same errors); it stays 4-10x below
    # DPM-Solver++(2M)'s at the same N and network evaluations.
    errors = ode_errors(dpmpp_3m_sde(eta=0.0), steps=(32, 64, 128, 256))
    ratios = errors[1:-1] / errors[2:]
    assert np.all(ratios >= 3.0), (errors, ratios)  # about 4x per doubling from N=64 on
    assert np.all(errors < 0.3 * ode_errors("dpmpp_2m", steps=(32, 64, 128, 256))), errors


@pytest.mark.parametrize("window", [(0.5, 20.0), (0.05, 50.0)])
def test_with_churn_matches_the_float64_transcription_and_a_sample_alone_its_batch(window):
    # The first window leaves unchurned steps on both sides: history used, cut, and rebuilt.
    cfg = edm_config(s_churn=10.0, s_min=window[0], s_max=window[1])
    n, batch = 14, 64
    state = kj.set_timesteps(cfg, n, "karras")
    keys = keys_for(54, batch)
    solver = dpmpp_3m_sde(eta=0.7, s_noise=1.05)
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, SHAPE, n)
    z = su.step_normals(keys, SHAPE, n)
    denoise = numpy_mixture_denoiser(small_mixture())
    want = su.dpmpp_3m_sde(denoise, x0, state.sigmas, z, 0.7, 1.05,
                           churn=(cfg.s_churn, cfg.s_min, cfg.s_max), eps=eps)
    full = np.asarray(fast_sample(mix_denoise, keys, state, cfg, SHAPE, solver=solver))
    np.testing.assert_allclose(full.astype(np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))
    for b in (0, 37, 63):  # the mixture's reductions: float32 round-off across batch sizes
        alone = np.asarray(fast_sample(mix_denoise, keys[b:b + 1], state, cfg, SHAPE, solver=solver))
        np.testing.assert_allclose(alone[0], full[b], rtol=1e-5, atol=1e-5)


def test_accuracy_on_the_mixture():
    heun, got = su.mixture_energy("heun"), su.mixture_energy("dpmpp_3m_sde")
    print(f"energy distance, {su.ENERGY_SETS} x {su.ENERGY_SEEDS} samples, N=50: heun {heun:.5f}, "
          f"dpmpp_3m_sde {got:.5f}")
    assert got < 1.5 * heun


def test_history_rows():
    # An infinite first level (a flow schedule), then a churned row 3: rows >= 1 finite, and
    # the history order of each row follows the shared rule.
    sigma = jnp.asarray([jnp.inf, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    sigma_hat = sigma.at[3].set(1.2)
    sigma_next = jnp.concatenate([sigma[1:], jnp.zeros(1)])
    extra = dpmpp_3m_sde().scalars(levels_of(sigma, sigma_hat, sigma_next))
    for column in extra:
        assert np.all(np.isfinite(np.asarray(column)[1:])), extra
    first, second = np.asarray(extra.first) != 0, np.asarray(extra.second) != 0
    # row: 0 inf | 1 after inf | 2 2nd order | 3 churned | 4 2nd order | 5 3rd | 6 to 0
    assert first[1:].tolist() == [False, True, False, True, True, False]
    assert second[1:].tolist() == [False, False, False, False, True, False]


def test_cost_and_equal_objects():
    solver = dpmpp_3m_sde()
    assert (solver.name, solver.order, solver.evaluations(18), solver.stochastic) == (
        "dpmpp_3m_sde", 2, 18, True)  # the measured global order (warm-up steps)
    assert kj.get_solver("dpmpp_3m_sde") == solver  # safe as a static argument
    assert dpmpp_3m_sde(s_noise=0.5) != solver


@pytest.mark.parametrize("name, value", [("eta", -0.1), ("eta", float("nan")), ("s_noise", -1.0),
                                         ("s_noise", float("inf")), ("s_noise", [1.0])])
def test_bad_hyperparameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"dpmpp_3m_sde: {name} must be a finite number >= 0, got"):
        dpmpp_3m_sde(**{name: value})
