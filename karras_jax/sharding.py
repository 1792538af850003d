"""Sampling with the batch of seeds sharded over a device mesh, and weights sharded as they are.

Every sample depends only on its own key, so the batch splits over a mesh axis with no
communication: the sampling loop is one ``jax.jit`` program whose keys, ``cond``, ``x_init``
and output are split along the batch over ``axis_name``, while the weights keep whatever
``NamedSharding`` they arrive with (replicated, FSDP over the batch axis, tensor-parallel over
a model axis, or a mix). XLA's partitioner then inserts only the collectives the network's
own layers need (none for replicated weights). The same code runs on 8 CPU devices, one GPU
host, or a multi-host TPU pod after ``jax.distributed.initialize()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jax.typing import DTypeLike

from karras_jax._compiled import check_start, loop_config, prepare, wrap_program
from karras_jax._validation import (
    as_typed_keys,
    check_arity,
    check_cond,
    check_dtype,
    check_sample_shape,
    mesh_devices,
)
from karras_jax.config import KarrasVeConfig
from karras_jax.sampler import Painted, check_jump, check_start_step, sample, unbundle, with_paint
from karras_jax.solvers import Solver, get_solver
from karras_jax.state import KarrasVeState

__all__ = ["batch_sharding", "make_sharded_sampler", "sample_sharded"]


def batch_sharding(mesh: Mesh, axis_name: str | tuple[str, ...] = "data") -> NamedSharding:
    """The sharding that splits an array's leading (batch) axis over ``axis_name``."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def make_sharded_sampler(
    apply_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
    state: KarrasVeState,
    config: KarrasVeConfig | None,
    sample_shape: tuple[int, ...],
    mesh: Mesh,
    *,
    axis_name: str | tuple[str, ...] = "data",
    solver: str | Solver = "heun",
    dtype: DTypeLike = jnp.float32,
    start_step: int | None = None,
    strength: float | None = None,
    jump: tuple[int, int] | None = None,
) -> Callable[..., jax.Array]:
    """A jitted ``sampler(params, keys, cond=None, x_init=None, *, config=, state=, mask=, known=)``.

    The sampler of :func:`karras_jax.make_sampler`, sharded over ``mesh``:
    ``keys`` (B,), every ``cond`` leaf and ``x_init`` are split along their leading axis
    over ``axis_name`` (B must divide evenly); the output (B, *sample_shape) comes back
    sharded the same way. ``params`` keep their sharding: place them with
    ``jax.device_put(params, shardings)`` (``NamedSharding`` on ``mesh``) and no device holds
    more of a sharded weight than one layer's computation gathers; unplaced params are
    replicated. Checks, overrides and recompilation are as for
    :func:`karras_jax.make_sampler`; ``sampler.lower(params, keys, cond=None, x_init=None)``
    lowers the program (for its ``cost_analysis`` and ``memory_analysis``). Inpainting's
    per-call ``mask``/``known`` are split along the batch like ``x_init`` when their shape is
    (B, *sample_shape), and replicated otherwise (a mask shared by the batch).

    Args:
      apply_fn: ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``, batch-parallel.
      state, config, sample_shape, solver, dtype, start_step, strength, jump: as for
        :func:`karras_jax.sample` (with image-to-image every call needs ``x_init``; with
        ``jump``, ``mask`` and ``known``).
      mesh: A ``jax.sharding.Mesh``, e.g. ``jax.make_mesh((jax.device_count(),), ("data",))``
        or ``jax.make_mesh((2, 4), ("data", "model"))``.
      axis_name: The mesh axis (or axes) the batch is split over.
    """
    sample_shape, solver, dtype = check_sample_shape(sample_shape), get_solver(solver), check_dtype(dtype)
    check_start_step(start_step, strength)
    check_jump(jump)
    devices = mesh_devices(mesh, axis_name)
    check_arity("apply_fn", apply_fn, "apply_fn(params, x, sigma, cond)", 4)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    auto = auto_axes(mesh)
    batch = NamedSharding(auto, sharding.spec)

    def split_keys(keys: Any) -> jax.Array:
        keys = as_typed_keys("keys", keys, batch=True)
        if keys.shape[0] % devices:
            raise ValueError(f"the batch of keys (B={keys.shape[0]}) must divide evenly over the {devices} "
                             f"devices of mesh axis {axis_name!r}.")
        return keys

    def program(params: Any, keys: jax.Array, cond: Any, x_init: Any, state: KarrasVeState,
                draws: bool = True) -> jax.Array:
        check_start(apply_fn, state, solver)
        x_init, paint = unbundle(x_init)
        params = jax.tree_util.tree_map(lambda leaf: on_auto_axes(leaf, auto), params)
        keys, cond, x_init = _constrain((split_keys(keys), cond, x_init), batch)
        paint_specs = tuple(None if v is None else _paint_spec(v, keys.shape[0], sample_shape, batch.spec)
                            for v in paint)
        paint = tuple(value if spec is None else _constrain(value, NamedSharding(auto, spec))
                      for value, spec in zip(paint, paint_specs, strict=True))

        def run(params: Any, keys: jax.Array, cond: Any, x_init: Any, mask: Any, known: Any,
                state: KarrasVeState) -> jax.Array:
            return sample(lambda x, sigma, c: apply_fn(params, x, sigma, c), keys, state,
                          loop_config(state, draws), sample_shape, cond, solver, x_init=x_init, dtype=dtype,
                          start_step=start_step, strength=strength, mask=mask, known=known, jump=jump)

        if str(jax.random.key_impl(keys)) in ("rbg", "unsafe_rbg"):
            # rbg keys are drawn one at a time (lax.map: their batched draws mix keys), which
            # the partitioner cannot split: map each device's own keys (the batch axis manual,
            # the others still automatic for the weights).
            split = jax.tree_util.tree_map(lambda _: batch.spec, (cond, x_init))
            specs = (PartitionSpec(), batch.spec, *split, *paint_specs, PartitionSpec())
            manual = {axis_name} if isinstance(axis_name, str) else set(axis_name)
            run = jax.shard_map(run, mesh=auto, in_specs=specs, out_specs=batch.spec, axis_names=manual,
                                check_vma=False)
        return _constrain(run(params, keys, cond, x_init, *paint, state), batch)

    def place(keys: Any, cond: Any, x_init: Any) -> tuple[Any, Any, Any]:
        if not _on(keys, sharding):
            keys = _place(split_keys(keys), sharding)  # refused before the copy to the devices
        if cond is None and x_init is None:
            return keys, cond, x_init
        check_cond(cond, keys.shape[0])  # named before a leaf that cannot be split reaches device_put
        cond = jax.tree_util.tree_map(lambda leaf: _place(leaf, sharding), cond)
        if not isinstance(x_init, Painted):
            return keys, cond, None if x_init is None else _place(x_init, sharding)
        # a mask shared by the batch is left where it is: the program replicates it
        shared = [_paint_spec(v, keys.shape[0], sample_shape, sharding.spec) != sharding.spec
                  for v in (x_init.mask, x_init.known)]
        mask, known = (v if v is None or keep else _place(v, sharding)
                       for v, keep in zip((x_init.mask, x_init.known), shared, strict=True))
        image = None if x_init.image is None else _place(x_init.image, sharding)
        return keys, cond, Painted(image, mask, known)

    run = jax.jit(program, static_argnums=5, out_shardings=sharding)
    default = prepare(state, config, dtype)
    check_start(apply_fn, default.state, solver)
    return with_paint(wrap_program(run, default, dtype, place))


def _paint_spec(value: Any, batch_size: int, sample_shape: tuple[int, ...],
                split: PartitionSpec) -> PartitionSpec:
    """``split`` for a mask or known value shaped (B, *sample_shape), replicated for any other shape."""
    shape = jnp.shape(value)
    return split if len(shape) == 1 + len(sample_shape) and shape[0] == batch_size else PartitionSpec()


def _constrain(tree: Any, sharding: NamedSharding) -> Any:
    """Every leaf placed as ``sharding`` says, inside a traced program."""
    explicit = any(t == AxisType.Explicit for t in sharding.mesh.axis_types)
    move = jax.sharding.reshard if explicit else jax.lax.with_sharding_constraint
    return jax.tree_util.tree_map(lambda leaf: move(leaf, sharding), tree)


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis automatic: the mesh the sampler's and train step's programs run on.

    XLA's partitioner then places what the network computes, so a network written for one
    device (a label lookup, a row-split product) needs no explicit-sharding annotations on
    ``jax.make_mesh``'s default explicit axes; inputs and outputs keep the caller's mesh.
    """
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def on_auto_axes(leaf: Any, auto: Mesh) -> Any:
    """A traced array split over explicit mesh axes, seen as the same split over ``auto``'s axes."""
    placed = getattr(jax.typeof(leaf), "sharding", None)
    if placed is None or not any(t == AxisType.Explicit for t in placed.mesh.axis_types):
        return leaf
    return jax.lax.with_sharding_constraint(leaf, NamedSharding(auto, placed.spec))


def _on(array: Any, sharding: NamedSharding) -> bool:
    """Whether ``array`` is already placed on ``sharding`` (the per-call fast path).

    A typed key array works its sharding out anew on every ``.sharding`` (about 20 us); the
    uint32 array under it has the same placement and answers in well under a microsecond.
    Without that attribute (raw keys, tracers, another JAX version) the public path answers.
    """
    try:
        placed = array._base_array.sharding
    except AttributeError:
        if not isinstance(array, jax.Array) or isinstance(array, jax.core.Tracer):
            return False
        placed = array.sharding
    return placed is sharding or placed == sharding


def _place(array: Any, sharding: NamedSharding) -> Any:
    """Puts a local array on the batch sharding; global (multi-host) arrays stay as they are."""
    if isinstance(array, jax.core.Tracer):  # inside the caller's jit: constrain, don't move
        return _constrain(array, sharding)
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return array
    # Equivalent placements are not enough: with explicit mesh axes a program compares specs,
    # and a 1-device array is "equivalent" to any sharding over a 1-device mesh.
    current = getattr(array, "sharding", None)
    if (isinstance(current, NamedSharding) and current.mesh == sharding.mesh
            and current.spec[:1] == sharding.spec[:1]):
        return array
    return jax.device_put(array, sharding)


def sample_sharded(
    denoise_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    keys: jax.Array,
    state: KarrasVeState,
    config: KarrasVeConfig | None,
    sample_shape: tuple[int, ...],
    mesh: Mesh,
    cond: Any = None,
    solver: str | Solver = "heun",
    *,
    axis_name: str | tuple[str, ...] = "data",
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """:func:`karras_jax.sample` with the batch sharded over ``mesh`` (one-shot form).

    ``denoise_fn(x, sigma, cond)`` as for :func:`karras_jax.sample`; anything it closes
    over is replicated. For repeated calls with new weights use
    :func:`make_sharded_sampler`, which keeps the weights as traced arguments.

    Returns:
      (B, *sample_shape), sharded along the batch over ``axis_name``.
    """
    sampler = make_sharded_sampler(
        lambda _, x, sigma, c: denoise_fn(x, sigma, c), state, config, sample_shape, mesh,
        axis_name=axis_name, solver=solver, dtype=dtype,
    )
    return sampler(None, keys, cond)
