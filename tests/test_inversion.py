"""karras_jax.inversion.invert: round trips through kj.sample, the exact Gaussian map, a float64
reference of the reversed loop, jit/vmap, and the refusals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj
from karras_jax.analytic import GaussianData, default_mixture
from karras_jax.inversion import INVERTIBLE_SOLVERS, invert

CFG = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
MIXTURE = default_mixture()
GAUSS = GaussianData(mean=jnp.asarray([0.3, -0.2]), std=jnp.asarray(0.5))


@jax.jit
def _round_trip(x, state):
    """(latent, sample(latent)) with Heun, s_churn = 0, on the mixture."""
    latent = invert(MIXTURE.denoise, x, state)
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    return latent, kj.sample(MIXTURE.denoise, keys, state, None, (2,), x_init=latent)


@functools.partial(jax.jit, static_argnames=("solver", "iterations"))
def _invert_gauss(x, state, solver="heun", iterations=3):
    return invert(GAUSS.denoise, x, state, solver=solver, iterations=iterations)


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module")
def mixture_errors():
    x = MIXTURE.sample(jax.random.key(3), 256)
    return {n: _relative(_round_trip(x, kj.set_timesteps(CFG, n, "karras"))[1], x) for n in (16, 32, 64)}


def test_round_trip_on_the_mixture_to_1e_3_at_64_steps(mixture_errors):
    assert mixture_errors[64] < 1e-3


def test_round_trip_error_falls_at_second_order(mixture_errors):
    assert mixture_errors[16] / mixture_errors[32] > 3
    assert mixture_errors[32] / mixture_errors[64] > 3


def test_latent_is_the_exact_ode_map_on_gaussian_data():
    x = GAUSS.sample(jax.random.key(1), 64, 2)
    errors = []
    for n in (16, 32, 64):
        state = kj.set_timesteps(CFG, n, "karras")
        sigma_0 = state.sigmas[0]
        # ode_solution maps sigma_0 to 0 by x -> mu + (x - mu) s / sqrt(s^2 + sigma_0^2): invert it
        exact = GAUSS.mean + (x - GAUSS.mean) * jnp.sqrt(GAUSS.std**2 + sigma_0**2) / GAUSS.std
        np.testing.assert_allclose(GAUSS.ode_solution(exact, sigma_0), x, atol=1e-4)
        errors.append(_relative(_invert_gauss(x, state), exact))
    assert errors[2] < 1e-2
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3


def _reference(x, sigmas, mean, std, solver, iterations):
    """The inversion written out in float64 NumPy on Gaussian data: fixed point, then steps up."""
    def denoise(y, sigma):
        return (std**2 * y + sigma**2 * mean) / (std**2 + sigma**2)

    n = len(sigmas) - 1
    y = x.copy()
    for _ in range(iterations):
        y = y + (x - denoise(y, sigmas[n - 1]))
    for i in range(n - 2, -1, -1):
        low, high = sigmas[i + 1], sigmas[i]
        d = (y - denoise(y, low)) / low
        euler = y + (high - low) * d
        if solver == "euler":
            y = euler
        else:
            y = y + (high - low) * (d + (euler - denoise(euler, high)) / high) / 2
    return y


@pytest.mark.parametrize("solver", INVERTIBLE_SOLVERS)
@pytest.mark.parametrize("iterations", [0, 3])
def test_matches_a_float64_reference_of_the_reversed_loop(solver, iterations):
    state = kj.set_timesteps(CFG, 5, "karras")
    x = GAUSS.sample(jax.random.key(2), 8, 2)
    got = _invert_gauss(x, state, solver, iterations)
    want = _reference(np.asarray(x, np.float64), np.asarray(state.sigmas, np.float64),
                      np.asarray(GAUSS.mean, np.float64), float(GAUSS.std), solver, iterations)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_last_level_solves_the_euler_step_to_zero():
    # One step: the sampler returns D(x_0; sigma_0), so the latent must solve D(y; sigma_0) = x.
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.002, sigma_max=0.01, s_churn=0.0), 1, "karras")
    x = MIXTURE.sample(jax.random.key(4), 64)
    latent = invert(MIXTURE.denoise, x, state)
    np.testing.assert_allclose(MIXTURE.denoise(latent, state.sigmas[0]), x, atol=2e-6)
    assert float(jnp.max(jnp.abs(latent - x))) > 1e-4  # the level's shift is really undone
    np.testing.assert_array_equal(invert(MIXTURE.denoise, x, state, iterations=0), x)


def test_euler_round_trip_converges():
    x = GAUSS.sample(jax.random.key(5), 32, 2)
    keys = jax.random.split(jax.random.key(0), 32)
    errors = []
    trip = jax.jit(lambda x, state: kj.sample(GAUSS.denoise, keys, state, None, (2,), solver="euler",
                                              x_init=_invert_gauss(x, state, "euler")))
    for n in (16, 64):
        errors.append(_relative(trip(x, kj.set_timesteps(CFG, n, "karras")), x))
    assert errors[1] < 0.1 and errors[0] / errors[1] > 2.5  # first order: 4 at N -> 4N


def test_flow_schedule_returns_the_unit_noise():
    state = kj.set_timesteps(CFG, 64, "flow")
    x = GAUSS.sample(jax.random.key(6), 64, 2)
    latent = invert(GAUSS.denoise, x, state)  # x_0 / sigma_0 -> (x - mu) / s as sigma_0 -> inf
    assert _relative(latent, (x - GAUSS.mean) / GAUSS.std) < 1e-2
    keys = jax.random.split(jax.random.key(0), 64)
    back = kj.sample(GAUSS.denoise, keys, state, None, (2,), x_init=latent)
    assert _relative(back, x) < 1e-3
    with pytest.raises(ValueError, match="at least 2 steps on the flow schedule"):
        invert(GAUSS.denoise, x, kj.set_timesteps(CFG, 1, "flow"))


def test_jit_vmap_and_a_traced_state_agree_with_the_eager_call():
    state = kj.set_timesteps(CFG, 8, "karras")
    x = MIXTURE.sample(jax.random.key(7), 12)
    eager = invert(MIXTURE.denoise, x, state)  # the rows are independent: vmap over 3 batches of 4
    jitted = jax.jit(lambda x, state: jax.vmap(lambda row: invert(MIXTURE.denoise, row, state))(x))
    np.testing.assert_allclose(jitted(x.reshape(3, 4, 2), state).reshape(12, 2), eager, rtol=1e-5, atol=1e-5)
    # a traced s_churn cannot be checked: it passes (and the inversion ignores it)
    traced = jax.jit(lambda x, state: invert(MIXTURE.denoise, x, state))(x, state.replace(
        config=CFG.replace(s_churn=jnp.asarray(0.0))))
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-5)


def test_network_gets_dtype_and_cond_and_the_latent_is_float32():
    seen = []

    def network(x, sigma, cond):  # a bfloat16 network: computes in float32, answers in bfloat16
        seen.append((x.dtype, cond.shape))
        return (GAUSS.denoise(x.astype(jnp.float32), sigma) + 0 * cond[:, None]).astype(x.dtype)

    def rounded(x, sigma, cond):  # the same in float32, rounding its input and output as above
        round_trip = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
        return round_trip(GAUSS.denoise(round_trip(x), sigma))

    state = kj.set_timesteps(CFG, 4, "karras")
    x = GAUSS.sample(jax.random.key(8), 4, 2)
    latent = invert(network, x, state, cond=jnp.arange(4.0), dtype=jnp.bfloat16)
    assert latent.dtype == jnp.float32 and latent.shape == x.shape
    assert seen and all(dtype == jnp.bfloat16 and shape == (4,) for dtype, shape in seen)
    np.testing.assert_allclose(latent, invert(rounded, x, state), rtol=1e-6)


def test_churn_outside_every_level_is_accepted():
    config = CFG.replace(s_churn=40.0, s_min=100.0, s_max=200.0)
    state = kj.set_timesteps(config, 4, "karras")
    x = GAUSS.sample(jax.random.key(9), 4, 2)
    np.testing.assert_array_equal(invert(GAUSS.denoise, x, state),
                                  invert(GAUSS.denoise, x, state, CFG))


STATE = kj.set_timesteps(CFG, 4, "karras")
X = jnp.ones((2, 3))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(state=kj.set_timesteps(kj.KarrasVeConfig(0.002, 80.0), 4, "karras")), ValueError, "s_churn=80"),
    (dict(config=CFG.replace(s_churn=1.0)), ValueError, "churns"),
    (dict(config=CFG.replace(sigma_max=10.0)), ValueError, "sigma_max"),
    (dict(solver="dpmpp_2m"), ValueError, "'heun', 'euler'"),
    (dict(solver="euler_ancestral"), ValueError, "stochastic"),
    (dict(solver=kj.restart(kj.heun(), [(0.06, 0.30, 2, 3)])), ValueError, "Restart"),
    (dict(solver="nope"), ValueError, "nope"),
    (dict(x=jnp.asarray(1.0)), ValueError, "x must have shape"),
    (dict(x=jnp.ones((0, 3))), ValueError, "x must have shape"),
    (dict(x=jnp.ones((2, 3), bool)), ValueError, "x must hold real numbers"),
    (dict(x=X.at[1, 2].set(jnp.nan)), ValueError, "x must be finite"),
    (dict(cond=jnp.ones(3)), ValueError, "leading dimension B=2"),
    (dict(iterations=-1), ValueError, "iterations"),
    (dict(dtype=jnp.int32), TypeError, "dtype"),
    (dict(state=object()), TypeError, "KarrasVeState"),
    (dict(denoise_fn=lambda x, sigma: x), TypeError, "denoise_fn"),
    (dict(denoise_fn=lambda x, sigma, cond: x[:1]), ValueError, "shaped like its input"),
])
def test_refusals(kwargs, error, match):
    call = dict(denoise_fn=lambda x, sigma, cond: x, x=X, state=STATE, config=None, solver="heun")
    call.update(kwargs)
    extra = {key: call.pop(key) for key in ("cond", "dtype", "iterations") if key in call}
    with pytest.raises(error, match=match):
        invert(call["denoise_fn"], call["x"], call["state"], call["config"], call["solver"], **extra)
