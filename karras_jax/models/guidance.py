r"""Guidance: classifier-free, autoguidance, and the guidance interval.

Classifier-free guidance (Ho & Salimans 2022), autoguidance (Karras et al. 2024, EDM2) and
the guidance interval (Kynkaanniemi et al. 2024):

.. math::

    D_w = D_c + (w - 1)(D_c - D_u) \quad (= D_u + w (D_c - D_u)),
    \qquad w \leftarrow 1 \text{ outside } [\sigma_{lo}, \sigma_{hi}]

written from the conditional (or main) side so that ``w = 1`` gives it back bitwise. The
scale and the interval are a :class:`Guidance` passed with the weights
(``params = (net_params, guidance)``), so they are traced: a sweep over ``w`` reuses the
compiled sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from karras_jax._validation import concrete_value, level_dtype

__all__ = ["Guidance", "autoguidance", "classifier_free_guidance"]

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


@struct.dataclass
class Guidance:
    """The guidance scale and the noise-level interval where it applies; all traced leaves.

    Attributes:
      scale: w (1: no guidance).
      sigma_lo, sigma_hi: w applies for sigma_lo <= sigma <= sigma_hi (both ends included);
        elsewhere w = 1. The defaults, 0 and inf, guide at every level.
    """

    scale: ArrayLike = 1.0
    sigma_lo: ArrayLike = 0.0
    sigma_hi: ArrayLike = float("inf")

    def weight(self, sigma: jax.Array) -> jax.Array:
        """W at level ``sigma``: ``scale`` inside the interval, 1 outside."""
        dtype = level_dtype()
        sigma = jnp.asarray(sigma, dtype)
        inside = (jnp.asarray(self.sigma_lo, dtype) <= sigma) & (sigma <= jnp.asarray(self.sigma_hi, dtype))
        return jnp.where(inside, jnp.asarray(self.scale, dtype), jnp.ones((), dtype))


def _check_guidance(guidance: Any) -> Guidance:
    if not isinstance(guidance, Guidance):
        raise TypeError(
            "params must be (net_params, kj.Guidance(scale, sigma_lo, sigma_hi)) for a guided "
            f"denoiser, got {type(guidance).__name__} where the Guidance belongs."
        )
    lo, hi = concrete_value("sigma_lo", guidance.sigma_lo), concrete_value("sigma_hi", guidance.sigma_hi)
    if lo is not None and hi is not None and not bool((lo <= hi).all()):
        raise ValueError(f"sigma_lo must be <= sigma_hi, got {guidance.sigma_lo!r} > {guidance.sigma_hi!r}.")
    return guidance


def _combine(d_main: jax.Array, d_other: jax.Array, w: jax.Array) -> jax.Array:
    work = jnp.promote_types(d_main.dtype, level_dtype())
    main = d_main.astype(work)
    return (main + (w.astype(work) - 1) * (main - d_other.astype(work))).astype(d_main.dtype)


def classifier_free_guidance(apply_fn: ApplyFn, null_cond: Any) -> ApplyFn:
    """Classifier-free guidance with both branches in one batched network call (2B rows).

    Args:
      apply_fn: ``apply_fn(net_params, x, sigma, cond) -> D``, a conditional denoiser.
      null_cond: The unconditional ``cond`` of one sample (no batch dimension), e.g. the
        null class label; broadcast to the batch.

    Returns:
      ``guided(params, x, sigma, cond)`` with ``params = (net_params, kj.Guidance(...))``.
    """
    def guided(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        net_params, guidance = params
        guidance = _check_guidance(guidance)
        batch = x.shape[0]
        both = jax.tree_util.tree_map(
            lambda c, n: jnp.concatenate([c, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)]),
            cond, null_cond)
        d = apply_fn(net_params, jnp.concatenate([x, x]), sigma, both)
        return _combine(d[:batch], d[batch:], guidance.weight(sigma))

    return guided


def autoguidance(main_fn: ApplyFn, guide_fn: ApplyFn) -> ApplyFn:
    """Autoguidance (EDM2): a weaker guiding network g, ``D = D_g + w (D_m - D_g)``.

    Args:
      main_fn: ``main_fn(main_params, x, sigma, cond) -> D_m``.
      guide_fn: ``guide_fn(guide_params, x, sigma, cond) -> D_g`` (e.g. a smaller or less
        trained version of the main network).

    Returns:
      ``guided(params, x, sigma, cond)`` with ``params = (main_params, guide_params,
      kj.Guidance(...))``.
    """
    def guided(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        main_params, guide_params, guidance = params
        guidance = _check_guidance(guidance)
        return _combine(main_fn(main_params, x, sigma, cond), guide_fn(guide_params, x, sigma, cond),
                        guidance.weight(sigma))

    return guided
