"""The sampler's noise draws are exactly jax.random's, however they are computed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj
from karras_jax import _compiled as compiled_module
from karras_jax._noise import fast_keys, normal_per_key
from karras_jax.analytic import GaussianData

KEYS = jax.random.split(jax.random.key(11), 5)


def _reference(keys, shape, dtype, step=None):
    keys = keys if step is None else [jax.random.fold_in(k, step) for k in keys]
    return np.stack([np.asarray(jax.random.normal(k, shape, dtype)) for k in keys])


@pytest.mark.parametrize("shape", [(), (1,), (2,), (3, 5), (4, 4, 3), (1000,)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_unrolled_threefry_draws_are_bitwise_jax_random_normal(shape, dtype):
    fast = jax.jit(lambda k: normal_per_key(fast_keys(k, shape), shape, dtype))(KEYS)
    np.testing.assert_array_equal(np.asarray(fast), _reference(KEYS, shape, dtype))


@pytest.mark.parametrize("step", [0, 1, 17, 2**31 - 1])
def test_unrolled_fold_in_is_bitwise_jax_random_fold_in(step):
    shape = (3, 2)
    fast = jax.jit(lambda k: normal_per_key(
        jax.vmap(jax.random.fold_in, in_axes=(0, None))(fast_keys(k, shape), step), shape,
        jnp.float32))(KEYS)
    np.testing.assert_array_equal(np.asarray(fast), _reference(KEYS, shape, jnp.float32, step))


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg", "philox4x32"])
def test_other_key_implementations_draw_per_key(impl):
    # Under vmap JAX draws a batch of rbg keys from the first key alone; per-key draws keep
    # every sample a function of its own key.
    keys = jax.random.split(jax.random.key(3, impl=impl), 4)
    fast = normal_per_key(fast_keys(keys, (6,)), (6,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(fast), _reference(keys, (6,), jnp.float32))


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg", "philox4x32"])
def test_sample_with_other_key_implementations_depends_only_on_its_own_key(impl):
    data = GaussianData(mean=jnp.float32(0.5), std=jnp.float32(0.3))
    cfg = kj.KarrasVeConfig(s_churn=40.0)
    state = kj.set_timesteps(cfg, 6)
    keys = jax.random.split(jax.random.key(5, impl=impl), 8)
    run = jax.jit(lambda k: kj.sample(data.denoise, k, state, cfg, (4,)))
    batch = run(keys)
    for b in (0, 5):
        np.testing.assert_allclose(run(keys[b:b + 1])[0], batch[b], rtol=1e-6, atol=1e-6)
    # ... and follows the contract's split / fold_in / normal for its key exactly.
    k_init, _ = jax.random.split(keys[3])
    x0 = kj.initial_noise(keys, state, (4,))[3]
    np.testing.assert_allclose(x0, state.init_noise_sigma * jax.random.normal(k_init, (4,)),
                               rtol=1e-6)


@pytest.mark.parametrize("threshold", [{"cpu": 1, "accelerator": 1}, {"cpu": 10**9, "accelerator": 10**9}])
def test_fused_and_skipping_churn_forms_give_the_same_samples(monkeypatch, threshold):
    # Large samples skip idle churn draws (lax.cond); small ones always draw and add std = 0
    # in one fused pass. Both forms must agree, with churn active at some steps and idle at others.
    data = GaussianData(mean=jnp.float32(0.5), std=jnp.float32(0.3))
    cfg = kj.KarrasVeConfig(s_churn=20.0, s_min=0.1, s_max=10.0)
    state = kj.set_timesteps(cfg, 9)
    keys = jax.random.split(jax.random.key(2), 4)
    reference = kj.sample(data.denoise, keys, state, cfg, (3,))
    monkeypatch.setattr(compiled_module, "SKIP_IDLE_DRAW_FROM", threshold)
    got = kj.sample(data.denoise, keys, state, cfg, (3,))
    jaxpr = str(jax.make_jaxpr(lambda k: kj.sample(data.denoise, k, state, cfg, (3,)))(keys))
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)
    skipping = threshold["cpu"] == 1
    assert ("cond[" in jaxpr) == skipping  # the fused form has no branch in the loop


def test_step_noise_is_the_documented_third_stream():
    keys = jax.random.split(jax.random.key(4), 3)
    for step, draw in ((0, 0), (7, 0), (7, 2)):
        want = np.stack([np.asarray(jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(jax.random.split(k, 3)[2], step), draw), (2, 3)))
            for k in keys])
        np.testing.assert_array_equal(kj.step_noise(keys, step, (2, 3), draw), want)
    traced = jax.jit(lambda i: kj.step_noise(keys, i, (2, 3)))(7)
    np.testing.assert_array_equal(traced, kj.step_noise(keys, 7, (2, 3)))


@pytest.mark.parametrize("step, draw", [(1.5, 0), (True, 0), (-1, 0), (2**32, 0), (None, 0), (0, -1),
                                        (0, 1.0), (0, False)])
def test_step_noise_refuses_a_step_or_draw_out_of_range(step, draw):
    keys = jax.random.split(jax.random.key(4), 3)
    with pytest.raises(ValueError, match="step|draw"):
        kj.step_noise(keys, step, (2,), draw)
