"""Noise levels per sample: the samplers pass one scalar sigma, training passes one per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["SIGMA_SHAPES", "as_sigma_shape", "check_sigma_shape", "per_sample"]

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
