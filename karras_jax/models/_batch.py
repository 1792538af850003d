"""Noise levels per sample: the samplers pass one scalar sigma, training passes one per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["per_sample"]


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
