"""Restart sampling (Xu et al. 2023): a float64 transcription of the paper's EDM sampler with
restarts, the base solver bitwise when every K = 0, one compiled program whatever the number
of restarts, the evaluation count, and the argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import gamma
from sampler_utils import GAUSS, MIX, edm_config, gauss_denoise, keys_for, mix_denoise, numpy_mixture_denoiser

import karras_jax as kj


def _restart_grid(t_min, t_max, m, rho):
    ramp = np.arange(m) / (m - 1)
    return (t_max ** (1 / rho) + ramp * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho


def transcription(denoise, keys, state, cfg, shape, intervals, rho=7.0):
    """The paper's ``edm_sampler`` with ``restart_info`` (Heun; restart_gamma = 0), in float64.

    Written as the paper's code is: the base Heun loop, and after a base step that lands on
    the grid level nearest t_min, K times: forward noise to t_max, then N_restart - 1 Heun
    steps down Karras' grid to that level. The noise is the contract's, the row index
    counting every step taken (base and restart) in order.
    """
    t = np.asarray(state.sigmas, np.float64)
    n = len(t) - 1
    where = {int(np.argmin(np.abs(t[1:n] - t_min))) + 1: (t_max, k, m) for t_min, t_max, k, m in intervals}
    k_churn = [jax.random.split(k)[1] for k in keys]

    def noise(row):
        return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, row), shape), np.float64)
                         for k in k_churn])

    def heun(x_hat, t_hat, t_next):
        d = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d
        if t_next > 0:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)
        return x_next

    x = np.asarray(kj.initial_noise(keys, state, shape), np.float64)
    s_noise, row = float(np.float32(cfg.s_noise)), 0
    for i in range(n):
        g = gamma(cfg.s_churn, cfg.s_min, cfg.s_max, n, t[i])
        t_hat = t[i] * (1 + g)
        x_hat = x + np.sqrt(t_hat**2 - t[i] ** 2) * s_noise * noise(row) if g > 0 else x
        x, row = heun(x_hat, t_hat, t[i + 1]), row + 1
        if i + 1 in where:
            t_max, k, m = where[i + 1]
            grid = _restart_grid(t[i + 1], t_max, m, rho)
            for _ in range(k):
                x = x + noise(row) * np.sqrt(grid[0] ** 2 - grid[-1] ** 2) * s_noise
                for a, b in zip(grid[:-1], grid[1:], strict=True):
                    x, row = heun(x, a, b), row + 1
    return x


@pytest.mark.parametrize("s_churn", [0.0, 10.0])
def test_restart_equals_the_papers_algorithm_in_float64(s_churn):
    cfg = edm_config(s_churn=s_churn)
    state = kj.set_timesteps(cfg, 18, "karras")
    keys = keys_for(3, 6)
    intervals = [(0.1, 2.0, 2, 4), (1.5, 10.0, 1, 3)]
    got = kj.sample(mix_denoise, keys, state, None, (2,), solver=kj.restart(kj.heun(), intervals))
    want = transcription(numpy_mixture_denoiser(MIX), keys, state, cfg, (2,), intervals)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-5, rtol=1e-5)
    base = kj.sample(mix_denoise, keys, state, None, (2,), solver="heun")
    assert np.abs(np.asarray(base) - want).max() > 1e-2  # the restarts changed the samples


def test_restarts_off_is_the_base_solver_bitwise():
    state = kj.set_timesteps(edm_config(), 12, "karras")
    keys = keys_for(0, 8)
    for base in ("heun", "euler", "dpmpp_2m"):
        want = kj.sample(gauss_denoise, keys, state, None, (3,), solver=base)
        off = kj.restart(kj.get_solver(base), [(0.5, 2.0, 0, 5)])
        assert off.restarts == () and off.evaluations(12) == kj.get_solver(base).evaluations(12)
        np.testing.assert_array_equal(kj.sample(gauss_denoise, keys, state, None, (3,), solver=off), want)


def test_restart_works_over_other_base_solvers_and_samplers():
    state = kj.set_timesteps(edm_config(s_churn=0.0), 16, "karras")
    solver = kj.restart(kj.dpmpp_2m(), [(0.3, 3.0, 2, 4)])
    keys = keys_for(1, 4000)
    direct = np.asarray(kj.sample(gauss_denoise, keys, state, None, (3,), solver=solver), np.float64)
    compiled = kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s), state, None, (3,), solver=solver)
    np.testing.assert_allclose(compiled(None, keys[:8]), direct[:8], rtol=1e-5, atol=1e-5)
    # The restarts re-randomise the path, yet the samples keep the law the base run reaches:
    # the data's mean, and its std up to the base's discretisation error at N = 16 (0.74 for 0.7).
    base = np.asarray(kj.sample(gauss_denoise, keys, state, None, (3,), solver="dpmpp_2m"), np.float64)
    se = float(GAUSS.std) / np.sqrt(len(keys))
    assert np.all(np.abs(direct.mean(0) - np.asarray(GAUSS.mean)) < 5 * se), direct.mean(0)
    np.testing.assert_allclose(direct.std(0), base.std(0), rtol=0.03)
    assert np.abs(direct - base).mean() > 0.1  # and they are other samples


def test_evaluations_count_every_restart_step():
    calls = []

    def counting(x, sigma, cond):
        jax.debug.callback(lambda: calls.append(1))
        return gauss_denoise(x, sigma)

    state = kj.set_timesteps(edm_config(), 10, "karras")
    solver = kj.restart(kj.heun(), [(0.2, 1.0, 3, 4), (2.0, 8.0, 1, 2)])
    assert solver.name == "restart_heun"
    jax.block_until_ready(kj.sample(counting, keys_for(0, 2), state, None, (3,), solver=solver))
    assert len(calls) == solver.evaluations(10) == 2 * (10 + 3 * 3 + 1) - 1


def _program_size(k):
    state = kj.set_timesteps(edm_config(), 18, "karras")
    solver = kj.restart(kj.heun(), [(0.1, 1.0, k, 4), (1.0, 5.0, k, 3)])
    sampler = kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s), state, None, (3,), solver=solver)
    return sampler.lower(None, keys_for(0, 4)).as_text()


def test_one_program_whatever_the_number_of_restarts():
    one, many = _program_size(1), _program_size(40)
    assert one.count("stablehlo.while") == many.count("stablehlo.while")
    assert abs(len(one) - len(many)) < 0.01 * len(one)  # only the table's sizes differ


@pytest.mark.parametrize("intervals, match", [
    ([(0.5, 0.2, 1, 3)], "t_min < t_max"),
    ([(0.0, 1.0, 1, 3)], "t_min < t_max"),
    ([(0.1, float("inf"), 1, 3)], "finite"),
    ([(0.1, 1.0, -1, 3)], "K must be an int >= 0"),
    ([(0.1, 1.0, 1, 1)], "N_restart"),
    ([(0.1, 1.0, 1.5, 3)], "K must be"),
    ([(0.1, 1.0, 1)], "intervals\\[0\\] must be"),
])
def test_bad_intervals_are_refused(intervals, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kj.restart(kj.heun(), intervals)


def test_bad_base_or_rho_is_refused():
    with pytest.raises(TypeError, match="kj.Solver"):
        kj.restart("heun", [(0.1, 1.0, 1, 3)])
    with pytest.raises(ValueError, match="rho"):
        kj.restart(kj.heun(), [(0.1, 1.0, 1, 3)], rho=0.0)


def test_jump_noise_is_the_churn_stream_of_its_row():
    """With a one-step restart grid the jump is the only noise: row 2 of the churn stream."""
    cfg = edm_config(s_churn=0.0, s_noise=1.0)
    state = kj.set_timesteps(cfg, 4, "karras")
    keys = keys_for(2, 3)
    solver = kj.restart(kj.euler(), [(float(state.sigmas[2]), 50.0, 1, 2)])
    _, path = kj.sample(lambda x, s, c: x * 0.0, keys, state, None, (3,), solver=solver,
                        return_trajectory=True)
    # D = 0: Euler from (x_hat, s_hat) to s_next scales x_hat by s_next / s_hat.
    x2 = np.asarray(path.samples[2], np.float64)
    z = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.split(k)[1], 2), (3,)))
                  for k in keys])
    sigma2 = float(state.sigmas[2])
    x_hat = x2 + np.sqrt(50.0**2 - sigma2**2) * z
    np.testing.assert_allclose(np.asarray(path.samples[3]), x_hat * sigma2 / 50.0, rtol=2e-5, atol=1e-5)
    assert jnp.allclose(path.sigmas[3], sigma2)


def test_an_interval_that_snaps_at_or_above_t_max_is_refused_not_run_upward():
    state = kj.set_timesteps(edm_config(s_churn=0.0), 6, "karras")  # 0.6 snaps to sigma = 0.965
    solver = kj.restart(kj.euler(), [(0.6, 0.7, 1, 3)])
    with pytest.raises(ValueError, match="snaps to the grid level 0.965"):
        kj.sample(gauss_denoise, keys_for(0, 2), state, None, (3,), solver=solver)
    with pytest.raises(ValueError, match="snaps to the grid level 0.965"):
        kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s), state, None, (3,), solver=solver)
    # with the levels traced it cannot be refused: the interval's steps then have zero length
    base = jax.jit(lambda k, st: kj.sample(gauss_denoise, k, st, None, (3,), solver="euler"))
    empty = jax.jit(lambda k, st: kj.sample(gauss_denoise, k, st, None, (3,), solver=solver))
    keys = keys_for(0, 4)
    np.testing.assert_allclose(empty(keys, state), base(keys, state), rtol=1e-6, atol=1e-6)


def test_restarting_a_restart_is_refused_and_numpy_scalars_are_taken():
    once = kj.restart(kj.euler(), [(0.5, 2.0, 2, 3)])
    with pytest.raises(ValueError, match="already restarts"):
        kj.restart(once, [(0.1, 1.0, 1, 2)])
    from_numpy = kj.restart(kj.euler(), [(np.float32(0.5), np.float64(2.0), np.int64(2), np.int32(3))],
                            rho=np.float32(7.0))
    assert from_numpy.restarts == ((float(np.float32(0.5)), 2.0, 2, 3, 7.0),)
