"""Sampling with the batch of seeds sharded over a device mesh (one host or a pod).

Every sample depends only on its own key, so the batch splits over devices with no
communication at all: each device runs the whole sampling loop on its slice of keys
(``jax.shard_map``), with the weights replicated. The same code runs on 8 CPU devices, one
GPU host, or a multi-host TPU pod after ``jax.distributed.initialize()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import DTypeLike

from karras_jax._noise import normalize_keys
from karras_jax._validation import check_arity, check_cond, check_dtype, check_sample_shape
from karras_jax.config import KarrasVeConfig
from karras_jax.sampler import ApplyFn, check_sampler_defaults, override_resolver, sample
from karras_jax.solvers import Solver, get_solver
from karras_jax.state import KarrasVeState

__all__ = ["batch_sharding", "make_sharded_sampler", "sample_sharded"]


def batch_sharding(mesh: Mesh, axis_name: str | tuple[str, ...] = "data") -> NamedSharding:
    """The sharding that splits an array's leading (batch) axis over ``axis_name``."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def make_sharded_sampler(
    apply_fn: ApplyFn,
    state: KarrasVeState,
    config: KarrasVeConfig,
    sample_shape: tuple[int, ...],
    mesh: Mesh,
    *,
    axis_name: str | tuple[str, ...] = "data",
    solver: str | Solver = "heun",
    dtype: DTypeLike = jnp.float32,
) -> Callable[..., jax.Array]:
    """A jitted ``sampler(params, keys, cond=None)`` whose batch is sharded over ``mesh``.

    ``keys`` (B,) and every ``cond`` leaf are split along their leading axis over
    ``axis_name`` (B must divide evenly); ``params`` are replicated; the output
    (B, *sample_shape) comes back sharded the same way. Inside, each device runs
    :func:`karras_jax.sample` on its own keys: no collectives in the loop.

    Args:
      apply_fn: ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``, batch-parallel.
      state, config, sample_shape, solver, dtype: as for :func:`karras_jax.sample`.
      mesh: A ``jax.sharding.Mesh``, e.g. ``jax.make_mesh((jax.device_count(),), ("data",))``.
      axis_name: The mesh axis (or axes) the batch is split over.

    Everything is checked once here (a ``config=``/``state=`` passed to a call is checked
    then; shapes at trace time), so a call with keys already on the batch sharding costs
    what the jitted program's dispatch costs.
    """
    sample_shape = check_sample_shape(sample_shape)
    solver = get_solver(solver)
    dtype = check_dtype(dtype)
    _check_axis(mesh, axis_name)
    check_arity("apply_fn", apply_fn, "apply_fn(params, x, sigma, cond)", 4)
    default_state, default_config = check_sampler_defaults(state, config, dtype, on_device=True)
    resolve = override_resolver(default_state, default_config, dtype)
    spec = PartitionSpec(axis_name)
    sharding = NamedSharding(mesh, spec)

    def local(params: Any, keys: jax.Array, cond: Any, config: KarrasVeConfig,
              state: KarrasVeState) -> jax.Array:
        def denoise_fn(x: jax.Array, sigma: jax.Array, c: Any) -> jax.Array:
            return apply_fn(params, x, sigma, c)

        return sample(denoise_fn, keys, state, config, sample_shape, cond, solver, dtype=dtype)

    @jax.jit
    def run(params: Any, keys: jax.Array, cond: Any, config: KarrasVeConfig,
            state: KarrasVeState) -> jax.Array:
        keys = normalize_keys(keys)
        _check_divisible(keys.shape[0], mesh, axis_name)
        check_cond(cond, keys.shape[0])
        cond_spec = jax.tree_util.tree_map(lambda _: spec, cond)
        mapped = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), spec, cond_spec, PartitionSpec(), PartitionSpec()),
            out_specs=spec,
            check_vma=False,
        )
        return mapped(params, keys, cond, config, state)

    def sampler(params: Any, keys: jax.Array, cond: Any = None, *,
                config: KarrasVeConfig | None = None,
                state: KarrasVeState | None = None) -> jax.Array:
        if not _on(keys, sharding):
            keys = normalize_keys(keys)
            _check_divisible(keys.shape[0], mesh, axis_name)
            keys = _place(keys, sharding)
        if cond is not None:
            cond = jax.tree_util.tree_map(lambda leaf: _place(leaf, sharding), cond)
        if config is None and state is None:
            return run(params, keys, cond, default_config, default_state)
        state, config = resolve(state, config)
        return run(params, keys, cond, config, state)

    sampler.jitted = run  # type: ignore[attr-defined]
    return sampler


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
        explicit = any(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types)
        if explicit:
            return jax.sharding.reshard(array, sharding)
        return jax.lax.with_sharding_constraint(array, sharding)
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return array
    # Equivalent placements are not enough: with explicit mesh axes shard_map compares specs,
    # and a 1-device array is "equivalent" to any sharding over a 1-device mesh.
    current = getattr(array, "sharding", None)
    if (isinstance(current, NamedSharding) and current.mesh == sharding.mesh
            and current.spec[:1] == sharding.spec[:1]):
        return array
    return jax.device_put(array, sharding)


def _check_axis(mesh: Mesh, axis_name: str | tuple[str, ...]) -> tuple[str, ...]:
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    for name in names:
        if name not in mesh.shape:
            raise ValueError(f"axis_name {name!r} is not an axis of the mesh {dict(mesh.shape)}.")
    return names


def _check_divisible(batch: int, mesh: Mesh, axis_name: str | tuple[str, ...]) -> None:
    names = _check_axis(mesh, axis_name)
    parts = 1
    for name in names:
        parts *= mesh.shape[name]
    if batch % parts:
        raise ValueError(
            f"the batch of keys (B={batch}) must divide evenly over the {parts} devices of mesh "
            f"axis {axis_name!r}."
        )


def sample_sharded(
    denoise_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    keys: jax.Array,
    state: KarrasVeState,
    config: KarrasVeConfig,
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
