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
import numpy as np
from jax.typing import ArrayLike

from karras_jax._validation import check_arity, check_values, concrete_value, level_dtype
from karras_jax.models._batch import check_null_cond
from karras_jax.models._record import checked_record

__all__ = ["Guidance", "autoguidance", "classifier_free_guidance"]

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


@checked_record
class Guidance:
    """The guidance scale and the noise-level interval where it applies; all traced leaves.

    Attributes:
      scale: w (1: no guidance), finite.
      sigma_lo, sigma_hi: w applies for sigma_lo <= sigma <= sigma_hi (both ends included);
        elsewhere w = 1. ``0 <= sigma_lo <= sigma_hi``, sigma_lo finite, sigma_hi may be inf.
        The defaults, 0 and inf, guide at every level.

    Concrete values are checked where a Guidance is built (or ``.replace``d); traced ones
    pass, and JAX's own rebuilding of the pytree checks nothing.

    Raises:
      TypeError: a field that is not a real number or an array of them (a list, a string).
      ValueError: naming the field: a NaN or infinite scale, a sigma_lo that is not finite
        and >= 0, a NaN sigma_hi, or sigma_lo > sigma_hi.
    """

    scale: ArrayLike = 1.0
    sigma_lo: ArrayLike = 0.0
    sigma_hi: ArrayLike = float("inf")

    def __post_init__(self) -> None:
        check_values({"scale": self.scale, "sigma_lo": self.sigma_lo})
        if isinstance(self.sigma_hi, (list, tuple, dict, set)):
            raise TypeError(f"sigma_hi must be a real number or an array, got {type(self.sigma_hi).__name__} "
                            f"{self.sigma_hi!r}; wrap a sweep of values in jnp.asarray.")
        lo, hi = concrete_value("sigma_lo", self.sigma_lo), concrete_value("sigma_hi", self.sigma_hi)
        if lo is not None and not np.all(lo >= 0):
            raise ValueError(f"sigma_lo must be >= 0, got {self.sigma_lo!r}.")
        if hi is not None and np.isnan(hi).any():
            raise ValueError(f"sigma_hi must not be NaN (inf: no upper end), got {self.sigma_hi!r}.")
        if lo is not None and hi is not None and not np.all(lo <= hi):
            raise ValueError(f"sigma_lo must be <= sigma_hi, got {self.sigma_lo!r} > {self.sigma_hi!r}.")

    def weight(self, sigma: jax.Array) -> jax.Array:
        """W at level ``sigma``: ``scale`` inside the interval, 1 outside."""
        dtype = level_dtype()
        sigma = jnp.asarray(sigma, dtype)
        inside = (jnp.asarray(self.sigma_lo, dtype) <= sigma) & (sigma <= jnp.asarray(self.sigma_hi, dtype))
        return jnp.where(inside, jnp.asarray(self.scale, dtype), jnp.ones((), dtype))


def _split(params: Any, names: str) -> tuple[Any, ...]:
    """``params`` as the tuple ``names`` describes, its last entry a :class:`Guidance`."""
    count = names.count(",") + 1
    sequence = isinstance(params, (tuple, list))
    if sequence and len(params) == count and isinstance(params[-1], Guidance):
        return tuple(params)
    got = f"a {type(params).__name__} of {len(params)}" if sequence else type(params).__name__
    if sequence and len(params) == count:
        got += f" ending in a {type(params[-1]).__name__} where the Guidance belongs"
    raise TypeError(f"params must be ({names}) for a guided denoiser, got {got}.")


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

    Raises:
      TypeError: ``apply_fn`` cannot be called with four arguments. ``guided`` raises
        TypeError for ``params`` of another form and ValueError/TypeError, naming
        ``null_cond`` and ``cond``, when ``null_cond`` does not fit ``cond`` (another pytree
        structure, a shape that is not one sample's, a float null for integer labels) or
        ``cond`` is not one entry per sample of ``x``.
    """
    check_arity("apply_fn", apply_fn, "apply_fn(net_params, x, sigma, cond)", 4)

    def guided(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        net_params, guidance = _split(params, "net_params, kj.Guidance(...)")
        batch = x.shape[0]
        check_null_cond(null_cond, cond, batch)
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

    Raises:
      TypeError: a function that cannot be called with four arguments; ``guided`` raises
        TypeError for ``params`` of another form.
    """
    check_arity("main_fn", main_fn, "main_fn(main_params, x, sigma, cond)", 4)
    check_arity("guide_fn", guide_fn, "guide_fn(guide_params, x, sigma, cond)", 4)

    def guided(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        main_params, guide_params, guidance = _split(params, "main_params, guide_params, kj.Guidance(...)")
        return _combine(main_fn(main_params, x, sigma, cond), guide_fn(guide_params, x, sigma, cond),
                        guidance.weight(sigma))

    return guided
