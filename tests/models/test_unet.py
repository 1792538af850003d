"""kj.UNet: the package's small image network, the F of a preconditioned denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj

SHAPE = (8, 8, 1)
MODULE = kj.UNet(channels=8, num_classes=3)  # labels 0..2, 3 = no class
APPLY = jax.jit(MODULE.apply)


def _init(module, batch=1):
    x = jnp.zeros((batch, *SHAPE))
    labels = None if module.num_classes == 0 else jnp.zeros((batch,), jnp.int32)
    # jitted with rbg keys: op by op, or with threefry's hash, XLA compiles for tens of seconds
    return jax.jit(module.init)(jax.random.key(0, impl="rbg"), x, jnp.zeros(()), labels)


@pytest.fixture(scope="module")
def initial():
    return _init(MODULE)


@pytest.fixture(scope="module")
def trained(initial):
    return _perturbed(initial)


def _perturbed(params, seed=1):
    """Random weights everywhere (the zero-initialised output conv included)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: p + 0.2 * rng.standard_normal(p.shape, np.float32), params)


def test_output_is_zero_at_initialisation_so_the_denoiser_starts_as_c_skip_x(initial):
    apply_fn = kj.precondition(lambda p, x_in, c_noise, cond: MODULE.apply(p, x_in, c_noise, cond), "edm")
    x = jax.random.normal(jax.random.key(2), (4, *SHAPE))
    sigma = jnp.float32(1.3)
    c_skip = 0.25 / (sigma**2 + 0.25)
    np.testing.assert_allclose(jax.jit(apply_fn)(initial, x, sigma, jnp.asarray([0, 1, 2, 3])), c_skip * x,
                               rtol=1e-6)


def test_shape_dtype_and_out_channels():
    module = kj.UNet(channels=4, channel_mult=(1, 2, 2), out_channels=3, dtype=jnp.bfloat16)
    params = _init(module)
    out = jax.jit(module.apply)(params, jnp.ones((2, *SHAPE)), jnp.zeros(()))
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.bfloat16


def test_scalar_noise_level_equals_the_same_level_per_sample(trained):
    params = trained
    x = jax.random.normal(jax.random.key(3), (4, *SHAPE))
    labels = jnp.asarray([0, 1, 2, 3])
    scalar = APPLY(params, x, jnp.float32(0.4), labels)
    batch = APPLY(params, x, jnp.full((4,), 0.4), labels)
    np.testing.assert_array_equal(scalar, batch)


def test_each_row_depends_only_on_its_own_input_level_and_label(trained):
    params = trained
    x = jax.random.normal(jax.random.key(4), (3, *SHAPE))
    c_noise = jnp.asarray([-1.0, 0.0, 1.0])
    labels = jnp.asarray([2, 0, 3])
    together = APPLY(params, x, c_noise, labels)
    for i in range(3):
        alone = APPLY(params, x[i:i + 1], c_noise[i:i + 1], labels[i:i + 1])
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_labels_and_noise_level_change_the_output(trained):
    params = trained
    x = jax.random.normal(jax.random.key(5), (1, *SHAPE))
    out = lambda c, label: APPLY(params, x, jnp.float32(c), jnp.asarray([label]))  # noqa: E731
    assert float(jnp.max(jnp.abs(out(0.0, 0) - out(0.0, 1)))) > 1e-3
    assert float(jnp.max(jnp.abs(out(0.0, 0) - out(0.5, 0)))) > 1e-3


def test_no_labels_means_the_null_class(trained):
    params = trained
    x = jax.random.normal(jax.random.key(6), (2, *SHAPE))
    null = jnp.asarray([3, 3])
    np.testing.assert_array_equal(APPLY(params, x, 0.1, None), APPLY(params, x, 0.1, null))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels"):
        kj.UNet(channels=8).init(jax.random.key(0), jnp.zeros((1, *SHAPE)), 0.0, jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="divisible"):
        kj.UNet(channels=8, channel_mult=(1, 2, 2, 2)).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), 0.0)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        kj.UNet(channels=8).init(jax.random.key(0), jnp.zeros((8, 8, 1)), 0.0)


# Issue 16: labels outside [0, num_classes] (num_classes = the null class) are refused, never NaN or a
# silent null class.

X2 = jnp.ones((2, *SHAPE))


@pytest.mark.parametrize("labels", [jnp.asarray([7, 0]), jnp.asarray([-1, 0]), jnp.asarray([0, 4]), 5, -1])
def test_concrete_labels_outside_the_classes_are_refused(initial, labels):
    allowed = r"labels \(cond\) must be integer classes in \[0, 3\] \(3 = the null class, no condition\)"
    with pytest.raises(ValueError, match=allowed + ", got (7|-1|4|5)"):
        MODULE.apply(initial, X2, 0.0, labels)


@pytest.mark.parametrize("labels, error, match", [
    (jnp.asarray([0.0, 1.0]), TypeError, "labels .* got dtype float32"),
    (jnp.asarray([True, False]), TypeError, "labels .* got dtype bool"),
    (jnp.asarray([0, 1, 2]), ValueError, r"labels \(cond\) must be a scalar or one per sample, shape \(2,\) "
                                         r"for x's batch of 2; got shape \(3,\)"),
    (jnp.asarray([[0], [1]]), ValueError, r"got shape \(2, 1\)"),
])
def test_labels_of_another_dtype_or_shape_are_named(initial, labels, error, match):
    with pytest.raises(error, match=match):
        MODULE.apply(initial, X2, 0.0, labels)
    with pytest.raises(error, match=match):  # dtype and shape are known at trace time
        APPLY(initial, X2, 0.0, labels)


def test_the_null_class_scalar_and_list_labels_are_accepted(trained):
    np.testing.assert_array_equal(APPLY(trained, X2, 0.1, jnp.asarray([3, 3])), APPLY(trained, X2, 0.1, None))
    np.testing.assert_array_equal(MODULE.apply(trained, X2, 0.1, 2), MODULE.apply(trained, X2, 0.1, [2, 2]))


def test_traced_labels_out_of_range_give_nan_rows_never_a_silent_class(trained):
    out = APPLY(trained, jnp.ones((4, *SHAPE)), 0.1, jnp.asarray([-1, 4, 3, 0]))
    assert np.isnan(np.asarray(out[:2])).all(axis=(1, 2, 3)).all()
    assert np.isfinite(np.asarray(out[2:])).all()


def test_bad_fields_and_noise_levels_are_named():
    with pytest.raises(ValueError, match="num_classes must be an int >= 0, got -1"):
        kj.UNet(channels=8, num_classes=-1).init(jax.random.key(0), X2, 0.0)
    with pytest.raises(ValueError, match="channels must be an int >= 1, got 0"):
        kj.UNet(channels=0).init(jax.random.key(0), X2, 0.0)
    with pytest.raises(ValueError, match=r"c_noise must be a scalar or one level per sample, shape \(2,\); "
                                         r"got shape \(3,\)"):
        kj.UNet(channels=8).init(jax.random.key(0), X2, jnp.zeros(3))
