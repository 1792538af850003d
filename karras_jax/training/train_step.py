"""The train state and a jitted, optionally data-parallel, train step for any optax optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from karras_jax._validation import mesh_devices
from karras_jax.training.ema import ema_gamma, ema_update

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
    """

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        """The state before the first update: ``ema`` = a copy of ``params``, ``step`` = 0."""
        _check_optimizer(optimizer)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        return cls(params=params, opt_state=optimizer.init(params),
                   ema=jax.tree_util.tree_map(jnp.array, params), step=jnp.zeros((), jnp.int32))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_sigma_rel: float = 0.05,
                    mesh: Mesh | None = None, axis_name: str | tuple[str, ...] = "data",
                    ) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, Metrics]]:
    r"""A jitted ``train_step(state, batch, key) -> (state, metrics)``.

    One update: the mean over the batch of ``loss_fn(params, batch, key)`` (per-sample
    losses, or a scalar), its gradient, ``optimizer.update`` and ``optax.apply_updates``,
    then the EMA update and ``step + 1``. ``metrics`` holds ``loss`` (the batch mean, before
    the update) and ``grad_norm`` (global norm of the gradient). Pure: the same state, batch
    and key give the same new state. Compiled once; later calls with arrays of the same
    shapes do not retrace.

    Args:
      loss_fn: ``loss_fn(params, batch, key)``, e.g. ``lambda p, b, k: kj.edm_loss(apply_fn,
        p, b["x"], k, b["label"])``.
      optimizer: Any ``optax.GradientTransformation``.
      ema_sigma_rel: Width of the power-function EMA (:func:`karras_jax.ema_gamma`).
      mesh: Data parallelism: every leaf of ``batch`` is split along its leading axis over
        ``axis_name`` of this mesh, the state and key are replicated, and XLA averages the
        gradients across devices (the mean over the whole batch, as on one device). The
        batch size must divide evenly. The step runs on the mesh's devices with its axes
        treated as ``AxisType.Auto`` whatever their declared type.
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
        new = TrainState(params=params, opt_state=opt_state, ema=ema_update(state.ema, params, step, gamma),
                         step=step)
        return new, {"loss": loss, "grad_norm": _global_norm(grads)}

    if mesh is None:
        return jax.jit(train_step)
    devices = mesh_devices(mesh, axis_name)
    # Auto axes: XLA partitions the step (gradient all-reduce included). On jax.make_mesh's
    # default Explicit axes a label lookup (nn.Embed) in a sharded batch fails to trace.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec(axis_name))
    jitted = jax.jit(train_step, out_shardings=replicated)

    def sharded_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, Metrics]:
        for leaf in jax.tree_util.tree_leaves(batch):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] % devices:
                raise ValueError(f"every batch leaf's leading axis must divide evenly over the {devices} "
                                 f"devices of mesh axis {axis_name!r}; got shape {jnp.shape(leaf)}.")
        batch = jax.device_put(batch, split)
        state, key = jax.device_put((state, key), replicated)
        return jitted(state, batch, key)

    sharded_step.jitted = jitted  # type: ignore[attr-defined]
    return sharded_step
