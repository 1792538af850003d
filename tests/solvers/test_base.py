"""The solver interface: names and Solver objects are interchangeable, a solver written outside
the package plugs into every entry point, and a multistep history is carried through the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import GAUSS, edm_config, fast_sample, gauss_denoise, keys_for

import karras_jax as kj
from karras_jax import steps
from karras_jax.solvers.base import euler_step

CFG = edm_config()
STATE = kj.set_timesteps(CFG, 6, "karras")


def test_registered_names():
    assert kj.SOLVERS == ("heun", "euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m_sde_heun",
                          "dpmpp_3m_sde")
    for name in kj.SOLVERS:
        solver = kj.get_solver(name)
        assert isinstance(solver, kj.Solver) and solver.name == name
        assert kj.get_solver(solver) is solver
    assert kj.get_solver("heun") == kj.heun()  # equal objects: safe as static arguments


@pytest.mark.parametrize("bad", ["rk4", "", None, 2, kj.heun])
def test_unknown_solvers_are_refused_listing_the_names(bad):
    with pytest.raises(ValueError, match=r"solver must be one of \('heun', 'euler', 'dpmpp_2m', 'euler_"):
        kj.get_solver(bad)


@pytest.mark.parametrize("name", ["heun", "euler", "dpmpp_2m"])
def test_a_name_and_its_solver_object_give_the_same_samples(name):
    keys = keys_for(0, 4)
    by_name = fast_sample(gauss_denoise, keys, STATE, CFG, (3,), solver=name)
    by_object = fast_sample(gauss_denoise, keys, STATE, CFG, (3,), solver=kj.get_solver(name))
    np.testing.assert_array_equal(by_name, by_object)


def _midpoint_step(denoise, x_hat, levels, solver_state, noise):
    """A user's solver: explicit midpoint in sigma (second order), with a step counter as state."""
    denoised = denoise(x_hat, levels.sigma_hat)
    d = steps.slope(x_hat, denoised, levels.inv_sigma_hat)
    sigma_mid = levels.extra  # per-step coefficient from scalars()
    x_mid = steps.euler_update(x_hat, d, sigma_mid - levels.sigma_hat)
    d_mid = steps.slope(x_mid, denoise(x_mid, sigma_mid), 1.0 / sigma_mid)
    return steps.euler_update(x_hat, d_mid, levels.h), denoised, solver_state + 1


MIDPOINT = kj.Solver(
    name="midpoint", order=2, evaluations=lambda n: 2 * n - 1, step=_midpoint_step,
    init=lambda x0: jnp.zeros((), jnp.int32),
    scalars=lambda levels: jnp.sqrt(levels.sigma_hat * jnp.maximum(levels.sigma_next, 1e-30)),
)


def test_a_solver_defined_outside_the_package_plugs_in_everywhere():
    cfg = edm_config(s_churn=0.0)
    errors = []
    for n in (16, 32, 64):
        state = kj.set_timesteps(cfg, n, "karras")
        keys = keys_for(1, 8)
        x0 = kj.initial_noise(keys, state, (3,))
        exact = np.asarray(GAUSS.ode_solution(np.asarray(x0, np.float64), float(state.sigmas[0])))
        out = kj.sample(gauss_denoise, keys, state, cfg, (3,), solver=MIDPOINT, x_init=x0)
        errors.append(np.abs(np.asarray(out, np.float64) - exact).max())
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors  # second order

    sampler = kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s), STATE, CFG, (3,), solver=MIDPOINT)
    assert sampler(None, keys_for(2, 4)).shape == (4, 3)
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    sharded = kj.make_sharded_sampler(lambda p, x, s, c: gauss_denoise(x, s), STATE, CFG, (3,), mesh,
                                      solver=MIDPOINT)
    np.testing.assert_allclose(sharded(None, keys_for(2, 4)), sampler(None, keys_for(2, 4)), rtol=1e-6)


def test_solver_state_is_carried_through_the_loop():
    seen = []

    def step(denoise, x_hat, levels, count, noise):
        jax.debug.callback(lambda c: seen.append(int(c)), count)
        return (*euler_step(denoise, x_hat, levels, None)[:2], count + 1)

    counter = kj.Solver(name="counter", order=1, evaluations=lambda n: n, step=step,
                        init=lambda x0: jnp.zeros((), jnp.int32))
    jax.block_until_ready(kj.sample(gauss_denoise, keys_for(0, 2), STATE, CFG, (3,), solver=counter))
    assert seen == [0, 1, 2, 3, 4]  # N - 1 loop steps; the last step is Euler


@pytest.mark.parametrize("name, evaluations", [("heun", 11), ("euler", 6), ("dpmpp_2m", 6)])
def test_network_evaluations_match_the_solver_count(name, evaluations):
    calls = []

    def counting(x, sigma, cond):
        jax.debug.callback(lambda: calls.append(1))
        return gauss_denoise(x, sigma)

    jax.block_until_ready(kj.sample(counting, keys_for(0, 2), STATE, CFG, (3,), solver=name))
    assert len(calls) == evaluations == kj.get_solver(name).evaluations(6)


def test_get_solver_takes_a_solvers_options_and_refuses_others():
    assert kj.get_solver("euler_ancestral", eta=0.25) == kj.euler_ancestral(eta=0.25)
    assert kj.get_solver("dpmpp_2m_sde_heun", eta=0.5) == kj.dpmpp_2m_sde(eta=0.5, solver_type="heun")
    for name, options in (("heun", {"eta": 0.5}), ("dpmpp_2m_sde_heun", {"solver_type": "midpoint"})):
        with pytest.raises(ValueError, match=f"solver {name!r} takes no option"):
            kj.get_solver(name, **options)
    with pytest.raises(ValueError, match="apply to a solver's name"):
        kj.get_solver(kj.heun(), eta=0.5)
    assert set(kj.takes_eta()) == {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
