"""Inpainting (``mask``/``known``): the known values exactly where mask is 1, the rest with the
data's conditional law (independent coordinates: its marginals), the known region noised from
its own stream at every level, one sample independent of its batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import PAINT_CFG as CFG
from sampler_utils import PAINT_DATA as DATA
from sampler_utils import PAINT_KNOWN as KNOWN
from sampler_utils import PAINT_MASK as MASK
from sampler_utils import check_paint_marginals, keys_for
from sampler_utils import paint_denoise as denoise

import karras_jax as kj


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
@pytest.mark.parametrize("steps, jump", [(64, None), (32, (4, 3))])  # with RePaint's resampling too
def test_known_values_exactly_and_the_unknown_with_the_datas_marginals(solver, steps, jump):
    state = kj.set_timesteps(CFG, steps, "karras")
    x = kj.sample(denoise, keys_for(0, 4096), state, None, (4,), solver=solver, mask=MASK, known=KNOWN,
                  jump=jump)
    check_paint_marginals(x, 4096, steps)


def test_the_known_region_is_noised_from_its_own_stream_at_every_level():
    state = kj.set_timesteps(CFG, 6, "karras")
    keys = keys_for(1, 3)
    _, path = kj.sample(lambda x, s, c: x * 0.0, keys, state, None, (4,), solver="euler", mask=MASK,
                        known=KNOWN, return_trajectory=True)
    k_paint = [jax.random.split(k, 4)[3] for k in keys]
    for j in range(7):
        eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, j), (4,))) for k in k_paint])
        want = np.asarray(KNOWN) + float(state.sigmas[j]) * eps
        np.testing.assert_allclose(np.asarray(path.samples[j])[:, [0, 2]], want[:, [0, 2]], rtol=1e-6,
                                   atol=1e-6 * float(state.sigmas[j]))


def test_a_sample_alone_equals_it_in_a_batch_and_a_per_sample_mask_works():
    state = kj.set_timesteps(CFG, 12, "karras")
    keys = keys_for(2, 64)
    masks = jnp.tile(MASK, (64, 1)).at[5].set(jnp.asarray([0.0, 1.0, 0.0, 0.0]))
    knowns = jnp.tile(KNOWN, (64, 1)).at[5, 1].set(7.0)
    batch = kj.sample(denoise, keys, state, None, (4,), mask=masks, known=knowns)
    for b in (0, 5, 63):
        one = slice(b, b + 1)
        alone = kj.sample(denoise, keys[one], state, None, (4,), mask=masks[one], known=knowns[one])
        np.testing.assert_allclose(alone[0], batch[b], rtol=1e-6, atol=1e-6)
    assert float(batch[5, 1]) == 7.0 and float(batch[0, 0]) == 5.0


def test_it_composes_with_image_to_image_and_jit():
    state = kj.set_timesteps(CFG, 12, "karras")
    keys = keys_for(3, 8)
    image = DATA.sample(jax.random.key(9), 8, 4)
    run = jax.jit(lambda k, m, kn, im: kj.sample(denoise, k, state, None, (4,), mask=m, known=kn, x_init=im,
                                                  start_step=4))
    x = run(keys, MASK, KNOWN, image)
    assert np.all(np.asarray(x)[:, 0] == 5.0) and np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("kwargs, match", [
    ({"mask": MASK}, "needs both mask and known"),
    ({"known": KNOWN}, "needs both mask and known"),
    ({"mask": jnp.ones((3,)), "known": KNOWN}, "mask must broadcast"),
    ({"mask": MASK, "known": jnp.ones((5, 4))}, "known must broadcast"),
    ({"mask": MASK * 2.0, "known": KNOWN}, "weights in \\[0, 1\\]"),
    ({"mask": MASK, "known": KNOWN.at[0].set(jnp.nan)}, "known"),
])
def test_bad_inpainting_arguments_are_refused(kwargs, match):
    state = kj.set_timesteps(CFG, 4, "karras")
    with pytest.raises(ValueError, match=match):
        kj.sample(denoise, keys_for(0, 2), state, None, (4,), **kwargs)


def test_make_sampler_takes_mask_and_known_per_call_bitwise_as_sample_and_without_retracing():
    state = kj.set_timesteps(CFG, 10, "karras")
    keys = keys_for(4, 6)
    sampler = kj.make_sampler(lambda p, x, s, c: denoise(x, s), state, None, (4,))
    got = sampler(None, keys, mask=MASK, known=KNOWN)
    # the same program as kj.sample compiled (eager kj.sample differs by FMA round-off: docs/noise.md)
    compiled = jax.jit(lambda k, m, kn: kj.sample(denoise, k, state, None, (4,), mask=m, known=kn))
    np.testing.assert_array_equal(got, compiled(keys, MASK, KNOWN))
    np.testing.assert_allclose(got, kj.sample(denoise, keys, state, None, (4,), mask=MASK, known=KNOWN),
                               rtol=1e-6, atol=1e-6)
    other = sampler(None, keys, mask=1.0 - MASK, known=KNOWN + 1.0)  # new values: the same program
    assert sampler.jitted._cache_size() == 1
    assert np.all(np.asarray(other)[:, 1] == 1.0) and np.all(np.asarray(other)[:, 3] == 1.0)
    per_sample = sampler(None, keys, mask=jnp.tile(MASK, (6, 1)), known=jnp.tile(KNOWN, (6, 1)))
    np.testing.assert_array_equal(per_sample, got)  # (B, *sample_shape): a new shape, the same samples
    plain = sampler(None, keys)  # no mask: the program a sampler without inpainting runs
    np.testing.assert_array_equal(plain, jax.jit(lambda k: kj.sample(denoise, k, state, None, (4,)))(keys))
    jumping = kj.make_sampler(lambda p, x, s, c: denoise(x, s), state, None, (4,), jump=(3, 2))
    want = jax.jit(lambda k, m, kn: kj.sample(denoise, k, state, None, (4,), mask=m, known=kn, jump=(3, 2)))
    # (its levels are traced there, constants here: the jump's std may be folded differently)
    np.testing.assert_allclose(jumping(None, keys, mask=MASK, known=KNOWN), want(keys, MASK, KNOWN),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs mask and known"):
        jumping(None, keys)
    with pytest.raises(ValueError, match="mask must broadcast"):
        sampler(None, keys, mask=jnp.ones((3,)), known=KNOWN)
