"""Per-key normal draws for a batch of keys: the noise stream of the sampler.

``normal_per_key(keys, shape, dtype)[b] == jax.random.normal(keys[b], shape, dtype)``
bitwise, for every key implementation, at the lowest cost we know of:

* default ``threefry2x32`` keys: JAX lowers the Threefry hash on CPU as a rolled loop of
  five iterations that copies its state every round and cannot fuse with what consumes
  the bits; on a large sample that draw costs more than the rest of a Heun step. Here the
  same hash is written out unrolled in ``jax.numpy`` and handed to ``jax.random.normal``
  through a PRNG implementation of our own, so the bits, and the bits-to-normal transform
  (JAX's own), are unchanged while XLA fuses the whole draw into one elementwise loop.
  Used only where the bits are provably JAX's: with ``jax_threefry_partitionable`` on
  (JAX's default) and fewer than 2**32 numbers per key.
* ``rbg`` / ``unsafe_rbg`` keys: under ``vmap`` JAX draws (and, for ``unsafe_rbg``, splits)
  a whole batch of these from the first key, which would make a sample depend on its
  neighbours; they are split, folded and drawn one key at a time with ``lax.map`` instead.
  A ``vmap`` the caller puts *around* the sampler batches that ``lax.map`` again, so with
  rbg keys pass the batch of keys to one call rather than vmapping single-seed calls.
* anything else: ``vmap`` of ``jax.random.normal``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jex_random
from jax.typing import DTypeLike

from karras_jax._validation import as_typed_keys, carry_dtype, check_dtype, check_sample_shape
from karras_jax.state import KarrasVeState, check_state

__all__ = ["churn_keys", "churn_noise", "fast_keys", "fold_in_per_key", "initial_noise", "normal_per_key",
           "paint_keys", "paint_noise", "solver_keys", "solver_noise", "split_per_key", "start_sample",
           "step_noise"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array,
                  x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for group in range(5):
        for rot in _ROTATIONS[group % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, rot) ^ x1
        x1 = x1 + ks[(group + 1) % 3]
        x2 = x2 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x1, x2


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    # The partitionable Threefry stream: hash the (hi, lo) words of a row-major 64-bit
    # counter; with fewer than 2**32 numbers the high word is 0.
    size = math.prod(shape)
    lo = jax.lax.iota(np.uint32, size).reshape(shape)
    hi = jnp.zeros(shape, np.uint32)
    bits1, bits2 = _threefry2x32(key[0], key[1], hi, lo)
    if bit_width == 64:
        wide = np.dtype(np.uint64)
        return (bits1.astype(wide) << wide.type(32)) | bits2.astype(wide)
    bits = bits1 ^ bits2
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


def _delegate_split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.key_data(jax.random.split(jax.random.wrap_key_data(key), shape))


def _fold_in(key: jax.Array, data: Any) -> jax.Array:
    # JAX's Threefry fold_in: hash the counter pair (0, data) under the key.
    out1, out2 = _threefry2x32(key[0], key[1], jnp.zeros((), np.uint32),
                               jnp.asarray(data, np.uint32))
    return jnp.stack([out1, out2])


def _seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed))


_UNROLLED = jex_random.define_prng_impl(key_shape=(2,), seed=_seed, split=_delegate_split,
                                        random_bits=_random_bits, fold_in=_fold_in,
                                        name="karras_jax_threefry2x32_unrolled", tag="kjt")


def _impl_name(keys: jax.Array) -> str:
    return str(jax.random.key_impl(keys))


def fast_keys(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The same keys, re-typed so that ``fold_in`` and draws of ``shape`` use the unrolled hash.

    Keys of other implementations, or draws JAX would make differently (the
    non-partitionable Threefry stream, 2**32 numbers or more), come back unchanged.
    """
    if (_impl_name(keys) == "threefry2x32" and jax.config.jax_threefry_partitionable
            and math.prod(shape) < 2**32):
        return jax.random.wrap_key_data(jax.random.key_data(keys), impl=_UNROLLED)
    return keys


def _per_key(fn: Any, keys: jax.Array, *args: Any) -> Any:
    """``fn`` applied to each key: ``lax.map`` for rbg keys (their batched forms mix keys)."""
    if _impl_name(keys) in ("rbg", "unsafe_rbg"):
        if (getattr(jax.typeof(keys).sharding, "spec", None) or (None,))[0] is not None:
            keys = jax.sharding.reshard(keys, jax.sharding.PartitionSpec())  # a scan needs the whole axis
        return jax.lax.map(lambda k: fn(k, *args), keys)
    return jax.vmap(fn, in_axes=(0, *([None] * len(args))))(keys, *args)


def split_per_key(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jax.random.split`` of each key of a batch: (B,) keys -> two (B,) halves."""
    pairs = _per_key(jax.random.split, keys)
    return pairs[:, 0], pairs[:, 1]


def fold_in_per_key(keys: jax.Array, data: Any) -> jax.Array:
    """``jax.random.fold_in(k, data)`` for each key ``k`` of a batch."""
    return _per_key(jax.random.fold_in, keys, data)


def normal_per_key(keys: jax.Array, shape: tuple[int, ...], dtype: DTypeLike) -> jax.Array:
    """``stack([jax.random.normal(k, shape, dtype) for k in keys])``, bitwise, fast.

    Args:
      keys: (B,) typed PRNG keys (pass them through :func:`fast_keys` once, outside loops).
      shape: Shape of one draw.
      dtype: Floating dtype of the draw.

    Returns:
      (B, *shape) standard normals.
    """
    return _per_key(lambda k: jax.random.normal(k, shape, dtype), keys)


def start_sample(keys: jax.Array, init_noise_sigma: jax.Array, sample_shape: tuple[int, ...],
                 dtype: jnp.dtype) -> jax.Array:
    """x_0 of the noise stream in the carry dtype (float32, or float64 under x64).

    The normals are drawn in the carry dtype whatever ``dtype`` is: a bfloat16 draw has 8
    bits of mantissa through the inverse CDF (coarse, its tails cut), too poor to be noise.
    At an infinite start level (a flow model's t = 1) the sample is held as its finite limit
    x_0 / sigma_0, the unit normals themselves.
    """
    k_init, _ = split_per_key(keys)
    carry = carry_dtype(dtype)
    z = normal_per_key(fast_keys(k_init, sample_shape), sample_shape, carry)
    scale = init_noise_sigma.astype(carry)
    return jnp.where(jnp.isinf(scale), jnp.ones_like(scale), scale) * z


def churn_keys(keys: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
    """The per-sample churn keys ``split(k_b)[1]``, ready for :func:`churn_noise`."""
    _, k_churn = split_per_key(keys)
    return fast_keys(k_churn, sample_shape)


def churn_noise(k_churn: jax.Array, step: Any, sample_shape: tuple[int, ...],
                dtype: jnp.dtype) -> jax.Array:
    """The unscaled churn normals of step ``step`` in the carry dtype of ``dtype``.

    ``normal(fold_in(k_churn_b, step))`` per sample, drawn like :func:`start_sample`'s.
    """
    return normal_per_key(fold_in_per_key(k_churn, step), sample_shape, carry_dtype(dtype))


def solver_keys(keys: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
    """The per-sample solver keys ``split(k_b, 3)[2]``, a third stream beside start and churn."""
    return fast_keys(_per_key(lambda k: jax.random.split(k, 3)[2], keys), sample_shape)


def paint_keys(keys: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
    """The per-sample inpainting keys ``split(k_b, 4)[3]``, a fourth stream."""
    return fast_keys(_per_key(lambda k: jax.random.split(k, 4)[3], keys), sample_shape)


def paint_noise(k_paint: jax.Array, level: Any, sample_shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """The normals that noise the known region to level ``level``: ``normal(fold_in(k_paint_b, level))``."""
    return normal_per_key(fold_in_per_key(k_paint, level), sample_shape, carry_dtype(dtype))


def solver_noise(k_solver: jax.Array, step: Any, draw: int, sample_shape: tuple[int, ...],
                 dtype: jnp.dtype) -> jax.Array:
    """Normals number ``draw`` of step ``step``: ``normal(fold_in(fold_in(k_solver_b, step), draw))``."""
    keys = fold_in_per_key(fold_in_per_key(k_solver, step), draw)
    return normal_per_key(keys, sample_shape, carry_dtype(dtype))


def step_noise(keys: jax.Array, step: Any, sample_shape: tuple[int, ...], draw: int = 0) -> jax.Array:
    r"""The normals a stochastic solver draws at step ``step`` (docs/noise.md), to feed other code.

    For sample b with key :math:`k_b`: ``normal(fold_in(fold_in(split(k_b, 3)[2], step), draw),
    sample_shape)`` in float32 (float64 under x64): a stream of its own, apart from the
    start noise and the churn, so that a solver's noise composes with Algorithm 2's churn.
    ``step`` is the 0-based step of the loop (with restarts, of the expanded loop).

    Args:
      keys: (B,) typed keys or (B, 2) raw uint32 keys, one per sample.
      step: The 0-based step index, an int in [0, 2**31) (or a traced integer scalar).
      sample_shape: Shape of one sample.
      draw: Which draw of the step, an int in [0, 2**31) (0 for the first).

    Returns:
      (B, *sample_shape) standard normals.

    Raises:
      ValueError: ``step`` or ``draw`` not an int in range (a bool or a float neither).

    >>> import jax, karras_jax as kj
    >>> kj.step_noise(jax.random.split(jax.random.key(0), 3), 5, (2,)).shape
    (3, 2)
    """
    keys = as_typed_keys("keys", keys, batch=True)
    sample_shape = check_sample_shape(sample_shape)
    for name, value in (("step", step), ("draw", draw)):
        if name == "step" and isinstance(value, jax.core.Tracer) and jnp.issubdtype(value.dtype, jnp.integer):
            continue  # a traced step (inside a loop) is the caller's to keep in range
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                and 0 <= value < 2**31):
            raise ValueError(f"{name} must be an int in [0, 2**31), got {value!r}.")
    step, draw = jnp.asarray(step, jnp.int32), int(draw)
    return solver_noise(solver_keys(keys, sample_shape), step, draw, sample_shape, jnp.float32)


def initial_noise(keys: jax.Array, state: KarrasVeState, sample_shape: tuple[int, ...],
                  dtype: DTypeLike = jnp.float32) -> jax.Array:
    """x_0 of the noise stream: ``init_noise_sigma * normal(split(k_b)[0], sample_shape)``.

    Useful to inspect or reuse the start noise (pass it back as ``x_init``; with the default
    ``dtype=float32`` that is exactly the sampler's start, a bfloat16 one is rounded).

    Args:
      keys: (B,) typed keys or (B, 2) raw uint32 keys, one per sample.
      state: From :func:`karras_jax.set_timesteps` (supplies ``init_noise_sigma``).
      sample_shape: Shape of one sample.
      dtype: The dtype returned (the normals are drawn in float32, or float64 under x64,
        and rounded to it once).

    Returns:
      (B, *sample_shape) in ``dtype``.
    """
    check_state(state)
    keys = as_typed_keys("keys", keys, batch=True)
    sample_shape = check_sample_shape(sample_shape)
    dtype = check_dtype(dtype)
    return start_sample(keys, state.init_noise_sigma, sample_shape, dtype).astype(dtype)
