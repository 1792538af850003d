"""The train state and a jitted, optionally data-parallel, train step for any optax optimizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from karras_jax._validation import mesh_devices
from karras_jax.sharding import auto_axes, on_auto_axes
from karras_jax.training.ema import check_sigma_rels, ema_gamma, ema_update

__all__ = ["TrainState", "make_train_step"]

# optax.tree.norm (optax >= 0.2.5) replaces the deprecated optax.global_norm
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm

LossFn = Callable[[Any, Any, jax.Array], jax.Array]
Metrics = dict[str, jax.Array]


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")


@flax.struct.dataclass
class TrainState:
    """Everything a train step changes, as one pytree.

    Attributes:
      params: The network's weights.
      opt_state: The optax optimizer's state.
      ema: The EMA of the weights (:mod:`karras_jax.training.ema`); sample with these.
      step: Updates done so far, an int32 scalar.
      ema_profiles: Extra power-function EMAs of the weights for post-hoc EMA
        (:mod:`karras_jax.training.posthoc_ema`), one pytree like ``params`` per entry of
        ``ema_sigma_rels``; ``()`` (the default) tracks none.
      ema_sigma_rels: The width sigma_rel of each of ``ema_profiles``, a static tuple of floats
        (part of the pytree's structure: states with other widths are other programs).
    """

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array
    ema_profiles: tuple[Any, ...] = ()
    ema_sigma_rels: tuple[float, ...] = flax.struct.field(pytree_node=False, default=())

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, *,
               ema_profiles: Sequence[float] = ()) -> TrainState:
        """The state before the first update: ``ema`` = a copy of ``params``, ``step`` = 0.

        Args:
          params: The network's initial weights.
          optimizer: Any ``optax.GradientTransformation``.
          ema_profiles: The widths sigma_rel of the extra EMA profiles to track for post-hoc
            EMA, e.g. EDM2's ``(0.05, 0.10)``; each starts as a copy of ``params``.

        Raises:
          TypeError: ``optimizer`` is not an optax transformation, ``ema_profiles`` is not a
            tuple or list of real numbers.
          ValueError: an entry of ``ema_profiles`` is outside (0, 1/sqrt(12)), or one repeats.
        """
        _check_optimizer(optimizer)
        sigma_rels = check_sigma_rels("ema_profiles", ema_profiles)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        copy = lambda: jax.tree_util.tree_map(jnp.array, params)  # noqa: E731
        return cls(params=params, opt_state=optimizer.init(params), ema=copy(), step=jnp.zeros((), jnp.int32),
                   ema_profiles=tuple(copy() for _ in sigma_rels), ema_sigma_rels=sigma_rels)


def _state_to_dict(state: TrainState) -> dict[str, Any]:
    """The checkpoint's view: the four fields of old, plus the profiles and their widths if any."""
    out = {name: flax.serialization.to_state_dict(getattr(state, name))
           for name in ("params", "opt_state", "ema", "step")}
    if state.ema_sigma_rels:
        out["ema_profiles"] = flax.serialization.to_state_dict(list(state.ema_profiles))
        out["ema_sigma_rels"] = np.asarray(state.ema_sigma_rels, np.float64)
    return out


def _state_from_dict(target: TrainState, saved: dict[str, Any]) -> TrainState:
    """Restores a state; a checkpoint without profiles (every older one) loads into a state without."""
    names = ("params", "opt_state", "ema", "step") + (("ema_profiles",) if target.ema_sigma_rels else ())
    missing = [name for name in names if name not in saved]
    if missing:
        raise ValueError(f"the saved state lacks {', '.join(missing)} (a state with ema_profiles "
                         f"{target.ema_sigma_rels} is being restored).")
    if target.ema_sigma_rels:
        widths = tuple(np.asarray(saved.get("ema_sigma_rels", ()), np.float64).tolist())
        if widths != target.ema_sigma_rels:
            raise ValueError(f"the saved EMA profiles have widths {widths}, the state being restored "
                             f"{target.ema_sigma_rels}: create it with ema_profiles={widths}.")
    updates = {name: flax.serialization.from_state_dict(getattr(target, name), saved[name], name=name)
               for name in ("params", "opt_state", "ema", "step")}
    if target.ema_sigma_rels:
        updates["ema_profiles"] = tuple(flax.serialization.from_state_dict(
            list(target.ema_profiles), saved["ema_profiles"], name="ema_profiles"))
    return target.replace(**updates)


flax.serialization.register_serialization_state(TrainState, _state_to_dict, _state_from_dict, override=True)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_sigma_rel: float = 0.05,
                    mesh: Mesh | None = None, axis_name: str | tuple[str, ...] = "data",
                    ) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, Metrics]]:
    r"""A jitted ``train_step(state, batch, key) -> (state, metrics)``.

    One update: the mean over the batch of ``loss_fn(params, batch, key)`` (per-sample
    losses, or a scalar), its gradient, ``optimizer.update`` and ``optax.apply_updates``,
    then the EMA updates (``ema``, and each of ``ema_profiles`` with its own width) and
    ``step + 1``. ``metrics`` holds ``loss`` (the batch mean, before the update) and
    ``grad_norm`` (global norm of the gradient). Pure: the same state, batch and key give the
    same new state. Compiled once; later calls with arrays of the same shapes do not retrace.

    Args:
      loss_fn: ``loss_fn(params, batch, key)``, e.g. ``lambda p, b, k: kj.edm_loss(apply_fn,
        p, b["x"], k, b["label"])``.
      optimizer: Any ``optax.GradientTransformation``.
      ema_sigma_rel: Width of the power-function EMA ``state.ema`` (:func:`karras_jax.ema_gamma`).
        The state's ``ema_profiles`` (for post-hoc EMA) are averaged with the widths the state
        records, ``state.ema_sigma_rels`` (``TrainState.create(..., ema_profiles=(0.05, 0.1))``).
      mesh: Every leaf of ``batch`` is split along its leading axis over ``axis_name`` of
        this mesh (the batch size must divide evenly) and XLA averages the gradients across
        devices (the mean over the whole batch, as on one device). The state keeps its
        sharding: a leaf placed with a ``NamedSharding`` on this mesh (FSDP over the batch
        axis, tensor-parallel over another, e.g. from ``nn.with_partitioning`` and
        ``nn.logical_to_mesh_sharding``) comes back with that sharding, and a leaf that is not
        placed is replicated; a leaf placed on another mesh is refused. The step runs with the
        mesh's axes treated as automatic whatever their declared type
        (:func:`karras_jax.sharding.auto_axes`); called inside your own ``jax.jit`` or
        ``lax.scan`` it places nothing itself (leaves typed with explicit axes keep their
        type; the partitioner places the rest as your program does). ``.jitted`` is
        the program of the last layout called (one is compiled per layout of the state).
      axis_name: The mesh axis (or axes) the batch is split over.

    Returns:
      ``train_step``. Its arguments are not donated: the state passed in stays valid.
    """
    _check_optimizer(optimizer)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    gamma = ema_gamma(ema_sigma_rel)

    def train_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, Metrics]:
        def objective(params: Any) -> jax.Array:
            return jnp.mean(loss_fn(params, batch, key))

        loss, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        if len(state.ema_profiles) != len(state.ema_sigma_rels):
            raise ValueError(f"state.ema_profiles holds {len(state.ema_profiles)} averages for "
                             f"{len(state.ema_sigma_rels)} widths ema_sigma_rels={state.ema_sigma_rels}; "
                             "create the state with TrainState.create(..., ema_profiles=...).")
        profiles = tuple(ema_update(profile, params, step, ema_gamma(sigma_rel))
                         for profile, sigma_rel in zip(state.ema_profiles, state.ema_sigma_rels, strict=True))
        new = state.replace(params=params, opt_state=opt_state, step=step, ema_profiles=profiles,
                            ema=ema_update(state.ema, params, step, gamma))
        return new, {"loss": loss, "grad_norm": _global_norm(grads)}

    if mesh is None:
        return jax.jit(train_step)
    devices, auto = mesh_devices(mesh, axis_name), auto_axes(mesh)
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis_name))
    programs: dict[Any, Any] = {}  # one compiled step per layout of the state (normally one)

    def placement(path: Any, leaf: Any) -> NamedSharding:
        placed = getattr(leaf, "sharding", None)
        if not isinstance(placed, NamedSharding):
            return replicated
        if placed.mesh == mesh:  # the common case, without comparing device arrays leaf by leaf
            return placed
        if (placed.mesh.axis_names, placed.mesh.devices.shape) != (mesh.axis_names, mesh.devices.shape) or (
                placed.mesh.devices != mesh.devices).any():
            raise ValueError(f"state{jax.tree_util.keystr(path)} is placed on another mesh "
                             f"({dict(placed.mesh.shape)} over other devices or in another order) than the "
                             f"train step's {dict(mesh.shape)}; place the state on the step's mesh.")
        return placed

    def on_auto(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, Metrics]:
        return train_step(*jax.tree_util.tree_map(lambda leaf: on_auto_axes(leaf, auto), (state, batch, key)))

    def traced_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, Metrics]:
        # Inside the caller's jit or scan: no placement to make, but a leaf typed with explicit
        # axes gets its type back (a scan's carry must keep it), the rest propagates.
        new, metrics = on_auto(state, batch, key)

        def typed_as(before: Any, after: Any) -> Any:
            placed = getattr(jax.typeof(before), "sharding", None)
            if placed is None or not any(t == AxisType.Explicit for t in placed.mesh.axis_types):
                return after
            return jax.sharding.reshard(after, placed.spec)

        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return jax.tree_util.tree_map(typed_as, state, new), metrics

    def sharded_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, Metrics]:
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((state, batch, key))):
            return traced_step(state, batch, key)
        for leaf in jax.tree_util.tree_leaves(batch):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] % devices:
                raise ValueError(f"every batch leaf's leading axis must divide evenly over the {devices} "
                                 f"devices of mesh axis {axis_name!r}; got shape {jnp.shape(leaf)}.")
        layout = jax.tree_util.tree_map_with_path(placement, state)
        state, batch, key = jax.device_put((state, batch, key), (layout, split, replicated))
        signature = (jax.tree_util.tree_structure(layout), tuple(jax.tree_util.tree_leaves(layout)))
        if signature not in programs:
            programs[signature] = jax.jit(on_auto, out_shardings=(layout, replicated))
        sharded_step.jitted = programs[signature]  # type: ignore[attr-defined]
        return programs[signature](state, batch, key)

    # Until the first call (which compiles for the state's layout): the program for a state
    # whose every leaf is replicated.
    sharded_step.jitted = jax.jit(on_auto, out_shardings=(replicated, replicated))  # type: ignore[attr-defined]
    return sharded_step
