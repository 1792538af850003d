r"""Discrete-time (DDPM-style) networks as Karras denoisers: epsilon, v or x0 prediction at a timestep.

A DDPM/diffusers UNet trained with cumulative products :math:`\bar\alpha_j` sees
:math:`x/\sqrt{\sigma^2+1}` and a timestep index j, where :math:`\sigma_j =
\sqrt{(1-\bar\alpha_j)/\bar\alpha_j}`, and predicts the noise :math:`\epsilon`,
:math:`v = \alpha\epsilon - s\, x_0` (:math:`\alpha = 1/\sqrt{\sigma^2+1}`, :math:`s =
\sigma\alpha`) or the clean sample :math:`x_0` itself (diffusers' ``"sample"``). With
:math:`x = x_0 + \sigma\epsilon` (the scaled input times :math:`\sqrt{\sigma^2+1}`), as a denoiser:

.. math::

    D = x - \sigma\, \epsilon, \qquad
    D = \frac{x}{\sigma^2+1} - \frac{\sigma}{\sqrt{\sigma^2+1}}\, v
    \quad\text{or}\quad D = \hat x_0

The timestep for a level sigma is the nearest training level in log sigma (``quantize``)
or linear interpolation of the index in log sigma, as k-diffusion's discrete wrappers do.
A schedule may start at :math:`\bar\alpha_0 = 1` (:math:`\sigma_0 = 0`, whose log is
:math:`-\infty`): below the first positive level :math:`\sigma_1` the interpolated index
then runs linearly in sigma, :math:`j = \sigma/\sigma_1`, and the nearest level in log sigma
is :math:`\sigma_0` only for sigma = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax._validation import check_arity, level_dtype
from karras_jax.models._batch import as_sigma_shape, check_levels, check_sigma_shape, per_sample

__all__ = ["discrete_sigmas", "discrete_time_denoiser"]

PREDICTIONS = ("epsilon", "v", "sample")


def discrete_sigmas(alphas_cumprod: ArrayLike) -> jax.Array:
    r"""The model's noise levels :math:`\sigma_j = \sqrt{(1-\bar\alpha_j)/\bar\alpha_j}`, ascending in j.

    Raises:
      TypeError: ``alphas_cumprod`` is traced or not real numbers.
      ValueError: ``alphas_cumprod`` is not 1-D with at least 2 entries, or not all in (0, 1].
    """
    if isinstance(alphas_cumprod, jax.core.Tracer):
        raise TypeError("alphas_cumprod must be concrete (a NumPy or JAX array), got a traced value; "
                        "build the denoiser outside jit.")
    try:
        abar = np.asarray(alphas_cumprod, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"alphas_cumprod must be an array of real numbers, got {alphas_cumprod!r}.") from None
    if abar.ndim != 1 or abar.size < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {abar.shape}.")
    bad = ~(np.isfinite(abar) & (abar > 0) & (abar <= 1))
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"alphas_cumprod must lie in (0, 1], got {float(abar[index])!r} at index {index}.")
    return jnp.asarray(np.sqrt((1 - abar) / abar), level_dtype())


def discrete_time_denoiser(net_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
                           alphas_cumprod: ArrayLike, prediction: str = "epsilon", quantize: bool = True,
                           *, sigma_shape: str = "scalar") -> Callable[..., jax.Array]:
    """Wraps ``net_fn(params, x_scaled, timestep, cond)`` as ``apply_fn(params, x, sigma, cond) = D``.

    Args:
      net_fn: The network: ``x_scaled`` = x / sqrt(sigma^2 + 1), ``timestep`` an int32 index
        (``quantize``) or a float32 fractional one; returns epsilon, v or x0 shaped like x.
      alphas_cumprod: The training schedule's cumulative products, (M,).
      prediction: ``"epsilon"``, ``"v"`` or ``"sample"`` (x0, as diffusers names it).
      quantize: Nearest training timestep (True) or interpolation in log sigma (False).
      sigma_shape: ``"scalar"`` or ``"batch"`` (the timestep broadcast to (B,)). ``apply_fn``
        also takes one sigma per sample (``(B,)`` or ``(B, 1, ..., 1)``); the timestep is then ``(B,)``.

    Returns:
      ``apply_fn`` for :func:`karras_jax.make_sampler`; sample with levels inside the
      model's range, e.g. ``set_timesteps(cfg, N, sigmas=...)`` from :func:`discrete_sigmas`
      or a named schedule with sigma_min/sigma_max inside it. ``apply_fn`` refuses a concrete
      sigma that is not finite and >= 0.

    Raises:
      TypeError: ``net_fn`` cannot be called with four arguments, or ``quantize`` is not a bool.
      ValueError: an unknown ``prediction`` or ``sigma_shape``, or ``alphas_cumprod`` not in
        (0, 1] or not strictly decreasing (in the level dtype).
    """
    check_arity("net_fn", net_fn, "net_fn(params, x_scaled, timestep, cond)", 4)
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")
    if not isinstance(quantize, (bool, np.bool_)):
        raise TypeError(f"quantize must be a bool, got {type(quantize).__name__} {quantize!r}.")
    check_sigma_shape(sigma_shape)
    levels = np.asarray(discrete_sigmas(alphas_cumprod))
    if not np.all(np.diff(levels) > 0):
        raise ValueError("alphas_cumprod must be strictly decreasing (noise grows with the timestep), "
                         f"also once its levels are rounded to {levels.dtype}.")
    # An alpha of exactly 1 is the level 0, whose log is -inf: searches and interpolation
    # then run over the positive levels, and below the first of them the index is sigma / level.
    first = 1 if levels[0] == 0 else 0
    log_sigmas = jnp.log(jnp.asarray(levels[first:]))
    steps = jnp.arange(first, levels.shape[0], dtype=level_dtype())
    lowest = jnp.asarray(levels[first], level_dtype())

    def timestep(sigma: jax.Array) -> jax.Array:
        sigma = jnp.asarray(sigma, level_dtype())
        below = sigma < lowest
        # where sigma is below the positive levels, the log sees the lowest one (no log(0), no NaN gradient)
        log_sigma = jnp.log(jnp.where(below, lowest, sigma)) if first else jnp.log(sigma)
        if quantize:
            nearest = first + jnp.argmin(jnp.abs(log_sigma[..., None] - log_sigmas), axis=-1)
            return jnp.where(sigma <= 0, 0, nearest).astype(jnp.int32) if first else nearest.astype(jnp.int32)
        index = jnp.interp(log_sigma, log_sigmas, steps)
        return jnp.where(below, jnp.maximum(sigma, 0) / lowest, index) if first else index

    def apply_fn(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        check_levels(sigma, zero=True)
        work = jnp.promote_types(x.dtype, level_dtype())
        sigma, level = per_sample(jnp.asarray(sigma, level_dtype()), x)
        s = sigma.astype(work)
        scale = 1.0 / jnp.sqrt(s**2 + 1)
        t = as_sigma_shape(timestep(level), x, sigma_shape)
        out = net_fn(params, (x.astype(work) * scale).astype(x.dtype), t, cond).astype(work)
        xw = x.astype(work)
        if prediction == "epsilon":
            denoised = xw - s * out
        elif prediction == "v":
            denoised = xw * scale**2 - s * scale * out
        else:
            denoised = out
        return denoised.astype(x.dtype)

    return apply_fn
