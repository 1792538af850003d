"""Checks of diffusers' step API (:mod:`karras_jax.compat.steps`), its only user."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from karras_jax._validation import concrete_value, level_dtype

__all__ = ["check_float_array", "check_key", "check_level", "check_same_shape"]


def check_key(name: str, key: Any) -> None:
    """Checks that ``key`` is a single PRNG key: typed (``jax.random.key``) or raw uint32."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(
            f"{name} must be a PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed), "
            f"got {type(key).__name__}."
        )
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {shape}.")
        return
    width = jax.random.key_data(jax.random.key(0)).shape[-1]
    if dtype == jnp.uint32 and shape == (width,):
        return
    raise TypeError(
        f"{name} must be a PRNG key from jax.random.key(seed) (a typed key) or "
        f"jax.random.PRNGKey(seed) (uint32 of shape ({width},)), got dtype {dtype} and shape {shape}."
    )


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Raises a ValueError when two arrays that are combined elementwise differ in shape."""
    shape_a, shape_b = jnp.shape(a), jnp.shape(b)
    if shape_a != shape_b:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {shape_a} and {shape_b}."
        )


def check_float_array(name: str, value: ArrayLike) -> jax.Array:
    """``value`` as an array, which must have a floating-point dtype."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    return array


def check_level(name: str, value: ArrayLike, *, positive: bool) -> jax.Array:
    """A scalar noise level in the level dtype: finite and > 0 (or >= 0), when concrete."""
    concrete = concrete_value(name, value)
    if concrete is not None:
        if concrete.shape != ():
            raise ValueError(f"{name} must be a scalar noise level, got shape {concrete.shape}.")
        if not math.isfinite(float(concrete)):
            raise ValueError(f"{name} must be finite, got {float(concrete)!r}.")
        if float(concrete) <= 0 if positive else float(concrete) < 0:
            allowed = "> 0" if positive else ">= 0"
            raise ValueError(f"{name} must be {allowed}, got {float(concrete)!r}.")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar noise level, got shape {jnp.shape(value)}.")
    return jnp.asarray(value, level_dtype())
