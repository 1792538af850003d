"""Bad input to kj.sample / make_sampler / initial_noise: a ValueError or TypeError at call or
trace time whose message names the parameter, never a NaN or a bare assert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import GAUSS, edm_config, gauss_denoise, keys_for

import karras_jax as kj

CFG = edm_config()
STATE = kj.set_timesteps(CFG, 3, "karras")
KEYS = keys_for(0, 4)


def _sample(**overrides):
    args = dict(denoise_fn=gauss_denoise, keys=KEYS, state=STATE, config=CFG, sample_shape=(3,))
    args.update(overrides)
    return kj.sample(**args)


BAD_KEYS = [
    pytest.param(jax.random.key(0), ValueError, id="single-typed-key"),
    pytest.param(jax.random.PRNGKey(0), ValueError, id="single-raw-key"),
    pytest.param(jax.random.split(jax.random.key(0), (2, 3)), ValueError, id="2d-typed-keys"),
    pytest.param(jnp.zeros((4, 3), jnp.uint32), ValueError, id="raw-keys-wrong-width"),
    pytest.param(jnp.zeros((2, 4, 2), jnp.uint32), ValueError, id="3d-raw-keys"),
    pytest.param(jnp.arange(4), TypeError, id="int-array"),
    pytest.param(jnp.zeros((4, 2), jnp.int32), TypeError, id="int32-pairs"),
    pytest.param(jnp.zeros((4, 2)), TypeError, id="float-array"),
    pytest.param([0, 1, 2, 3], TypeError, id="list"),
    pytest.param(0, TypeError, id="int"),
]


@pytest.mark.parametrize(("keys", "error"), BAD_KEYS)
def test_bad_keys(keys, error):
    with pytest.raises(error, match="keys"):
        _sample(keys=keys)
    with pytest.raises(error, match="keys"):
        kj.initial_noise(keys, STATE, (3,))
    sampler = kj.make_sampler(lambda p, x, s, c: GAUSS.denoise(x, s), STATE, CFG, (3,))
    with pytest.raises(error, match="keys"):
        sampler(None, keys)


BAD_SHAPES = [
    pytest.param([3], id="list"),
    pytest.param(3, id="int"),
    pytest.param((0,), id="zero"),
    pytest.param((2, 0), id="zero-inner"),
    pytest.param((-1,), id="negative"),
    pytest.param((3.0,), id="float"),
    pytest.param((True,), id="bool"),
    pytest.param(("3",), id="string"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("shape", BAD_SHAPES)
def test_bad_sample_shape(shape):
    with pytest.raises((ValueError, TypeError), match="sample_shape"):
        _sample(sample_shape=shape)
    with pytest.raises((ValueError, TypeError), match="sample_shape"):
        kj.initial_noise(KEYS, STATE, shape)
    with pytest.raises((ValueError, TypeError), match="sample_shape"):
        kj.make_sampler(lambda p, x, s, c: x, STATE, CFG, shape)
    mesh = jax.make_mesh((8,), ("data",))
    with pytest.raises((ValueError, TypeError), match="sample_shape"):
        kj.make_sharded_sampler(lambda p, x, s, c: x, STATE, CFG, shape, mesh)


def test_numpy_int_sample_shape_is_accepted():
    out = jax.eval_shape(lambda k: kj.sample(gauss_denoise, k, STATE, CFG, (np.int64(3),)),
                         KEYS)
    assert out.shape == (4, 3)


@pytest.mark.parametrize(
    "bad_output",
    [
        pytest.param(lambda x: x[:, :2], id="fewer-features"),
        pytest.param(lambda x: x[0], id="no-batch"),
        pytest.param(lambda x: x[..., None], id="extra-axis"),
        pytest.param(lambda x: jnp.sum(x), id="scalar"),
        pytest.param(lambda x: jnp.concatenate([x, x]), id="twice-the-batch"),
    ],
)
@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_denoiser_output_of_another_shape(bad_output, solver):
    def denoise(x, sigma, cond):
        return bad_output(GAUSS.denoise(x, sigma))

    with pytest.raises(ValueError, match="denoise_fn"):
        _sample(denoise_fn=denoise, solver=solver)
    with pytest.raises(ValueError, match="denoise_fn"):
        jax.jit(lambda k: kj.sample(denoise, k, STATE, CFG, (3,), solver=solver))(KEYS)


def test_denoiser_not_callable():
    with pytest.raises(TypeError, match="denoise_fn"):
        _sample(denoise_fn=GAUSS)


@pytest.mark.parametrize("solver", ["rk4", "Heun", "", None, 2])
def test_unknown_solver(solver):
    with pytest.raises(ValueError, match="solver"):
        _sample(solver=solver)
    with pytest.raises(ValueError, match="solver"):
        kj.make_sampler(lambda p, x, s, c: x, STATE, CFG, (3,), solver=solver)


@pytest.mark.parametrize(
    "cond",
    [
        pytest.param(jnp.zeros((3,)), id="array-short"),
        pytest.param(jnp.zeros((5, 2)), id="array-long"),
        pytest.param(jnp.zeros(()), id="scalar"),
        pytest.param(1.0, id="python-float"),
        pytest.param({"a": jnp.zeros((4,)), "b": jnp.zeros((2, 4))}, id="dict-leaf"),
        pytest.param([jnp.zeros((4, 1)), jnp.zeros((1, 4))], id="list-leaf"),
    ],
)
def test_cond_leading_dimension(cond):
    with pytest.raises(ValueError, match="cond"):
        _sample(cond=cond)
    sampler = kj.make_sampler(lambda p, x, s, c: GAUSS.denoise(x, s), STATE, CFG, (3,))
    with pytest.raises(ValueError, match="cond"):
        sampler(None, KEYS, cond)


def test_cond_message_names_the_leaf():
    with pytest.raises(ValueError, match=r"cond\['b'\]"):
        _sample(cond={"a": jnp.zeros((4,)), "b": jnp.zeros((2, 4))})


def test_good_cond_passes_through():
    seen = []

    def denoise(x, sigma, cond):
        seen.append(jax.tree_util.tree_map(jnp.shape, cond))
        return GAUSS.denoise(x, sigma) + 0 * cond["scale"][:, None]

    # Values: see test_sampler_sharding.py::test_sample_depends_on_its_own_cond_only.
    cond = {"scale": jnp.ones((4,)), "label": jnp.arange(4)}
    jax.eval_shape(lambda k, c: kj.sample(denoise, k, STATE, CFG, (3,), c), KEYS, cond)
    assert seen and all(s == {"scale": (4,), "label": (4,)} for s in seen)


@pytest.mark.parametrize("x_init", [jnp.zeros((4, 2)), jnp.zeros((3,)), jnp.zeros((1, 3)),
                                    jnp.zeros((4, 3, 1)), jnp.zeros((5, 3))])
def test_x_init_of_the_wrong_shape(x_init):
    with pytest.raises(ValueError, match="x_init"):
        _sample(x_init=x_init)
    sampler = kj.make_sampler(lambda p, x, s, c: GAUSS.denoise(x, s), STATE, CFG, (3,))
    with pytest.raises(ValueError, match="x_init"):
        sampler(None, KEYS, None, x_init)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, "not-a-dtype", jnp.uint32])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        _sample(dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        kj.initial_noise(KEYS, STATE, (3,), dtype)


def test_bad_state_and_config():
    with pytest.raises(TypeError, match="state"):
        _sample(state=STATE.sigmas)
    with pytest.raises(ValueError, match="state"):
        _sample(state=kj.KarrasVeState.create())
    with pytest.raises((TypeError, ValueError), match="state"):
        kj.initial_noise(KEYS, kj.KarrasVeState.create(), (3,))
    with pytest.raises(TypeError, match="config"):
        _sample(config={"s_churn": 0.0})
