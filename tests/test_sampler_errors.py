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
GAUSS_FN = gauss_denoise


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


# --- no silent NaN: dtype range, non-finite input, arrays where scalars belong, arity ------------


def test_a_dtype_that_cannot_hold_the_noise_names_dtype_and_sigma_max():
    cfg = kj.KarrasVeConfig(sigma_max=2e4)
    state = kj.set_timesteps(cfg, 5)
    with pytest.raises(ValueError, match=r"dtype=float16 .*sigma_max=20000.0.*float16 \(6.55e\+04\)"):
        kj.sample(GAUSS_FN, keys_for(0, 2), state, cfg, (3,), dtype=jnp.float16)
    with pytest.raises(ValueError, match="dtype=float16"):
        kj.make_sampler(lambda p, x, s, c: x, state, cfg, (3,), dtype=jnp.float16)
    kj.sample(GAUSS_FN, keys_for(0, 2), state, cfg, (3,), dtype=jnp.bfloat16)  # bfloat16 holds it
    small = kj.KarrasVeConfig(sigma_max=80.0)
    kj.sample(GAUSS_FN, keys_for(0, 2), kj.set_timesteps(small, 5), small, (3,), dtype=jnp.float16)
    # diffusers' levels reach 1e4, but its start noise has std sigma_max = 100 and the top
    # levels lie outside the churn window: float16 holds that run (no false alarm).
    legacy = kj.KarrasVeConfig()
    out = kj.sample(GAUSS_FN, keys_for(0, 2), kj.set_timesteps(legacy, 5, "diffusers"), legacy, (3,),
                    dtype=jnp.float16)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    # Churn that lifts a float16-sized start noise past the limit is caught.
    edge = kj.KarrasVeConfig(sigma_max=10000.0, s_churn=80.0, s_max=1e5)
    with pytest.raises(ValueError, match="dtype=float16"):
        kj.sample(GAUSS_FN, keys_for(0, 2), kj.set_timesteps(edge, 5), edge, (3,), dtype=jnp.float16)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_x_init_is_refused(bad):
    x_init = jnp.zeros((2, 3)).at[1, 2].set(bad)
    message = r"x_init must be finite: it holds 1 NaN/inf value\(s\), the first at index \(1, 2\)"
    with pytest.raises(ValueError, match=message):
        kj.sample(GAUSS_FN, keys_for(0, 2), STATE, CFG, (3,), x_init=x_init)
    # make_sampler's calls do not read x_init back (that would cost a device sync per call):
    # its debug mode reports it instead.
    checked = kj.make_sampler(lambda p, x, s, c: GAUSS_FN(x, s, c), STATE, CFG, (3,), check_finite=True)
    with pytest.raises(FloatingPointError, match="x_init holds NaN or inf"):
        checked(None, keys_for(0, 2), None, x_init)


def test_an_array_config_without_vmap_names_the_field_and_says_vmap():
    grid = CFG.replace(s_churn=jnp.asarray([0.0, 10.0]))
    with pytest.raises(ValueError, match=r"config.s_churn holds an array of shape \(2,\).*jax.vmap"):
        kj.sample(GAUSS_FN, keys_for(0, 2), STATE, grid, (3,))
    with pytest.raises(ValueError, match="config.s_churn"):
        jax.jit(lambda c: kj.sample(GAUSS_FN, keys_for(0, 2), STATE, c, (3,)))(grid)
    with pytest.raises(ValueError, match="config.sigma_max"):
        kj.set_timesteps(CFG.replace(sigma_max=jnp.asarray([50.0, 80.0])), 5)
    spec = kj.KarrasVeConfig(None, None, None, 0, None, None)
    out = jax.vmap(lambda c: kj.sample(GAUSS_FN, keys_for(0, 2), STATE, c, (3,)), in_axes=(spec,))(grid)
    assert out.shape == (2, 2, 3)  # the way to run several values


@pytest.mark.parametrize("fn", [lambda x, sigma: x, lambda x: x, lambda x, sigma, cond, extra: x])
def test_a_denoiser_with_the_wrong_arity_is_told_how_it_is_called(fn):
    with pytest.raises(TypeError, match=r"denoise_fn is called as denoise_fn\(x, sigma, cond\)"):
        kj.sample(fn, keys_for(0, 2), STATE, CFG, (3,))


@pytest.mark.parametrize("fn", [lambda x, sigma, cond: x, lambda p, x, sigma, cond, extra: x])
def test_an_apply_fn_with_the_wrong_arity_is_told_how_it_is_called(fn):
    with pytest.raises(TypeError, match=r"apply_fn is called as apply_fn\(params, x, sigma, cond\)"):
        kj.make_sampler(fn, STATE, CFG, (3,))
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    with pytest.raises(TypeError, match=r"apply_fn is called as apply_fn\(params, x, sigma, cond\)"):
        kj.make_sharded_sampler(fn, STATE, CFG, (3,), mesh)


def test_flexible_signatures_are_accepted():
    kj.sample(lambda x, sigma, cond=None, *rest: GAUSS_FN(x, sigma, cond), keys_for(0, 2), STATE, CFG, (3,))


# --- the debug mode: check_finite ------------------------------------------------------------------


def _nan_below(level):
    def denoise(x, sigma, cond):
        return jnp.where(sigma < level, jnp.nan, GAUSS_FN(x, sigma, cond))

    return denoise


def test_check_finite_names_the_step_the_level_and_the_denoiser():
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 6, "karras")
    levels = np.asarray(state.sigmas)
    with pytest.raises(FloatingPointError) as info:
        kj.sample(_nan_below(float(levels[3]) * 1.01), keys_for(0, 2), state, cfg, (3,), check_finite=True,
                  solver="euler")
    message = str(info.value)
    assert message.startswith("non-finite value in the denoiser's output at step 3 (sigma_hat=")
    assert abs(float(message.split("sigma_hat=")[1].split(",")[0]) - levels[3]) < 1e-5 * levels[3]
    assert "evaluated at sigma=" in message


def test_check_finite_blames_the_update_when_the_denoiser_was_finite():
    def huge(x, sigma, cond):  # finite, but (x - D) / sigma overflows once sigma < 1
        return jnp.where(sigma < 1.0, -3e38, GAUSS_FN(x, sigma, cond))

    with pytest.raises(FloatingPointError, match=r"non-finite value in the update of step \d+ \(sigma_hat="):
        kj.sample(huge, keys_for(0, 2), kj.set_timesteps(CFG, 8, "karras"), CFG, (3,), check_finite=True)


def test_check_finite_in_make_sampler_and_the_default_program_has_no_checks():
    bad = kj.make_sampler(lambda p, x, s, c: _nan_below(p)(x, s, c), STATE, CFG, (3,), check_finite=True)
    with pytest.raises(FloatingPointError, match="denoiser's output at step"):
        bad(jnp.float32(0.5), keys_for(0, 2))
    assert bad(jnp.float32(1e-9), keys_for(0, 2)).shape == (2, 3)  # finite run: no error
    plain = kj.make_sampler(lambda p, x, s, c: _nan_below(p)(x, s, c), STATE, CFG, (3,))
    assert np.isnan(np.asarray(plain(jnp.float32(0.5), keys_for(0, 2)))).all()  # NaN, no checks, no error
    text = str(jax.make_jaxpr(lambda k: kj.sample(GAUSS_FN, k, STATE, CFG, (3,)))(keys_for(0, 2)))
    assert "check" not in text and "callback" not in text


def test_check_finite_refuses_to_run_inside_jit():
    with pytest.raises(ValueError, match="check_finite=True .* outside jax.jit"):
        jax.jit(lambda k: kj.sample(GAUSS_FN, k, STATE, CFG, (3,), check_finite=True))(keys_for(0, 2))
    keys = keys_for(0, 2)
    with pytest.raises(ValueError, match="check_finite=True .* outside jax.jit"):  # only the weights traced
        jax.jit(lambda p: kj.sample(lambda x, s, c: x * p, keys, STATE, CFG, (3,), check_finite=True))(1.0)


def test_check_finite_catches_the_cast_to_the_network_dtype():
    # The float32 carry is finite, but the network's float16 input overflows.
    def grow(x, sigma, cond):
        return x.astype(jnp.float32) * 1e3

    cfg = edm_config(s_churn=0.0)
    with pytest.raises(FloatingPointError, match=r"the denoiser's input at step \d+ .*float16"):
        kj.sample(grow, keys_for(0, 2), kj.set_timesteps(cfg, 6, "karras"), cfg, (3,), dtype=jnp.float16,
                  check_finite=True)
