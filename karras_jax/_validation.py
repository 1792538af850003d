"""Input checks shared by every public entry point.

Values are checked only where they are concrete. Tracers (inside ``jit``,
``vmap`` or ``grad``) pass through untouched, so a traced hyperparameter never
forces a host round-trip; the same call made eagerly gets the full check.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

__all__ = ["REAL", "as_typed_keys", "carry_dtype", "check_arity", "check_cond", "check_count", "check_dtype",
           "check_finite_array", "check_num_steps", "check_representable_levels", "check_sample_shape",
           "check_sigma_range", "check_values", "concrete_value", "level_dtype", "mesh_devices"]


def level_dtype() -> jnp.dtype:
    """The dtype all noise-level arithmetic runs in: float32, or float64 under x64."""
    return jnp.dtype(jnp.result_type(float))


def carry_dtype(sample_dtype: DTypeLike) -> jnp.dtype:
    """The dtype samples are carried and updated in: the wider of ``sample_dtype`` and the level dtype."""
    return jnp.promote_types(sample_dtype, level_dtype())


def concrete_value(name: str, value: Any) -> np.ndarray | None:
    """Returns ``value`` as a float64 NumPy array when it is concrete, else None.

    Raises:
      TypeError: ``value`` is a string, bool, complex number or a non-numeric array.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got the string {value!r}.")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got the bool {value!r}.")
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, numbers.Real):
        try:
            return np.asarray(float(value))
        except OverflowError:  # an int too large for a float: report it as not finite
            return np.asarray(np.inf if value > 0 else -np.inf)
    if isinstance(value, complex | numbers.Complex):
        raise TypeError(f"{name} must be a real number, got the complex number {value!r}.")
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        dtype = np.dtype(value.dtype) if not jnp.issubdtype(value.dtype, jax.dtypes.prng_key) else None
        if dtype is None or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
                                 or dtype == jnp.bfloat16):
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {value.dtype}.")
        return np.asarray(value, dtype=np.float64)
    # Anything else (placeholders JAX builds while rebuilding pytrees) is not ours to judge.
    return None


def check_num_steps(num_inference_steps: Any) -> int:
    """Checks that the step count is a concrete positive Python (or NumPy) integer and returns it.

    Raises:
      TypeError: not an integer, or traced (it fixes array shapes and the loop length).
      ValueError: below 1.
    """
    if not _is_int(num_inference_steps):
        why = ("a concrete Python int (it fixes array shapes and the loop length); got a traced value: mark "
               "it static or compute it outside jit" if isinstance(num_inference_steps, jax.core.Tracer)
               else f"a positive int, got {num_inference_steps!r}")
        raise TypeError(f"num_inference_steps must be {why}.")
    return check_count("num_inference_steps", num_inference_steps)


def _is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy integer and not a bool (``True`` is never a count)."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def as_typed_keys(name: str, keys: Any, *, batch: bool) -> jax.Array:
    """Typed PRNG keys from typed keys or raw uint32 ones (``jax.random.PRNGKey``).

    Only dtypes and shapes are read, so tracers pass too.

    Args:
      name: The parameter, for messages.
      keys: The keys.
      batch: True: a (B,) batch of keys (raw: (B, 2)); False: one key or a batch.

    Raises:
      TypeError: not PRNG keys.
      ValueError: the wrong number of dimensions.
    """
    dtype, shape = getattr(keys, "dtype", None), getattr(keys, "shape", None)
    example = "jax.random.split(jax.random.key(0), B)"
    if dtype is None or shape is None:
        raise TypeError(f"{name} must be PRNG keys, e.g. {example}; got {type(keys).__name__}.")
    ndims = (1,) if batch else (0, 1)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if len(shape) not in ndims:
            single = "; for one sample pass key[None] or jax.random.split(key, 1)" if batch else ""
            wanted = "a (B,) batch of keys" if batch else "one key or a (B,) batch"
            raise ValueError(f"{name} must be {wanted}, got shape {shape}{single}.")
        return keys
    if dtype == jnp.uint32:
        width = jax.random.key_data(jax.random.key(0)).shape[-1]
        if len(shape) - 1 not in ndims or shape[-1] != width:
            allowed = f"(B, {width})" if batch else f"({width},) or (B, {width})"
            raise ValueError(f"raw uint32 {name} must have shape {allowed} (jax.random.PRNGKey), got shape "
                             f"{shape}{'; for one sample pass key[None]' if batch else ''}.")
        return jax.random.wrap_key_data(keys)
    raise TypeError(f"{name} must be typed PRNG keys (jax.random.key / jax.random.split) or raw uint32 "
                    f"keys, got dtype {dtype}.")


def mesh_devices(mesh: Any, axis_name: str | tuple[str, ...]) -> int:
    """The number of devices along ``axis_name`` (one axis or several) of a mesh.

    Raises:
      ValueError: a name that is not an axis of the mesh.
    """
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    for axis in names:
        if axis not in mesh.shape:
            raise ValueError(f"axis_name {axis!r} is not an axis of the mesh {dict(mesh.shape)}.")
    return math.prod(mesh.shape[axis] for axis in names)


REAL = (numbers.Real, np.ndarray, np.generic, jax.Array)  # what a config field may hold to compute with

# KarrasVeConfig's range rules, checked in this order once every concrete value is finite:
# (field, relation, its test, the field it is compared with or None for 0).
_RULES = (("sigma_min", ">", np.greater, None), ("s_churn", ">=", np.greater_equal, None),
          ("s_noise", ">=", np.greater_equal, None), ("sigma_max", ">", np.greater, "sigma_min"),
          ("s_min", "<=", np.less_equal, "s_max"))


def check_values(given: dict[str, Any], *, schedule: bool = False) -> None:
    """Checks config fields ``given`` (name -> value): no containers, concrete values finite, the rules.

    A rule is checked when its fields are all given and concrete (traced values pass).
    ``schedule=True`` is :func:`check_sigma_range`'s flavour: every
    value must be a real number or an array (no None placeholder), and a value compared
    with 0 is shown as given rather than as a float.

    Raises:
      TypeError: a value is not a real number (a list, string, bool, complex, ...).
      ValueError: a value is not finite or breaks a rule (the message names it).
    """
    for name, value in given.items():
        if isinstance(value, (list, tuple, dict, set)) or (schedule and not isinstance(value, REAL)):
            raise TypeError(f"{name} must be a real number or an array, got {type(value).__name__} {value!r}"
                            f"{'.' if schedule else '; wrap a sweep of values in jnp.asarray.'}")
    values = {name: concrete_value(name, value) for name, value in given.items()}
    for name, value in values.items():
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {given[name]!r}.")
    for name, relation, holds, other in _RULES:
        value, bound = values.get(name), values.get(other) if other else 0
        if value is not None and bound is not None and not np.all(holds(value, bound)):
            got = (f"{name}={given[name]!r} and {other}={given[other]!r}" if other
                   else repr(given[name] if schedule else value.tolist()))
            raise ValueError(f"{name} must be {relation} {other or 0}, got {got}.")


def check_sigma_range(sigma_min: Any, sigma_max: Any) -> None:
    """Checks a schedule's range: concrete values finite, 0 < sigma_min < sigma_max.

    The same rule (and messages) as :class:`~karras_jax.KarrasVeConfig`'s; traced values pass.

    Raises:
      TypeError: a bound is not a real number or an array of them (None, a list, a string).
      ValueError: naming the bound that is not finite, sigma_min <= 0, or sigma_max <= sigma_min.
    """
    check_values({"sigma_min": sigma_min, "sigma_max": sigma_max}, schedule=True)


def check_sample_shape(sample_shape: Any) -> tuple[int, ...]:
    """Checks that ``sample_shape`` is a tuple of positive ints and returns it as one."""
    if not isinstance(sample_shape, tuple) or not all(_is_int(d) and d > 0 for d in sample_shape):
        raise ValueError(f"sample_shape must be a tuple of positive ints, got {sample_shape!r}.")
    return tuple(int(d) for d in sample_shape)


def check_dtype(dtype: DTypeLike) -> jnp.dtype:
    """Checks that ``dtype`` names a floating-point dtype and returns it."""
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")
    return dtype


def check_cond(cond: Any, batch: int) -> None:
    """Checks that every leaf of ``cond`` has leading dimension ``batch``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != batch:
            where = jax.tree_util.keystr(path) or "cond"
            raise ValueError(f"cond{'' if where == 'cond' else where} must have leading dimension B={batch} "
                             f"(one entry per key), got shape {shape}.")


def check_arity(name: str, fn: Any, call: str, num_args: int) -> None:
    """Checks that ``fn`` is callable with ``num_args`` positional arguments, as ``call`` shows.

    Functions whose signature cannot be read (some builtins) are let through.

    Raises:
      TypeError: ``fn`` is not callable, or its signature cannot take the call.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {call}, got {type(fn).__name__}.")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(num_args))
    except TypeError:
        raise TypeError(f"{name} is called as {call} ({num_args} positional arguments), but its signature is "
                        f"{signature}; wrap it, e.g. lambda {call[call.index('(') + 1:-1]}: ...") from None


def check_finite_array(name: str, value: Any) -> None:
    """Raises ValueError when a concrete array holds NaN or inf (tracers pass)."""
    if isinstance(value, jax.core.Tracer) or value is None:
        return
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating) or array.dtype == jnp.bfloat16:
        bad = ~np.isfinite(array.astype(np.float32))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must be finite: it holds {int(bad.sum())} NaN/inf value(s), the first "
                             f"at index {where}.")


def check_representable_levels(levels: np.ndarray, what: str) -> None:
    """Checks float64 noise levels once rounded to the level dtype: finite, normal, not NaN.

    XLA on CPU flushes subnormal numbers to zero, after which a division by sigma gives inf;
    a level that overflows is inf outright.

    Args:
      levels: The levels as computed in float64.
      what: The parameters they come from, for the message (``"sigma_max=1e+40"``).

    Raises:
      ValueError: naming ``what`` and the limit crossed.
    """
    dtype = level_dtype()
    info = np.finfo(dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        rounded = np.asarray(levels, np.float64).astype(dtype)
    if np.isinf(rounded).any():
        raise ValueError(f"{what} give noise levels beyond the largest {dtype.name} ({float(info.max):.4g}); "
                         "use a smaller sigma_max.")
    if np.isnan(rounded).any():
        raise ValueError(f"{what} give NaN noise levels; use values for which the schedule is defined.")
    if (np.abs(rounded) < info.tiny).any():
        raise ValueError(f"{what} give noise levels below the smallest normal {dtype.name} "
                         f"({float(info.tiny):.4g}), which XLA flushes to zero; use a larger sigma_min.")


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """Checks that ``value`` is an integer count >= ``minimum`` and returns it as a Python int.

    The one check behind every step count, batch size, shard size and data position of the
    long jobs (training, generation, the examples). Python and NumPy integers pass; a bool
    does not (``True`` is an int to Python, never a count a caller meant).

    Raises:
      ValueError: ``value`` is not an integer, is a bool, or is below ``minimum`` (the message
        names ``name`` and the allowed range).

    >>> check_count("batch", 8)
    8
    >>> check_count("position", 0, minimum=0)
    0
    """
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)
