"""The one range check behind the training layer's real-valued arguments (rates, probabilities, steps).

Like :mod:`karras_jax._validation`, only concrete values are checked: a traced value passes
untouched (no host round-trip), the same call made eagerly gets the full check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from karras_jax._validation import concrete_value

__all__ = ["check_real"]


def check_real(name: str, value: Any, allowed: str, holds: Callable[[np.ndarray], Any], *,
               scalar: bool = True) -> np.ndarray | None:
    """Checks a real number (or array of them) against ``holds`` once it is concrete.

    Args:
      name: The parameter, for messages.
      value: A Python or NumPy number, a JAX array or a tracer.
      allowed: The allowed values as the message states them, e.g. ``"in [0, 1]"``.
      holds: Elementwise test of the float64 value, e.g. ``lambda v: (v >= 0) & (v <= 1)``;
        NaN and inf are refused before it runs.
      scalar: Refuse arrays that are not 0-d.

    Returns:
      The value as a float64 NumPy array, or None when it is traced.

    Raises:
      TypeError: not a real number (None, a list, a string, a bool, a complex number).
      ValueError: not a scalar (with ``scalar``), not finite, or outside ``allowed``.
    """
    if value is None or isinstance(value, (list, tuple, dict, set)):
        raise TypeError(f"{name} must be a real number ({allowed}), got {type(value).__name__} {value!r}.")
    concrete = concrete_value(name, value)
    if scalar and jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar ({allowed}), got shape {jnp.shape(value)}.")
    bad = None if concrete is None else ~(np.isfinite(concrete) & holds(concrete))
    if bad is not None and np.any(bad):
        shown = value if concrete.ndim == 0 else float(concrete[bad].flat[0])
        raise ValueError(f"{name} must be {allowed}, got {shown!r}.")
    return concrete
