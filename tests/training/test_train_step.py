"""The train step: a tiny conditional MLP denoiser, preconditioned as EDM, learns Gaussian class
data with several optax optimizers; the step is jitted once, pure, reports its loss and gradient
norm, keeps the power-function EMA, and gives the same weights data-parallel over 8 devices."""

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import karras_jax as kj

DIM, HIDDEN, CLASSES = 4, 16, 3
MEANS = np.array([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.5, 0.0, 1.0], [0.0, 0.0, -1.0, -0.5]], np.float32)
BATCH, STEPS = 64, 50


def net(params, x_in, c_noise, cond):
    """F(c_in x, c_noise, label): one hidden layer; label 0 is the null class."""
    emb = jax.nn.one_hot(cond, CLASSES + 1) @ params["emb"]
    h = jnp.tanh(x_in @ params["w1"] + c_noise[:, None] * params["u"] + emb + params["b1"])
    return h @ params["w2"] + params["b2"]


APPLY = kj.precondition(net, "edm")


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": 0.5 * rng.normal(size=(DIM, HIDDEN)).astype(np.float32),
            "u": rng.normal(size=HIDDEN).astype(np.float32),
            "emb": 0.1 * rng.normal(size=(CLASSES + 1, HIDDEN)).astype(np.float32),
            "b1": np.zeros(HIDDEN, np.float32),
            "w2": 0.25 * rng.normal(size=(HIDDEN, DIM)).astype(np.float32),
            "b2": np.zeros(DIM, np.float32)}


def batch_of(seed, size=BATCH):
    """Gaussian class data: label k in 1..3, x ~ N(MEANS[k - 1], 0.3^2 I)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(1, CLASSES + 1, size)
    x = MEANS[label - 1] + 0.3 * rng.normal(size=(size, DIM)).astype(np.float32)
    return {"x": x, "label": label.astype(np.int32)}


def per_sample_loss(params, batch, key):
    return kj.edm_loss(APPLY, params, batch["x"], key, batch["label"], cond_drop_prob=0.1, null_cond=0)


def key_of(step):
    return jax.random.fold_in(jax.random.key(0), step)


EVAL_BATCH, EVAL_KEY = batch_of(10**6), jax.random.key(10**6)


@dataclass
class Run:
    """A training run and what it recorded."""

    optimizer: optax.GradientTransformation
    train_step: object = None
    traces: list = field(default_factory=list)
    states: list = field(default_factory=list)  # states[i]: after i updates
    metrics: list = field(default_factory=list)

    def eval_loss(self, state):
        # The loss before the update, on a fixed batch and key: a paired comparison across states.
        return float(self.train_step(state, EVAL_BATCH, EVAL_KEY)[1]["loss"])


def train(optimizer, steps, mesh=None):
    run = Run(optimizer)

    def loss_fn(params, batch, key):
        run.traces.append(jax.tree_util.tree_map(jnp.shape, batch))
        return per_sample_loss(params, batch, key)

    run.train_step = kj.make_train_step(loss_fn, optimizer, mesh=mesh)
    state = kj.TrainState.create(init_params(), optimizer)
    run.states.append(state)
    for i in range(steps):
        state, metrics = run.train_step(state, batch_of(i), key_of(i))
        run.states.append(state)
        run.metrics.append(metrics)
    return run


SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 2e-2, warmup_steps=10, decay_steps=STEPS)
OPTIMIZERS = {
    "adam": optax.adam(1e-2),
    "sgd_momentum": optax.sgd(1e-2, momentum=0.9),
    "clipped_adamw_with_schedule": optax.chain(optax.clip_by_global_norm(1.0),
                                               optax.adamw(SCHEDULE, weight_decay=1e-4)),
}


_RUNS = {}


def run_of(name):
    """Each optimizer's 50-step run, trained once for all the tests that look at it."""
    if name not in _RUNS:
        _RUNS[name] = train(OPTIMIZERS[name], STEPS)
    return _RUNS[name]


@pytest.fixture(params=list(OPTIMIZERS))
def run(request):
    return run_of(request.param)


@pytest.fixture
def adam_run():
    return run_of("adam")


def test_the_loss_decreases_over_50_steps(run):
    before, after = run.eval_loss(run.states[0]), run.eval_loss(run.states[-1])
    assert after < 0.75 * before
    assert run.eval_loss(run.states[-1].replace(params=run.states[-1].ema)) < 0.75 * before  # the EMA too
    assert all(math.isfinite(float(m["loss"])) for m in run.metrics)


def test_the_step_counter_counts_the_updates(run):
    steps = [s.step for s in run.states]
    assert all(s.dtype == jnp.int32 and s.shape == () for s in steps)
    assert [int(s) for s in steps] == list(range(STEPS + 1))


def test_the_step_is_traced_once_for_new_batches_and_keys_of_the_same_shapes(run):
    # 50 training steps and the evaluations, all with (64, ...) batches: one trace
    assert run.traces == [{"x": (BATCH, DIM), "label": (BATCH,)}]


def quadratic_loss(params, batch, key):
    """Per-sample (x - w)^2: the batch loss is mean((x - w)^2) and its gradient -2 mean(x - w)."""
    return (batch - params["w"]) ** 2


quadratic_step = kj.make_train_step(quadratic_loss, optax.sgd(0.1))


def test_the_metrics_are_the_batch_loss_before_the_update_and_the_gradient_norm():
    state = kj.TrainState.create({"w": jnp.float32(1.0)}, optax.sgd(0.1))
    batch = np.array([0.0, 2.0, 4.0, 6.0], np.float32)  # mean 3
    new, metrics = quadratic_step(state, batch, jax.random.key(0))
    assert set(metrics) == {"loss", "grad_norm"}
    assert float(metrics["loss"]) == pytest.approx(np.mean((batch - 1.0) ** 2))  # at w = 1, before the update
    assert float(metrics["grad_norm"]) == pytest.approx(4.0)  # |-2 (3 - 1)|
    assert float(new.params["w"]) == pytest.approx(1.0 + 0.1 * 4.0)  # sgd: w - 0.1 * grad
    _, metrics = quadratic_step(new, batch, jax.random.key(1))
    assert float(metrics["loss"]) == pytest.approx(np.mean((batch - 1.4) ** 2))


def test_the_sgd_runs_grad_norm_is_the_global_norm_of_its_first_update_over_the_learning_rate():
    # SGD's first update, momentum or not, is -learning_rate * gradient.
    run = run_of("sgd_momentum")
    new, old = run.states[1].params, run.states[0].params
    norm = math.sqrt(sum(np.sum(((np.asarray(old[k]) - np.asarray(new[k])) / 1e-2) ** 2) for k in new))
    np.testing.assert_allclose(run.metrics[0]["grad_norm"], norm, rtol=1e-4)


def test_the_update_is_the_optimizers():
    # Adam's first update is -learning_rate * g / (|g| + eps): about 1e-2 for every weight.
    run = run_of("adam")
    for new, old in zip(jax.tree_util.tree_leaves(run.states[1].params),
                        jax.tree_util.tree_leaves(run.states[0].params), strict=True):
        np.testing.assert_allclose(np.abs(np.asarray(new) - np.asarray(old)), 1e-2, rtol=1e-2)
    assert int(run.states[1].opt_state[0].count) == 1


def test_the_step_is_pure_and_leaves_its_input_state_valid(adam_run):
    state = adam_run.states[5]
    saved = jax.tree_util.tree_map(np.array, state)
    first = adam_run.train_step(state, batch_of(5), key_of(5))
    second = adam_run.train_step(state, batch_of(5), key_of(5))
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(first[0]), jax.tree_util.tree_leaves(adam_run.states[6]),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # the same update as during the run
    for leaf, copy in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(saved), strict=True):
        assert not leaf.is_deleted()  # not donated
        np.testing.assert_array_equal(leaf, copy)


def test_the_state_keeps_the_power_function_ema_of_the_params(adam_run):
    gamma = kj.ema_gamma(0.05)  # make_train_step's default ema_sigma_rel
    states = adam_run.states
    for a, b in zip(jax.tree_util.tree_leaves(states[1].ema), jax.tree_util.tree_leaves(states[1].params),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # beta_1 = 0: the first average is the first update's weights
    for t in (2, 3, 10, STEPS):
        want = kj.ema_update(states[t - 1].ema, states[t].params, t, gamma)
        for name in want:
            np.testing.assert_allclose(states[t].ema[name], want[name], rtol=1e-6, atol=1e-7)
    assert not np.allclose(states[-1].ema["w1"], states[-1].params["w1"])


def test_train_state_create_starts_at_step_0_with_the_ema_a_copy_of_the_params():
    params = init_params()
    state = kj.TrainState.create(params, optax.adam(1e-3))
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    for name, value in params.items():
        np.testing.assert_array_equal(state.params[name], value)
        np.testing.assert_array_equal(state.ema[name], value)
        assert state.ema[name] is not state.params[name]
    want = optax.adam(1e-3).init(state.params)
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(want)


def test_a_non_optax_optimizer_or_a_non_callable_loss_is_a_type_error():
    with pytest.raises(TypeError, match="optimizer"):
        kj.TrainState.create(init_params(), "adam")
    with pytest.raises(TypeError, match="optimizer"):
        kj.make_train_step(per_sample_loss, optax.adam)
    with pytest.raises(TypeError, match="loss_fn"):
        kj.make_train_step(None, optax.adam(1e-3))


def test_a_bad_ema_sigma_rel_is_rejected():
    with pytest.raises(ValueError, match="sigma_rel"):
        kj.make_train_step(per_sample_loss, optax.adam(1e-3), ema_sigma_rel=0.5)
    with pytest.raises(TypeError, match="sigma_rel must be a real number"):
        kj.make_train_step(per_sample_loss, optax.adam(1e-3), ema_sigma_rel="0.05")


def test_a_jax_or_numpy_scalar_ema_sigma_rel_is_taken_like_a_float():
    for sigma_rel in (jnp.float32(0.05), np.float64(0.05), jnp.asarray(0.05)):
        assert callable(kj.make_train_step(per_sample_loss, optax.adam(1e-3), ema_sigma_rel=sigma_rel))


# --- data parallel -------------------------------------------------------------------------

MESH = jax.make_mesh((8,), ("data",))


@pytest.fixture(scope="module")
def mesh_run():
    return train(OPTIMIZERS["adam"], 5, mesh=MESH)


def test_data_parallel_steps_give_the_single_device_weights(mesh_run, adam_run):
    assert len(jax.devices()) == 8
    leaves = zip(jax.tree_util.tree_leaves(mesh_run.states[5]), jax.tree_util.tree_leaves(adam_run.states[5]),
                 strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(mesh_run.metrics, adam_run.metrics[:5], strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)


def test_data_parallel_state_is_replicated_and_traced_once(mesh_run):
    assert mesh_run.traces == [{"x": (BATCH, DIM), "label": (BATCH,)}]  # traced with the global shapes
    for leaf in jax.tree_util.tree_leaves(mesh_run.states[-1]):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_data_parallel_needs_a_batch_that_splits_evenly_over_the_devices(mesh_run):
    state = mesh_run.states[-1]
    with pytest.raises(ValueError, match="divide evenly"):
        mesh_run.train_step(state, batch_of(0, size=12), key_of(0))
    with pytest.raises(ValueError, match="divide evenly"):
        mesh_run.train_step(state, {**batch_of(0), "scale": np.float32(1.0)}, key_of(0))


def test_data_parallel_works_with_a_class_embedding_lookup_on_jax_make_meshs_default_mesh():
    # nn.Embed (as in kj.UNet) indexes its table with the labels, which the mesh splits over devices.
    def lookup_net(params, x_in, c_noise, cond):
        emb = params["emb"][cond]
        h = jnp.tanh(x_in @ params["w1"] + c_noise[:, None] * params["u"] + emb + params["b1"])
        return h @ params["w2"] + params["b2"]

    apply_fn = kj.precondition(lookup_net, "edm")
    train_step = kj.make_train_step(lambda p, b, k: kj.edm_loss(apply_fn, p, b["x"], k, b["label"]),
                                    OPTIMIZERS["adam"], mesh=MESH)
    state = kj.TrainState.create(init_params(), OPTIMIZERS["adam"])
    state, metrics = train_step(state, batch_of(0), key_of(0))
    assert int(state.step) == 1 and math.isfinite(float(metrics["loss"]))


# --- sharded state (a pod: weights split over the mesh) ------------------------------------

WIDE = 512  # hidden width of the tensor-parallel MLP: its two kernels dominate the state


def wide_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.normal(size=(DIM, WIDE)) / 2).astype(np.float32),
            "w2": (rng.normal(size=(WIDE, DIM)) / np.sqrt(WIDE)).astype(np.float32)}


def wide_net(params, x_in, c_noise, cond):
    """Megatron-style: column-split first kernel, row-split second (an all-reduce)."""
    return jnp.tanh(x_in @ params["w1"] + c_noise[:, None]) @ params["w2"]


WIDE_APPLY = kj.precondition(wide_net, "edm")
SPLITS = {"tensor-parallel": {"w1": P(None, "model"), "w2": P("model", None)},
          "fsdp": {"w1": P(None, "data"), "w2": P("data", None)},
          "fsdp-and-tensor-parallel": {"w1": P("data", "model"), "w2": P("model", "data")}}


def wide_loss(params, batch, key):
    return kj.edm_loss(WIDE_APPLY, params, batch["x"], key)


def placed_state(mesh, specs, optimizer):
    """A state whose params, optimizer moments and EMA are split as ``specs`` says."""
    state = kj.TrainState.create(wide_params(), optimizer)

    def place(leaf, spec):
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    params = {k: place(v, specs[k]) for k, v in state.params.items()}
    ema = {k: place(v, specs[k]) for k, v in state.ema.items()}
    return kj.TrainState(params=params, opt_state=optimizer.init(params), ema=ema, step=state.step)


def shard_bytes(tree, device):
    return sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(tree) for s in leaf.addressable_shards
               if s.device == device)


@pytest.fixture(scope="module")
def wide_single():
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer)
    state = kj.TrainState.create(wide_params(), optimizer)
    for i in range(5):
        state, _ = step(state, batch_of(i), key_of(i))
    return state


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
@pytest.mark.parametrize("name", list(SPLITS))
def test_sharded_state_keeps_its_sharding_and_gives_the_single_device_weights(wide_single, name, axis_type):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer, mesh=mesh)
    state = placed_state(mesh, SPLITS[name], optimizer)
    # Leaves placed on the mesh keep their sharding; the rest (step, Adam's count) are replicated.
    replicated = NamedSharding(mesh, P())
    layout = jax.tree_util.tree_map(
        lambda leaf: leaf.sharding if isinstance(leaf.sharding, NamedSharding) else replicated, state)
    assert jax.tree_util.tree_leaves(layout)[-1] == replicated  # the step: the check below can fail
    for i in range(5):
        state, metrics = step(state, batch_of(i), key_of(i))
        assert jax.tree_util.tree_map(lambda leaf: leaf.sharding, state) == layout  # never gathered
    assert math.isfinite(float(metrics["loss"]))
    leaves = zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(wide_single), strict=True)
    for got, want in leaves:
        scale = max(float(np.max(np.abs(want))), 1e-30)
        assert float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) <= 1e-5 * scale


@pytest.mark.parametrize(("name", "share"), [("tensor-parallel", 4), ("fsdp-and-tensor-parallel", 8)])
def test_each_device_holds_its_share_of_the_state(name, share):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer, mesh=mesh)
    state, _ = step(placed_state(mesh, SPLITS[name], optimizer), batch_of(0), key_of(0))
    whole = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(state))
    for device in mesh.devices.flat:
        assert shard_bytes(state, device) <= whole / share * 1.05
    replicated, _ = kj.make_train_step(wide_loss, optimizer, mesh=mesh)(
        kj.TrainState.create(wide_params(), optimizer), batch_of(0), key_of(0))
    assert shard_bytes(replicated, mesh.devices.flat[0]) == whole  # unplaced leaves: replicated


def test_a_sharded_state_checkpoints_and_loads_back_onto_its_sharding(tmp_path):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer, mesh=mesh)
    state, _ = step(placed_state(mesh, SPLITS["fsdp-and-tensor-parallel"], optimizer), batch_of(0), key_of(0))
    kj.save_checkpoint(tmp_path, state, position=1, key=key_of(1))
    template = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), state)
    loaded = kj.load_checkpoint(tmp_path, template).state
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(state), strict=True):
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert loaded.params["w1"].addressable_shards[0].data.shape == (DIM // 2, WIDE // 4)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_inside_the_callers_jit_or_scan_the_state_keeps_its_sharding(axis_type):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer, mesh=mesh)
    state = placed_state(mesh, SPLITS["tensor-parallel"], optimizer)
    batch = batch_of(0)
    after = jax.jit(lambda s: step(s, batch, key_of(0))[0])(state)
    # not gathered to every device
    assert after.params["w1"].sharding.is_equivalent_to(NamedSharding(mesh, P(None, "model")), 2)
    scanned, _ = jax.lax.scan(lambda s, _: (step(s, batch, key_of(0))[0], None), state, None, length=2)
    assert scanned.params["w2"].sharding.is_equivalent_to(NamedSharding(mesh, P("model", None)), 2)


def test_a_state_on_another_mesh_is_refused_naming_the_leaf():
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    reversed_mesh = jax.sharding.Mesh(mesh.devices[::-1], mesh.axis_names, axis_types=mesh.axis_types)
    optimizer = optax.adam(1e-2)
    step = kj.make_train_step(wide_loss, optimizer, mesh=mesh)
    assert hasattr(step, "jitted")  # there before the first call
    with pytest.raises(ValueError, match=r"state.params\['w1'\] is placed on another mesh"):
        step(placed_state(reversed_mesh, SPLITS["tensor-parallel"], optimizer), batch_of(0), key_of(0))


def test_a_template_on_an_abstract_mesh_loads_under_set_mesh_or_is_refused(tmp_path):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    optimizer = optax.adam(1e-2)
    state = placed_state(mesh, SPLITS["tensor-parallel"], optimizer)
    kj.save_checkpoint(tmp_path, state, position=0, key=key_of(0))
    template = jax.eval_shape(lambda: state)  # explicit axes: shardings on an abstract mesh
    with pytest.raises(ValueError, match="abstract mesh"):
        kj.load_checkpoint(tmp_path, template)
    with jax.set_mesh(mesh):
        loaded = kj.load_checkpoint(tmp_path, template).state
    assert loaded.params["w1"].sharding == state.params["w1"].sharding
    np.testing.assert_array_equal(np.asarray(loaded.params["w1"]), np.asarray(state.params["w1"]))
