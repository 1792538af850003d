"""DPM-Solver++(2M) SDE, both variants: k-diffusion's ``sample_dpmpp_2m_sde`` fed the same noise,
DPM-Solver++(2M) at eta = 0, a float64 transcription of churn-then-step with churn on, one
sample alone equal to its place in a batch, its accuracy on the built-in mixture, the levels
of a flow schedule, and its hyperparameter checks."""

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
    gauss_denoise,
    keys_for,
    mix_denoise,
    numpy_mixture_denoiser,
    ode_errors,
    small_mixture,
)

import karras_jax as kj
from karras_jax.solvers import dpmpp_2m_sde
from karras_jax.solvers.base import levels_of

SHAPE = (2,)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8), (1.6, 1.1)])
def test_matches_k_diffusion_sample_dpmpp_2m_sde(solver_type, eta, s_noise):
    sampling = k_diffusion_sampling()
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 12, "karras")
    keys = keys_for(41, 4)
    x0 = kj.initial_noise(keys, state, SHAPE)
    want, calls = su.k_diffusion_run(sampling.sample_dpmpp_2m_sde, numpy_mixture_denoiser(small_mixture()),
                                     x0, state.sigmas, keys, SHAPE, eta=eta, s_noise=s_noise,
                                     solver_type=solver_type)
    assert calls == list(range(11))  # one draw per step with sigma_next > 0
    solver = dpmpp_2m_sde(eta, s_noise, solver_type)
    got = kj.sample(mix_denoise, keys, state, None, SHAPE, solver=solver, x_init=x0)
    # float32 against float64: rtol 1e-5 plus float32_tolerance (1e-5 + 1e-7 |x0|).
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))
    quiet = kj.sample(mix_denoise, keys, state, None, SHAPE, solver=dpmpp_2m_sde(0.0, s_noise, solver_type),
                      x_init=x0)
    assert not np.allclose(np.asarray(quiet, np.float64), want, atol=1e-2)


def test_the_variants_differ():
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 10, "karras")
    keys = keys_for(42, 8)
    midpoint = fast_sample(mix_denoise, keys, state, cfg, SHAPE, solver="dpmpp_2m_sde")
    heun = fast_sample(mix_denoise, keys, state, cfg, SHAPE, solver="dpmpp_2m_sde_heun")
    assert not np.allclose(midpoint, heun, atol=1e-4)


@pytest.mark.parametrize("s_churn", [0.0, 10.0])
def test_eta_zero_midpoint_is_dpmpp_2m(s_churn):
    cfg = edm_config(s_churn=s_churn)
    state = kj.set_timesteps(cfg, 10, "karras")
    keys = keys_for(43, 8)
    solver = dpmpp_2m_sde(eta=0.0)
    assert not solver.stochastic
    got = fast_sample(gauss_denoise, keys, state, cfg, (3,), solver=solver)
    want = fast_sample(gauss_denoise, keys, state, cfg, (3,), solver="dpmpp_2m")
    tol = float32_tolerance(kj.initial_noise(keys, state, (3,)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=tol)


def test_eta_zero_heun_variant_is_second_order():
    errors = ode_errors(dpmpp_2m_sde(eta=0.0, solver_type="heun"), steps=(16, 32, 64, 128))
    ratios = errors[:-1] / errors[1:]
    assert np.all(ratios >= 3.0), (errors, ratios)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_with_churn_matches_the_float64_transcription_and_a_sample_alone_its_batch(solver_type):
    # The window leaves unchurned steps on both sides: history used, cut, and used again.
    cfg = edm_config(s_churn=10.0, s_min=0.5, s_max=20.0)
    n, batch = 12, 64
    state = kj.set_timesteps(cfg, n, "karras")
    keys = keys_for(44, batch)
    solver = dpmpp_2m_sde(eta=0.7, s_noise=1.05, solver_type=solver_type)
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, SHAPE, n)
    z = su.step_normals(keys, SHAPE, n)
    denoise = numpy_mixture_denoiser(small_mixture())
    want = su.dpmpp_2m_sde(denoise, x0, state.sigmas, z, 0.7, 1.05, solver_type,
                           churn=(cfg.s_churn, cfg.s_min, cfg.s_max), eps=eps)
    full = np.asarray(fast_sample(mix_denoise, keys, state, cfg, SHAPE, solver=solver))
    np.testing.assert_allclose(full.astype(np.float64), want, rtol=1e-5, atol=float32_tolerance(x0))
    for b in (0, 37, 63):  # the mixture's reductions: float32 round-off across batch sizes
        alone = np.asarray(fast_sample(mix_denoise, keys[b:b + 1], state, cfg, SHAPE, solver=solver))
        np.testing.assert_allclose(alone[0], full[b], rtol=1e-5, atol=1e-5)
    # Extrapolating across the churn would be another result.
    across = su.dpmpp_2m_sde(denoise, x0, state.sigmas, z, 0.7, 1.05, solver_type,
                             churn=(cfg.s_churn, cfg.s_min, cfg.s_max), eps=eps, cut=False)
    assert not np.allclose(want, across, atol=1e-3)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_2m_sde_heun"])
def test_accuracy_on_the_mixture(name):
    heun, got = su.mixture_energy("heun"), su.mixture_energy(name)
    print(f"energy distance, {su.ENERGY_SETS} x {su.ENERGY_SEEDS} samples, N=50: heun {heun:.5f}, "
          f"{name} {got:.5f}")
    assert got < 1.5 * heun


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_an_infinite_first_level_leaves_the_other_rows_finite(solver_type):
    sigma = jnp.asarray([jnp.inf, 3.0, 1.0, 0.2])
    sigma_next = jnp.asarray([3.0, 1.0, 0.2, 0.0])
    extra = dpmpp_2m_sde(solver_type=solver_type).scalars(levels_of(sigma, sigma, sigma_next))
    for column in extra:
        assert np.all(np.isfinite(np.asarray(column)[1:])), extra
    assert float(extra.difference[1]) == 0.0 and float(extra.difference[2]) != 0.0  # no history after inf


def test_cost_names_and_equal_objects():
    for name, solver_type in (("dpmpp_2m_sde", "midpoint"), ("dpmpp_2m_sde_heun", "heun")):
        solver = dpmpp_2m_sde(solver_type=solver_type)
        assert (solver.name, solver.order, solver.evaluations(18), solver.stochastic) == (name, 2, 18, True)
        assert kj.get_solver(name) == solver  # safe as a static argument
    assert dpmpp_2m_sde(eta=0.5) != dpmpp_2m_sde()


@pytest.mark.parametrize("name, value", [("eta", -0.1), ("eta", float("nan")), ("s_noise", -1.0),
                                         ("s_noise", float("inf")), ("eta", None)])
def test_bad_hyperparameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"dpmpp_2m_sde: {name} must be a finite number >= 0, got"):
        dpmpp_2m_sde(**{name: value})


@pytest.mark.parametrize("value", ["euler", "Heun", None])
def test_bad_solver_types_are_refused_by_name(value):
    with pytest.raises(ValueError, match=r"dpmpp_2m_sde: solver_type must be one of \('midpoint', 'heun'\)"):
        dpmpp_2m_sde(solver_type=value)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "euler_ancestral"])
def test_a_step_of_zero_length_leaves_the_sample_as_it_is(name):
    """Repeated levels (polyexponential with a large rho rounds several to sigma_min): no move, no noise."""
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.02, sigma_max=100.0, s_churn=0.0), 5,
                             "polyexponential", rho=50.0)
    levels = np.asarray(state.sigmas)
    assert levels[2] == levels[3] == levels[4] > 0
    _, path = kj.sample(mix_denoise, keys_for(0, 3), state, None, (2,), solver=kj.get_solver(name),
                        return_trajectory=True)
    np.testing.assert_array_equal(path.samples[3], path.samples[2])
    np.testing.assert_array_equal(path.samples[4], path.samples[3])
