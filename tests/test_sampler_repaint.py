"""RePaint's resampling (``jump=(L, n)``): a float64 transcription of RePaint's jump schedule
with Euler, the evaluation count, n = 1 as no jump (bitwise), the known region exact and the
data's marginals kept, batch invariance, one program whatever n, and the argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import gamma
from sampler_utils import MIX, edm_config, keys_for, mix_denoise, numpy_mixture_denoiser
from sampler_utils import PAINT_CFG as CFG
from sampler_utils import PAINT_KNOWN as KNOWN
from sampler_utils import PAINT_MASK as MASK
from sampler_utils import paint_denoise as denoise

import karras_jax as kj
from karras_jax.solvers._shared import history
from karras_jax.solvers.base import levels_of
from karras_jax.solvers.restart import jump_points, jump_table


def repaint_times(steps, length, count):
    """RePaint's jump schedule (``get_schedule_jump`` of the paper's runs), from its description.

    Times count down from ``steps - 1`` to -1 (the finished sample); on reaching each
    t in 0, L, 2L, ... below ``steps - L`` the schedule climbs back L times one step up,
    count - 1 times over (each return to t may climb again until its budget is spent).
    """
    budget = {t: count - 1 for t in range(0, steps - length, length)}
    t, times = steps, []
    while t > 0:
        t -= 1
        times.append(t)
        if budget.get(t, 0):
            budget[t] -= 1
            times.extend(range(t + 1, t + length + 1))
            t += length
    return times + [-1]


def transcription(keys, state, length, count, mask, known, start=0, image=None, cfg=CFG):
    """Euler over RePaint's schedule in float64, with the documented noise streams.

    Time t is the level N - 1 - t (t = -1: sigma_N = 0); a run from step k is RePaint with
    N - k steps. Going up, the L single steps are taken as one forward draw (the same law):
    the churn normals of the row that comes down next. Every step down is one row, with
    Algorithm 2's churn of its level (drawn with a jump's as one normal: the variances add);
    after it the known region, noised to its level with the paint stream at (row + 1), is
    put back.
    """
    sigmas = np.asarray(state.sigmas, np.float64)
    n = len(sigmas) - 1
    denoise64 = numpy_mixture_denoiser(MIX)
    k_churn = [jax.random.split(k)[1] for k in keys]
    k_paint = [jax.random.split(k, 4)[3] for k in keys]
    mask, known = np.asarray(mask, np.float64), np.asarray(known, np.float64)

    def normals(stream, index):
        return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, index), (2,)), np.float64)
                         for k in stream])

    def put_back(x, level, row):
        return mask * (known + sigmas[level] * normals(k_paint, row)) + (1 - mask) * x

    z = np.asarray(kj.initial_noise(keys, state, (2,)), np.float64) / float(state.init_noise_sigma)
    x = sigmas[start] * z + (0.0 if image is None else np.asarray(image, np.float64))
    x, row, left = put_back(x, start, start), start, None
    levels = [n - 1 - t for t in repaint_times(n - start, length, count)]
    assert levels[0] == start
    for a, b in zip(levels[:-1], levels[1:], strict=True):
        if b < a:  # up: one forward draw for the whole climb, made as the next row starts
            left = a if left is None else left
            continue
        hat = sigmas[a] * (1 + gamma(cfg.s_churn, cfg.s_min, cfg.s_max, n, sigmas[a]))
        variance = (hat**2 - sigmas[a] ** 2) * float(np.float32(cfg.s_noise)) ** 2
        if left is not None:
            variance, left = variance + sigmas[a] ** 2 - sigmas[left] ** 2, None
        if variance > 0:
            x = x + np.sqrt(variance) * normals(k_churn, row)
        x = x + (sigmas[b] - hat) * (x - denoise64(x, hat)) / hat
        row += 1
        x = put_back(x, b, row)
    return x, row - start


@pytest.mark.parametrize("n, length, count, start, s_churn", [(12, 3, 3, 0, 0.0), (10, 4, 2, 0, 0.0),
                                                              (9, 8, 3, 0, 0.0), (12, 2, 3, 5, 0.0),
                                                              (12, 3, 3, 0, 10.0)])
def test_the_jumps_are_repaints_schedule_in_float64(n, length, count, start, s_churn):
    cfg = edm_config(s_churn=s_churn)
    state = kj.set_timesteps(cfg, n, "karras")
    keys = keys_for(7, 5)
    mask, known = jnp.asarray([1.0, 0.0]), jnp.asarray([0.8, 0.0])
    image = MIX.sample(jax.random.key(4), 5) if start else None
    kwargs = {"x_init": image, "start_step": start} if start else {}
    got = kj.sample(mix_denoise, keys, state, None, (2,), solver="euler", mask=mask, known=known,
                    jump=(length, count), **kwargs)
    want, rows = transcription(keys, state, length, count, mask, known, start, image, cfg)
    assert rows == n - start + (count - 1) * length * ((n - 1 - start) // length)
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    assert err < 2e-5, err
    plain = kj.sample(mix_denoise, keys, state, None, (2,), solver="euler", mask=mask, known=known, **kwargs)
    assert np.abs(np.asarray(plain) - want).max() > 1e-2  # the jumps changed the samples


@pytest.mark.parametrize("solver", ["heun", "euler", "dpmpp_2m"])
def test_evaluations_count_every_resampled_step(solver):
    calls = []

    def counting(x, sigma, cond):
        jax.debug.callback(lambda: calls.append(1))
        return denoise(x, sigma)

    n, length, count = 11, 3, 4
    state = kj.set_timesteps(CFG, n, "karras")
    jax.block_until_ready(kj.sample(counting, keys_for(0, 2), state, None, (4,), solver=solver, mask=MASK,
                                    known=KNOWN, jump=(length, count)))
    extra = (count - 1) * length * ((n - 1) // length)  # jump points 10, 7, 4: R = 27
    assert extra == 27 and len(calls) == kj.get_solver(solver).evaluations(n + extra)
    if solver == "heun":
        assert len(calls) == 2 * (n + extra) - 1


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "euler_ancestral"])
def test_one_sample_per_jump_is_no_jump_bitwise(solver):
    state = kj.set_timesteps(CFG, 10, "karras")
    keys = keys_for(1, 6)
    want = kj.sample(denoise, keys, state, None, (4,), solver=solver, mask=MASK, known=KNOWN)
    got = kj.sample(denoise, keys, state, None, (4,), solver=solver, mask=MASK, known=KNOWN, jump=(3, 1))
    np.testing.assert_array_equal(got, want)


def test_a_sample_alone_equals_it_in_a_batch():
    state = kj.set_timesteps(CFG, 12, "karras")
    keys = keys_for(2, 48)
    masks = jnp.tile(MASK, (48, 1)).at[5].set(jnp.asarray([0.0, 1.0, 0.0, 0.0]))
    knowns = jnp.tile(KNOWN, (48, 1)).at[5, 1].set(7.0)
    batch = kj.sample(denoise, keys, state, None, (4,), mask=masks, known=knowns, jump=(3, 3))
    for b in (0, 5, 47):
        one = slice(b, b + 1)
        alone = kj.sample(denoise, keys[one], state, None, (4,), mask=masks[one], known=knowns[one],
                          jump=(3, 3))
        np.testing.assert_allclose(alone[0], batch[b], rtol=1e-6, atol=1e-6)
    assert float(batch[5, 1]) == 7.0 and float(batch[0, 0]) == 5.0


def test_a_jump_resets_a_multistep_history_as_a_restart_does():
    """The jump row is a churn (sigma_hat > sigma): first order, and no later row reaches across it."""
    state = kj.set_timesteps(CFG, 8, "karras")
    sigmas = state.sigmas
    table = jump_table(jump_points(8, 0, 3), 3, 2, sigmas[:-1], sigmas[:-1], sigmas[1:], jnp.zeros(8))
    past = history(levels_of(*table[:3]), 2)
    jumps = np.flatnonzero(np.asarray(table[1] > table[0]))  # sigma_hat > sigma: the jump rows
    assert list(jumps) == [4, 10]  # on arriving at level 4 (after base rows 0..3) and at level 7
    for j in jumps:
        assert not past.usable[0][j] and past.usable[0][j + 1] and not past.usable[1][j + 1]
        assert past.usable[1][j + 2]


def test_the_jump_points_and_the_flow_schedule():
    assert jump_points(250, 0, 10) == list(range(19, 250, 10))  # RePaint's paper run: 24 jumps
    assert jump_points(10, 0, 9) == [9] and jump_points(10, 1, 9) == []
    state = kj.set_timesteps(CFG, 8, "flow")  # sigma_0 = inf: no jump returns there (points 7, 4)
    x, path = kj.sample(denoise, keys_for(3, 4), state, None, (4,), mask=MASK, known=KNOWN, jump=(3, 2),
                        return_trajectory=True)
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.asarray(x)[:, 0] == 5.0)
    assert path.samples.shape[0] == path.sigmas.shape[0] == 8 + 6 + 1 and path.denoised.shape[0] == 14
    np.testing.assert_array_equal(path.samples[-1], x)
    levels = np.asarray(path.sigmas)
    assert np.isinf(levels[0]) and np.all(np.isfinite(levels[1:])) and np.sum(np.diff(levels) > 0) == 2


def _program(count):
    state = kj.set_timesteps(CFG, 18, "karras")
    sampler = kj.make_sampler(lambda p, x, s, c: denoise(x, s), state, None, (4,), jump=(3, count))
    return sampler.lower(None, keys_for(0, 4), mask=MASK, known=KNOWN).as_text()


def test_one_program_whatever_the_number_of_resamplings():
    few, many = _program(2), _program(30)
    assert few.count("stablehlo.while") == many.count("stablehlo.while")
    assert abs(len(few) - len(many)) < 0.01 * len(few)  # only the table's sizes differ


@pytest.mark.parametrize("kwargs, error, match", [
    ({"jump": (3, 2)}, ValueError, "needs mask and known"),
    ({"jump": (0, 2), "mask": MASK, "known": KNOWN}, ValueError, "jump_length must be an int >= 1"),
    ({"jump": (8, 2), "mask": MASK, "known": KNOWN}, ValueError, "jump_length must be an int in \\[1, 7\\]"),
    ({"jump": (2, 0), "mask": MASK, "known": KNOWN}, ValueError, "jump_n_sample must be an int >= 1"),
    ({"jump": (2.0, 2), "mask": MASK, "known": KNOWN}, ValueError, "jump_length"),
    ({"jump": (2, True), "mask": MASK, "known": KNOWN}, ValueError, "jump_n_sample"),
    ({"jump": 3, "mask": MASK, "known": KNOWN}, TypeError, "pair"),
    ({"jump": (3, 2), "mask": MASK, "known": KNOWN, "solver": kj.restart(kj.heun(), [(0.1, 1.0, 1, 3)])},
     ValueError, "does not combine with kj.restart"),
])
def test_bad_jumps_are_refused(kwargs, error, match):
    state = kj.set_timesteps(CFG, 8, "karras")
    with pytest.raises(error, match=match):
        kj.sample(denoise, keys_for(0, 2), state, None, (4,), **kwargs)
