"""Weights sharded over a pod: a sampler keeps the weights' NamedSharding (tensor-parallel over a
model axis, FSDP over the batch axis) and equals the single-device run; no device holds more
than its share of a sharded weight. On 8 CPU devices, mesh (data=2, model=4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import karras_jax as kj

D, H = 16, 2048  # two weights of D x H float32: 256 KiB together, 64 KiB per device when split 4-way
CFG = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_noise=1.0, s_churn=10.0)
STATE = kj.set_timesteps(CFG, 8, "karras")
KEYS = jax.random.split(jax.random.key(3), 16)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": jax.random.normal(k1, (D, H)) / np.sqrt(D),
            "w2": jax.random.normal(k2, (H, D)) / np.sqrt(H)}


def _mlp(params, x, sigma, cond):
    """A Megatron-style two-layer MLP denoiser: column-split first kernel, row-split second."""
    hidden = jnp.tanh(x @ params["w1"])
    return x / (1 + sigma**2) + 0.1 * (hidden @ params["w2"])


def _mesh(axis_type=AxisType.Auto):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)


TENSOR_PARALLEL = {"w1": P(None, "model"), "w2": P("model", None)}
FSDP = {"w1": P(None, "data"), "w2": P("data", None)}
FSDP_ALL = {"w1": P(None, ("data", "model")), "w2": P(("data", "model"), None)}


@pytest.fixture(scope="module")
def one_device():
    return np.asarray(kj.make_sampler(_mlp, STATE, None, (D,))(_params(), KEYS))


def _place(mesh, specs):
    return jax.device_put(_params(), {name: NamedSharding(mesh, spec) for name, spec in specs.items()})


def _relative_error(out, want):
    return float(np.max(np.abs(np.asarray(out) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("specs", [TENSOR_PARALLEL, FSDP, FSDP_ALL, {"w1": P(), "w2": P()}],
                         ids=["tensor-parallel", "fsdp", "fsdp-over-both-axes", "replicated"])
def test_sharded_weights_sample_as_one_device(one_device, specs):
    mesh = _mesh()
    params = _place(mesh, specs)
    sampler = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh)
    out = sampler(params, KEYS)
    assert _relative_error(out, one_device) <= 1e-5
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), out.ndim)
    # The weights were not moved: still split as placed.
    assert {name: leaf.sharding.spec for name, leaf in params.items()} == specs


def test_explicit_mesh_axes_need_no_annotations_in_the_network(one_device):
    # jax.make_mesh's default axes are explicit; the network is still written for one device
    # (a row-split product whose output JAX's explicit rules could not place by themselves).
    mesh = _mesh(AxisType.Explicit)
    out = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh)(_place(mesh, TENSOR_PARALLEL), KEYS)
    assert _relative_error(out, one_device) <= 1e-5
    assert out.sharding == NamedSharding(mesh, P("data"))  # the caller's mesh, explicit axes and all


def test_a_class_conditional_unet_on_explicit_mesh_axes():
    # A label lookup (nn.Embed) in a batch split over an explicit axis cannot be traced with
    # sharding in types; the sampler partitions it automatically instead.
    net = kj.UNet(channels=8, channel_mult=(1,), num_res_blocks=1, num_classes=3)
    apply = kj.precondition(lambda p, x, c, y: net.apply(p, x, c, y), kind="edm")
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    state = kj.set_timesteps(CFG, 3, "karras")
    keys, labels = KEYS[:8], jnp.arange(8) % 3
    want = kj.make_sampler(apply, state, None, (8, 8, 1))(params, keys, labels)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    out = kj.make_sharded_sampler(apply, state, None, (8, 8, 1), mesh)(params, keys, labels)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("specs", "share"), [(TENSOR_PARALLEL, 4), (FSDP, 2), (FSDP_ALL, 8)],
                         ids=["tensor-parallel", "fsdp", "fsdp-over-both-axes"])
def test_each_device_holds_its_share_of_the_weights(specs, share):
    mesh = _mesh()
    params = _place(mesh, specs)
    sampler = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh)
    memory = sampler.lower(params, KEYS).compile().memory_analysis()
    weights = sum(leaf.nbytes for leaf in jax.tree.leaves(_params()))
    keys_slice = jax.random.key_data(KEYS).nbytes // 2  # the batch is split 2-way over data
    assert memory.argument_size_in_bytes <= (weights / share + keys_slice) * 1.05
    replicated = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh).lower(
        _place(mesh, {"w1": P(), "w2": P()}), KEYS).compile().memory_analysis()
    assert replicated.argument_size_in_bytes >= weights  # the check above can fail


def test_replicated_weights_need_no_collectives():
    mesh = _mesh()
    sampler = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh)
    hlo = sampler.lower(_params(), KEYS).compile().as_text()
    assert not [c for c in ("all-reduce", "all-gather", "all-to-all", "reduce-scatter") if c in hlo]
    tensor_parallel = sampler.lower(_place(mesh, TENSOR_PARALLEL), KEYS).compile().as_text()
    assert "all-reduce" in tensor_parallel  # the row-split product's sum: what the network needs


def test_make_sampler_takes_sharded_weights(one_device):
    mesh = _mesh()
    out = kj.make_sampler(_mlp, STATE, None, (D,))(_place(mesh, TENSOR_PARALLEL), KEYS)
    assert _relative_error(out, one_device) <= 1e-5


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_rbg_keys_are_drawn_where_their_samples_live(impl):
    # rbg draws run one key at a time (lax.map); each device maps only its own keys.
    keys = jax.random.split(jax.random.key(5, impl=impl), 16)
    want = np.asarray(kj.make_sampler(_mlp, STATE, None, (D,))(_params(), keys))
    mesh = _mesh()
    for specs in (TENSOR_PARALLEL, {"w1": P(), "w2": P()}):
        sampler = kj.make_sharded_sampler(_mlp, STATE, None, (D,), mesh)
        params = _place(mesh, specs)
        assert _relative_error(sampler(params, keys), want) <= 1e-5
    hlo = sampler.lower(params, keys).compile().as_text()  # replicated weights: nothing to exchange
    assert not [c for c in ("all-reduce", "all-gather", "all-to-all", "reduce-scatter") if c in hlo]
