"""kj.DiT: a small diffusion transformer, the F of a preconditioned denoiser, with kernels
annotated for tensor parallelism (split over a "model" mesh axis by kj.DIT_AXIS_RULES)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import karras_jax as kj

SHAPE = (8, 8, 1)
MODULE = kj.DiT(patch_size=2, width=32, depth=2, num_heads=4, num_classes=3)  # labels 0..2, 3 = no class
APPLY = jax.jit(MODULE.apply)
X2 = jnp.ones((2, *SHAPE))


def _init(module, shape=SHAPE, batch=1):
    x = jnp.zeros((batch, *shape))
    labels = None if module.num_classes == 0 else jnp.zeros((batch,), jnp.int32)
    # jitted with rbg keys: op by op, or with threefry's hash, XLA compiles for much longer
    return jax.jit(module.init)(jax.random.key(0, impl="rbg"), x, jnp.zeros(()), labels)


def _perturbed(params, seed=1, scale=0.2):
    """Random weights everywhere (the zero-initialised adaLN and output layers included)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), params)


@pytest.fixture(scope="module")
def initial():
    return _init(MODULE)


@pytest.fixture(scope="module")
def trained(initial):
    return _perturbed(nn.unbox(initial))


# --- shapes and checks --------------------------------------------------------------------


@pytest.mark.parametrize("patch_size, shape, out_channels", [
    (1, (4, 4, 2), None), (2, (8, 8, 1), None), (4, (8, 12, 3), 2), (2, (6, 10, 1), 4)])
def test_forward_shapes(patch_size, shape, out_channels):
    module = kj.DiT(patch_size=patch_size, width=16, depth=1, num_heads=2, out_channels=out_channels)
    params = _init(module, shape)
    out = jax.jit(module.apply)(params, jnp.ones((3, *shape)), jnp.zeros((3,)))
    assert out.shape == (3, *shape[:2], out_channels or shape[2]) and out.dtype == jnp.float32


def test_bfloat16_computation_keeps_float32_weights():
    module = kj.DiT(width=16, depth=1, num_heads=2, dtype=jnp.bfloat16)
    params = _init(module)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(nn.unbox(params)))
    out = jax.jit(module.apply)(_perturbed(nn.unbox(params)), jnp.ones((2, *SHAPE)), 0.1)
    assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()


@pytest.mark.parametrize("fields, match", [
    ({"patch_size": 0}, "patch_size must be an int >= 1, got 0"),
    ({"width": 30, "num_heads": 4}, "num_heads must divide width: width=30 is not divisible by num_heads=4"),
    ({"width": 18, "num_heads": 3}, "width must be a multiple of 4"),
    ({"depth": 0}, "depth must be an int >= 1, got 0"),
    ({"num_heads": 0}, "num_heads must be an int >= 1, got 0"),
    ({"mlp_ratio": 1.5}, "mlp_ratio must be an int >= 1, got 1.5"),
    ({"num_classes": -1}, "num_classes must be an int >= 0, got -1"),
    ({"out_channels": 0}, "out_channels must be an int >= 1, got 0"),
    ({"max_positions": 0}, "max_positions must be a finite number > 1"),
    ({"max_positions": float("nan")}, "max_positions must be a finite number > 1"),
])
def test_bad_fields_are_refused_when_built(fields, match):
    with pytest.raises(ValueError, match=match):
        kj.DiT(**fields)


def test_bad_inputs_are_named_at_the_first_call():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"patch_size must divide x's height and width: patch_size=3, "
                                         r"got \(8, 8\)"):
        kj.DiT(patch_size=3, width=16, num_heads=2).init(key, jnp.zeros((1, *SHAPE)), 0.0)
    with pytest.raises(ValueError, match=r"patch_size must divide .* got \(8, 6\)"):
        kj.DiT(patch_size=4, width=16, num_heads=2).init(key, jnp.zeros((1, 8, 6, 1)), 0.0)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        kj.DiT(width=16).init(key, jnp.zeros(SHAPE), 0.0)
    with pytest.raises(ValueError, match=r"c_noise must be a scalar or one level per sample, shape \(2,\); "
                                         r"got shape \(3,\)"):
        kj.DiT(width=16).init(key, X2, jnp.zeros(3))
    with pytest.raises(ValueError, match="labels were given to a DiT with num_classes=0"):
        kj.DiT(width=16).init(key, X2, 0.0, jnp.zeros((2,), jnp.int32))


@pytest.mark.parametrize("labels", [jnp.asarray([7, 0]), jnp.asarray([-1, 0]), jnp.asarray([0, 4]), 5, -1])
def test_concrete_labels_outside_the_classes_are_refused(initial, labels):
    allowed = r"labels \(cond\) must be integer classes in \[0, 3\] \(3 = the null class, no condition\)"
    with pytest.raises(ValueError, match=allowed + ", got (7|-1|4|5)"):
        MODULE.apply(initial, X2, 0.0, labels)


@pytest.mark.parametrize("labels, error, match", [
    (jnp.asarray([0.0, 1.0]), TypeError, "labels .* got dtype float32"),
    (jnp.asarray([0, 1, 2]), ValueError, r"labels \(cond\) must be a scalar or one per sample, shape \(2,\) "
                                         r"for x's batch of 2; got shape \(3,\)"),
])
def test_labels_of_another_dtype_or_shape_are_named(initial, labels, error, match):
    with pytest.raises(error, match=match):
        APPLY(initial, X2, 0.0, labels)


def test_traced_labels_out_of_range_give_nan_rows_never_a_silent_class(trained):
    out = APPLY(trained, jnp.ones((4, *SHAPE)), 0.1, jnp.asarray([-1, 4, 3, 0]))
    assert np.isnan(np.asarray(out[:2])).all(axis=(1, 2, 3)).all()
    assert np.isfinite(np.asarray(out[2:])).all()


# --- behaviour ----------------------------------------------------------------------------


def test_adaln_zero_output_is_zero_at_init_so_the_denoiser_starts_as_c_skip_x(initial):
    apply_fn = kj.precondition(lambda p, x_in, c_noise, cond: MODULE.apply(p, x_in, c_noise, cond), "edm",
                               sigma_data=0.75)
    x = jax.random.normal(jax.random.key(2), (4, *SHAPE))
    labels = jnp.asarray([0, 1, 2, 3])
    assert not np.any(np.asarray(APPLY(initial, x, jnp.float32(0.3), labels)))  # F = 0 exactly
    for sigma in (0.01, 1.3, 60.0):
        c_skip, _, _, _ = kj.precondition_coefficients(sigma, "edm", sigma_data=0.75)
        np.testing.assert_allclose(jax.jit(apply_fn)(initial, x, jnp.float32(sigma), labels), c_skip * x,
                                   rtol=1e-6)


def test_each_row_depends_only_on_its_own_input_level_and_label(trained):
    x = jax.random.normal(jax.random.key(4), (3, *SHAPE))
    c_noise = jnp.asarray([-1.0, 0.0, 1.0])
    labels = jnp.asarray([2, 0, 3])
    together = APPLY(trained, x, c_noise, labels)
    for i in range(3):
        alone = APPLY(trained, x[i:i + 1], c_noise[i:i + 1], labels[i:i + 1])
        np.testing.assert_allclose(together[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    scalar = APPLY(trained, x, jnp.float32(0.4), labels)
    np.testing.assert_allclose(scalar, APPLY(trained, x, jnp.full((3,), 0.4), labels), rtol=1e-6, atol=1e-6)


def test_labels_noise_level_and_position_change_the_output(trained):
    x = jax.random.normal(jax.random.key(5), (1, *SHAPE))
    out = lambda xs, c, label: APPLY(trained, xs, jnp.float32(c), jnp.asarray([label]))  # noqa: E731
    assert float(jnp.max(jnp.abs(out(x, 0.0, 0) - out(x, 0.0, 1)))) > 1e-3
    assert float(jnp.max(jnp.abs(out(x, 0.0, 0) - out(x, 0.5, 0)))) > 1e-3
    # the position embedding: moving the image is not moving the output
    moved = out(jnp.roll(x, 2, axis=1), 0.0, 0)
    assert float(jnp.max(jnp.abs(moved - jnp.roll(out(x, 0.0, 0), 2, axis=1)))) > 1e-3


def test_no_labels_means_the_null_class(trained):
    x = jax.random.normal(jax.random.key(6), (2, *SHAPE))
    np.testing.assert_array_equal(APPLY(trained, x, 0.1, None), APPLY(trained, x, 0.1, jnp.asarray([3, 3])))


def test_trains_with_make_train_step_and_edm_loss(initial):
    """A few Adam steps on a fixed batch of two classes lower the EDM loss (the boxed init works as is)."""
    apply_fn = kj.precondition(lambda p, x_in, c_noise, cond: MODULE.apply(p, x_in, c_noise, cond), "edm")
    rng = np.random.default_rng(0)
    labels = np.arange(16, dtype=np.int32) % 2
    x = np.where(labels[:, None, None, None] == 0, 0.5, -0.5) * np.ones((16, *SHAPE), np.float32)
    x = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    batch = {"x": jnp.asarray(x), "label": jnp.asarray(labels)}

    def loss_fn(params, batch, key):
        return kj.edm_loss(apply_fn, params, batch["x"], key, batch["label"], cond_drop_prob=0.1, null_cond=3)

    step = kj.make_train_step(loss_fn, optax.adam(3e-3))
    state = kj.TrainState.create(initial, optax.adam(3e-3))
    losses = []
    for i in range(30):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


# --- tensor parallelism -------------------------------------------------------------------

# Weights dominated by the split kernels: 2 blocks of width 128 (adaLN 6w^2, qkv 3w^2,
# attention output w^2, MLP 8w^2 each).
TP_MODULE = kj.DiT(patch_size=2, width=128, depth=2, num_heads=4, num_classes=10)
TP_APPLY = kj.precondition(lambda p, x_in, c_noise, cond: TP_MODULE.apply(p, x_in, c_noise, cond), "edm",
                           sigma_data=0.75)


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


@pytest.fixture(scope="module")
def tensor_parallel():
    """(unsharded params, the same on the (data=2, model=4) mesh, split fraction, mesh)."""
    variables = _init(TP_MODULE)
    mesh = _mesh()
    shardings = kj.dit_shardings(variables, mesh)
    params = _perturbed(nn.unbox(variables), scale=0.05)
    sizes = jax.tree_util.tree_map(lambda p: p.size, params)
    split = jax.tree_util.tree_map(lambda s, n: n if "model" in tuple(s.spec) else 0, shardings, sizes)
    fraction = sum(jax.tree_util.tree_leaves(split)) / sum(jax.tree_util.tree_leaves(sizes))
    return params, jax.device_put(params, shardings), fraction, mesh


def test_axis_rules_split_kernels_over_the_model_axis(tensor_parallel):
    _, sharded, fraction, mesh = tensor_parallel
    block = sharded["params"]["block_0"]
    assert block["qkv"]["kernel"].sharding.spec == PartitionSpec(None, None, "model", None)  # heads
    assert block["attn_out"]["kernel"].sharding.spec == PartitionSpec("model", None, None)
    assert block["mlp_0"]["kernel"].sharding.spec == PartitionSpec(None, "model")  # column-split
    assert block["mlp_1"]["kernel"].sharding.spec == PartitionSpec("model", None)  # row-split
    assert block["adaln"]["kernel"].sharding.spec == PartitionSpec(None, "model")
    assert sharded["params"]["class_emb"]["embedding"].sharding.spec == PartitionSpec(None, None)
    # a quarter of a split kernel on each device
    assert block["mlp_0"]["kernel"].addressable_shards[0].data.shape == (128, 128)
    assert fraction > 0.99  # 0.994: what stays replicated is the patch layers, class table and a few biases
    with pytest.raises(ValueError, match=r"rules name mesh axes \['model'\]"):
        kj.dit_shardings(_init(MODULE), jax.make_mesh((8,), ("data",)))


def test_sharded_forward_equals_unsharded(tensor_parallel):
    params, sharded, _, mesh = tensor_parallel
    x = jax.random.normal(jax.random.key(8), (8, *SHAPE))
    sigma, labels = jnp.linspace(0.1, 5.0, 8), jnp.arange(8) % 11
    expected = jax.jit(TP_APPLY)(params, x, sigma, labels)
    data = NamedSharding(mesh, PartitionSpec("data"))
    got = jax.jit(TP_APPLY)(sharded, *jax.device_put((x, sigma, labels), data))
    assert got.sharding.spec[:1] == PartitionSpec("data") or got.sharding.is_equivalent_to(data, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(expected))))


def test_sharded_sampling_equals_unsharded_with_a_quarter_of_the_weights_per_device(tensor_parallel):
    params, sharded, _, mesh = tensor_parallel
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0), 4, "karras")
    keys = jax.random.split(jax.random.key(9, impl="rbg"), 8)
    labels = jnp.arange(8, dtype=jnp.int32) % 11
    expected = kj.make_sampler(TP_APPLY, state, None, SHAPE)(params, keys, labels)
    sampler = kj.make_sharded_sampler(TP_APPLY, state, None, SHAPE, mesh)
    got = sampler(sharded, keys, labels)
    assert got.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), got.ndim)
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)

    weights = sum(p.nbytes for p in jax.tree_util.tree_leaves(params))
    batch_slice = (keys.size * 16 + labels.nbytes) // 2  # rbg keys (4 uint32) and labels, half per device
    memory = sampler.lower(sharded, keys, labels).compile().memory_analysis()
    assert memory.argument_size_in_bytes <= (weights / 4 + batch_slice) * 1.05, (
        memory.argument_size_in_bytes, weights)


def test_sampling_and_training_on_explicit_mesh_axes(tensor_parallel):
    # jax.make_mesh's default axes are explicit; the sampler and the train step run the DiT as
    # written (its row-split products name no output sharding) and hand back the caller's mesh.
    params, _, _, _ = tensor_parallel
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    sharded = jax.device_put(params, kj.dit_shardings(_init(TP_MODULE), mesh))
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=5.0), 3, "karras")
    keys, labels = jax.random.split(jax.random.key(4), 8), jnp.arange(8, dtype=jnp.int32) % 10
    expected = kj.make_sampler(TP_APPLY, state, None, SHAPE)(params, keys, labels)
    got = kj.make_sharded_sampler(TP_APPLY, state, None, SHAPE, mesh)(sharded, keys, labels)
    assert got.sharding == NamedSharding(mesh, PartitionSpec("data"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(expected))))

    optimizer = optax.adam(1e-3)
    train_state = kj.TrainState(params=sharded, opt_state=optimizer.init(sharded), ema=sharded,
                                step=jnp.zeros((), jnp.int32))
    loss = lambda p, b, k: kj.edm_loss(TP_APPLY, p, b["x"], k, b["y"])  # noqa: E731
    step = kj.make_train_step(loss, optimizer, mesh=mesh)
    batch = {"x": jax.random.normal(jax.random.key(5), (8, *SHAPE)), "y": labels}
    after, metrics = step(train_state, batch, jax.random.key(6))
    assert np.isfinite(float(metrics["loss"]))
    assert jax.tree_util.tree_map(lambda a: a.sharding, after.params) == \
        jax.tree_util.tree_map(lambda a: a.sharding, sharded)


def test_bfloat16_attention_logits_are_accumulated_in_float32():
    module = kj.DiT(patch_size=2, width=32, depth=1, num_heads=2, num_classes=3, dtype=jnp.bfloat16)
    args = (jnp.zeros((1, *SHAPE)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    hlo = jax.jit(module.apply).lower(module.init(jax.random.key(0), *args), *args).as_text()
    products = [line for line in hlo.splitlines() if "dot_general" in line and "x16x16x" in line]
    # q.k of bfloat16 inputs (1 sample, 2 heads, 16 tokens) comes out in float32
    assert any("bf16>) -> tensor<1x2x16x16xf32>" in line for line in products), products
