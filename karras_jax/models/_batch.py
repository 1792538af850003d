"""Noise levels per sample: the samplers pass one scalar sigma, training passes one per sample."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from karras_jax._validation import concrete_value

__all__ = ["SIGMA_SHAPES", "as_sigma_shape", "check_kind_constants", "check_sigma_shape", "per_sample"]

#: How a wrapper hands the noise level to the network: as the sampler's scalar, or one per sample.
SIGMA_SHAPES = ("scalar", "batch")


def per_sample(sigma: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(elementwise, for_network)``: ``sigma`` shaped to multiply ``x``, and as the network gets it.

    A scalar stays a scalar. A ``(B,)`` array (one level per sample, as a training loss draws
    them) or one shaped ``(B, 1, ..., 1)`` (EDM's layout) becomes ``(B, 1, ..., 1)`` for the
    elementwise arithmetic and ``(B,)`` for the network.

    Raises:
      ValueError: ``sigma`` is neither a scalar nor one level per sample of ``x``.
    """
    if sigma.ndim == 0:
        return sigma, sigma
    batch = x.shape[0] if x.ndim else None
    if sigma.size != batch or sigma.shape[0] != batch or sigma.ndim > max(x.ndim, 1):
        raise ValueError(f"sigma must be a scalar or one level per sample (shape ({batch},) or "
                         f"({batch}, 1, ...)) for x of shape {x.shape}; got shape {sigma.shape}.")
    flat = jnp.reshape(sigma, (batch,))
    return jnp.reshape(flat, (batch,) + (1,) * (x.ndim - 1)), flat


def check_sigma_shape(sigma_shape: str) -> str:
    """Returns ``sigma_shape`` if it is one of :data:`SIGMA_SHAPES`.

    Raises:
      ValueError: any other value (the message names the parameter and the choices).
    """
    if sigma_shape not in SIGMA_SHAPES:
        raise ValueError(f"sigma_shape must be one of {SIGMA_SHAPES}, got {sigma_shape!r}.")
    return sigma_shape


def as_sigma_shape(level: jax.Array, x: jax.Array, sigma_shape: str) -> jax.Array:
    """``level`` (a scalar or ``(B,)``) as the network takes it: broadcast to ``(B,)`` for ``"batch"``."""
    return jnp.broadcast_to(level, x.shape[:1]) if sigma_shape == "batch" else level


def check_kind_constants(kind: Any, table: dict[str, dict[str, Any]], constants: dict[str, Any],
                         signed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The constants of ``kind`` in ``table`` (a Table 1 column or row) with ``constants`` applied.

    Every concrete constant must be finite, and > 0 unless named in ``signed``; ``M`` must be
    an int.

    Raises:
      ValueError: an unknown kind, or a constant out of range.
      TypeError: a constant the kind does not take, or a non-int M.
    """
    if kind not in table:
        raise ValueError(f"kind must be one of {tuple(table)}, got {kind!r}.")
    unknown = sorted(set(constants) - set(table[kind]))
    if unknown:
        allowed = ", ".join(table[kind]) or "none"
        raise TypeError(f"kind={kind!r} takes the constants {allowed}; got {', '.join(unknown)}.")
    values = {**table[kind], **constants}
    for name, value in values.items():
        concrete = concrete_value(name, value)
        positive = name in signed or concrete is None or bool(np.all(concrete > 0))
        if concrete is not None and not (np.all(np.isfinite(concrete)) and positive):
            raise ValueError(f"{name} must be finite{'' if name in signed else ' and > 0'}, got {value!r}.")
        if name == "M" and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
            raise TypeError(f"M must be a positive int, got {value!r}.")
    return values
