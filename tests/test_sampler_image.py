"""Image-to-image (SDEdit): ``start_step``/``strength`` noise a clean image to sigma_k with the
key's start normals and run steps k .. N-1, the same as the full sampler started from that
noised state; the streams keep their global step index; strength 0 and 1 are the ends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import MIX, edm_config, keys_for, mix_denoise

import karras_jax as kj

CFG = edm_config(s_churn=0.0)
STATE = kj.set_timesteps(CFG, 12, "karras")
IMAGE = MIX.sample(jax.random.key(7), 16)


def start_normals(keys, shape):
    """The contract's start normals: normal(split(k_b)[0], shape)."""
    return jnp.stack([jax.random.normal(jax.random.split(k)[0], shape) for k in keys])


@pytest.mark.parametrize("solver", ["heun", "euler", "dpmpp_2m"])
@pytest.mark.parametrize("k", [1, 5, 11])
def test_start_step_is_the_full_sampler_from_the_noised_image(solver, k):
    keys = keys_for(1, 16)
    got = kj.sample(mix_denoise, keys, STATE, None, (2,), solver=solver, x_init=IMAGE, start_step=k)
    noised = IMAGE + STATE.sigmas[k] * start_normals(keys, (2,))
    rest = kj.set_timesteps(CFG, sigmas=np.asarray(STATE.sigmas[k:-1]))  # levels sigma_k .. sigma_{N-1}
    want = kj.sample(mix_denoise, keys, rest, None, (2,), solver=solver, x_init=noised)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_strength_ends_and_its_step():
    keys = keys_for(2, 16)
    np.testing.assert_array_equal(kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, strength=0.0),
                                  IMAGE)
    np.testing.assert_array_equal(kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, strength=1.0),
                                  kj.sample(mix_denoise, keys, STATE, None, (2,)))
    for strength, k in ((0.5, 6), (0.3, 9), (0.99, 1)):  # k = N - int(strength N), diffusers' rule
        np.testing.assert_array_equal(
            kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, strength=strength),
            kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, start_step=k))
    out, path = kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, start_step=12,
                          return_trajectory=True)
    np.testing.assert_array_equal(out, IMAGE)
    assert path.samples.shape == (1, 16, 2) and path.sigmas.tolist() == [0.0]


def test_a_weak_edit_stays_near_the_image_and_a_strong_one_forgets_it():
    keys = keys_for(3, 16)
    near = kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, strength=0.2)
    far = kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE, strength=0.9)
    assert np.abs(near - IMAGE).mean() < 0.5 * np.abs(far - IMAGE).mean()


def _noise_echo():
    """A stochastic solver whose step returns its own noise: the trajectory shows which draws it got."""
    def step(denoise, x_hat, levels, solver_state, noise):
        return noise(0), denoise(x_hat, levels.sigma_hat), solver_state

    return kj.Solver(name="echo", order=1, evaluations=lambda n: n, step=step, stochastic=True)


def test_the_noise_streams_keep_their_global_step_index():
    keys = keys_for(4, 3)
    _, path = kj.sample(mix_denoise, keys, STATE, None, (2,), solver=_noise_echo(), x_init=IMAGE[:3],
                        start_step=5, return_trajectory=True)
    for j in range(STATE.num_inference_steps - 5 - 1):  # the last step is Euler, no draw
        np.testing.assert_array_equal(path.samples[j + 1], kj.step_noise(keys, 5 + j, (2,)))
    assert path.sigmas.shape == (8,) and float(path.sigmas[0]) == float(STATE.sigmas[5])


def test_compiled_and_sharded_samplers_take_it():
    keys = keys_for(5, 8)
    want = kj.sample(mix_denoise, keys, STATE, None, (2,), x_init=IMAGE[:8], strength=0.5)
    apply_fn = lambda p, x, s, c: mix_denoise(x, s)  # noqa: E731
    compiled = kj.make_sampler(apply_fn, STATE, None, (2,), strength=0.5)
    np.testing.assert_allclose(compiled(None, keys, None, IMAGE[:8]), want, rtol=1e-6, atol=1e-6)
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    sharded = kj.make_sharded_sampler(apply_fn, STATE, None, (2,), mesh, strength=0.5)
    np.testing.assert_allclose(sharded(None, keys, None, IMAGE[:8]), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="strength needs x_init"):
        compiled(None, keys)


@pytest.mark.parametrize("kwargs, match", [
    ({"start_step": 0}, "start_step=0 would ignore the image"),
    ({"start_step": -2}, "start_step must be an int >= 1"),
    ({"start_step": 2.0}, "start_step must be an int >= 1"),
    ({"start_step": True}, "start_step must be an int >= 1"),
    ({"start_step": 13}, "at most num_inference_steps=12"),
    ({"strength": 1.5}, "strength must be a number in \\[0, 1\\]"),
    ({"strength": -0.1}, "strength must be a number in \\[0, 1\\]"),
    ({"strength": 0.5, "start_step": 3}, "not both"),
])
def test_bad_image_to_image_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kj.sample(mix_denoise, keys_for(0, 16), STATE, None, (2,), x_init=IMAGE, **kwargs)


def test_it_needs_the_image_and_no_restarts():
    with pytest.raises(ValueError, match="start_step needs x_init"):
        kj.sample(mix_denoise, keys_for(0, 16), STATE, None, (2,), start_step=3)
    with pytest.raises(ValueError, match="does not combine with kj.restart"):
        kj.sample(mix_denoise, keys_for(0, 16), STATE, None, (2,), x_init=IMAGE, start_step=3,
                  solver=kj.restart(kj.heun(), [(0.5, 2.0, 1, 3)]))
