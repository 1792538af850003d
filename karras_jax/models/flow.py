r"""Flow-matching (rectified-flow) networks as Karras denoisers: velocity, x0 or epsilon prediction.

A flow model noises a clean sample :math:`x_0` along a straight line to unit noise
:math:`\epsilon \sim \mathcal{N}(0, I)`,

.. math::

    x_t = (1 - t)\, x_0 + t\, \epsilon, \qquad t \in [0, 1],

and its network predicts the velocity :math:`v = \epsilon - x_0` (SD3, Flux), the clean
sample :math:`\hat x_0` or the noise :math:`\hat\epsilon` from :math:`(x_t, t)`. Dividing by
:math:`1 - t` gives the VE/EDM form :math:`x = x_0 + \sigma\epsilon` of Algorithm 2:

.. math::

    \frac{x_t}{1 - t} = x_0 + \frac{t}{1 - t}\, \epsilon
    \quad\Longrightarrow\quad
    \sigma = \frac{t}{1 - t}, \qquad x = \frac{x_t}{1 - t},

and back, since :math:`1 - t = 1/(1 + \sigma)`:

.. math::

    t = \frac{\sigma}{1 + \sigma}, \qquad x_t = \frac{x}{1 + \sigma}.

Both describe the same noisy sample, so the denoiser :math:`D(x; \sigma) = \mathbb{E}[x_0 \mid x]`
is the flow model's :math:`\mathbb{E}[x_0 \mid x_t]` at the matching time. From
:math:`x_t = (1 - t) x_0 + t\epsilon` and :math:`v = \epsilon - x_0`, i.e.
:math:`x_t = x_0 + t v`, each prediction gives it as

.. math::

    D = x_t - t\, \hat v, \qquad D = \hat x_0, \qquad
    D = \frac{x_t - t\, \hat\epsilon}{1 - t} = x - \sigma\, \hat\epsilon

(velocity, x0, epsilon). The network sees :math:`x_t` and ``time_scale`` :math:`\cdot\, t`
(1000 for SD3-style networks trained on timesteps in [0, 1000]).

**The infinite level.** A flow schedule starts at :math:`t = 1`, pure noise, where
:math:`\sigma = \infty` and :math:`x = x_t/(1 - t)` has no finite value. The sampler then holds
the sample as its finite limit :math:`x/\sigma`, which is :math:`x_t` at :math:`t = 1` (the unit
noise itself), and calls the denoiser with it and :math:`\sigma = \infty`. So at
:math:`\sigma = \infty`, x is x / sigma: the adapter reads it as :math:`x_t` unchanged and uses
:math:`t = 1` exactly (no NaN, no clipping of t); there :math:`D = x_t - \hat v` (velocity) or
:math:`\hat x_0`. For epsilon prediction :math:`D = (x_t - \hat\epsilon)/0` has no value at
:math:`t = 1` (the network's :math:`\hat\epsilon \to x_t` and one evaluation cannot give the
limit of the ratio): ``apply_fn`` refuses a concrete infinite sigma, ``kj.make_sampler`` and
``kj.make_sharded_sampler`` refuse it with the flow schedule (``apply_fn.finite_levels_only``),
and inside a closure passed to ``kj.sample`` the step gives NaN, which ``check_finite=True``
names. Sample epsilon-prediction
flow models on levels below :math:`t = 1`, e.g. ``kj.set_timesteps(cfg, sigmas=...)`` with a
finite first level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from karras_jax._validation import check_arity, concrete_value, level_dtype
from karras_jax.models._batch import as_sigma_shape, check_sigma_shape, per_sample

__all__ = ["FLOW_PREDICTIONS", "flow_denoiser"]

#: What a flow network may predict: the velocity eps - x_0, the clean sample, or the noise.
FLOW_PREDICTIONS = ("velocity", "x0", "epsilon")


def _check_time_scale(time_scale: Any) -> float:
    if isinstance(time_scale, jax.core.Tracer):
        raise TypeError("time_scale must be a concrete real number, got a traced value; build the "
                        "denoiser outside jit.")
    value = concrete_value("time_scale", time_scale)
    if value is None:
        raise TypeError(f"time_scale must be a real number, got {type(time_scale).__name__} {time_scale!r}.")
    if value.ndim != 0:
        raise ValueError(f"time_scale must be a scalar, got shape {value.shape}.")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale!r}.")
    return float(value)


def _check_flow_levels(sigma: Any, prediction: str) -> None:
    """Refuses concrete levels that are NaN or < 0, and +inf for epsilon prediction; tracers pass."""
    value = concrete_value("sigma", sigma)
    if value is None:
        return
    bad = np.isnan(value) | (value < 0)
    if bad.any():
        index = np.unravel_index(np.argmax(bad), bad.shape)
        where = f" at index {tuple(int(i) for i in index)}" if value.ndim else ""
        raise ValueError(f"sigma must be >= 0 (+inf for t = 1), got {float(value[index])!r}{where}.")
    if prediction == "epsilon" and np.isinf(value).any():
        raise ValueError("sigma = inf (t = 1) has no denoised value for an epsilon-prediction flow model "
                         "(D = (x_t - t eps) / (1 - t) is 0/0 there); sample it on finite levels, e.g. "
                         "kj.set_timesteps(cfg, sigmas=...) starting below t = 1.")


def flow_denoiser(net_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
                  prediction: str = "velocity", time_scale: float = 1.0, *,
                  sigma_shape: str = "scalar") -> Callable[..., jax.Array]:
    r"""Wraps a flow-matching ``net_fn(params, x_t, t, cond)`` as ``apply_fn(params, x, sigma, cond) = D``.

    With :math:`t = \sigma/(1 + \sigma)` and :math:`x_t = x/(1 + \sigma)` (module docstring),
    :math:`D = x_t - t\hat v` (``"velocity"``), :math:`\hat x_0` (``"x0"``) or
    :math:`x - \sigma\hat\epsilon = (x_t - t\hat\epsilon)/(1 - t)` (``"epsilon"``). At
    :math:`\sigma = \infty` x is x / sigma: it is read as :math:`x_t` and t is exactly 1.

    Args:
      net_fn: The network, called with ``x_t`` in x's dtype and ``t`` = ``time_scale`` times the
        flow time, in the level dtype (float32; float64 under x64); returns the prediction shaped
        like ``x_t``.
      prediction: ``"velocity"`` (:math:`v = \epsilon - x_0`, SD3 and Flux), ``"x0"`` or
        ``"epsilon"``.
      time_scale: The factor from flow time in [0, 1] to the network's time: 1.0, or 1000.0
        for networks trained on diffusers' timesteps. Finite and > 0.
      sigma_shape: ``"scalar"`` or ``"batch"`` (t broadcast to ``(B,)``). ``apply_fn`` also
        takes one sigma per sample (``(B,)`` or ``(B, 1, ..., 1)``); t is then ``(B,)``.

    Returns:
      ``apply_fn`` for :func:`karras_jax.make_sampler` (on a flow schedule,
      ``kj.set_timesteps(cfg, N, "flow", shift=3.0)``, which starts at sigma = inf) and
      :func:`karras_jax.edm_loss` (``kind="flow"`` is the velocity MSE through it). It refuses
      a concrete sigma that is NaN or < 0, and ``+inf`` for ``"epsilon"``.

    Raises:
      TypeError: ``net_fn`` cannot be called with four arguments, or ``time_scale`` is not a
        concrete real number.
      ValueError: an unknown ``prediction`` or ``sigma_shape``, or ``time_scale`` not a finite
        scalar > 0.

    >>> import jax.numpy as jnp, karras_jax as kj
    >>> from karras_jax.models import flow_denoiser
    >>> velocity = lambda params, x_t, t, cond: x_t - params     # the exact field of data at params
    >>> apply_fn = flow_denoiser(velocity, time_scale=1000.0)
    >>> apply_fn(jnp.float32(2.0), jnp.ones((1, 3)), jnp.inf, None)   # t = 1: x is x_t, D = params
    Array([[2., 2., 2.]], dtype=float32)
    """
    check_arity("net_fn", net_fn, "net_fn(params, x_t, t, cond)", 4)
    if not isinstance(prediction, str) or prediction not in FLOW_PREDICTIONS:
        raise ValueError(f"prediction must be one of {FLOW_PREDICTIONS}, got {prediction!r}.")
    scale = _check_time_scale(time_scale)
    check_sigma_shape(sigma_shape)

    def apply_fn(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        _check_flow_levels(sigma, prediction)
        x = jnp.asarray(x)
        work = jnp.promote_types(x.dtype, level_dtype())
        sigma, level = per_sample(jnp.asarray(sigma, level_dtype()), x)
        # t = sigma / (1 + sigma) and x_t = x / (1 + sigma), with t = 1 and x_t = x at sigma = inf;
        # the infinite level is swapped out before the divisions so that no branch makes a NaN
        # (nor a NaN gradient)
        level_inf = jnp.isinf(level)
        finite_level = jnp.where(level_inf, 0, level)
        t_net = jnp.where(level_inf, 1, finite_level / (1 + finite_level))
        t_net = as_sigma_shape(scale * t_net, x, sigma_shape)
        inf = jnp.isinf(sigma)
        s = jnp.where(inf, 0, sigma).astype(work)
        t = jnp.where(inf, 1, s / (1 + s))
        xw = x.astype(work)
        x_t = jnp.where(inf, xw, xw / (1 + s))
        out = net_fn(params, x_t.astype(x.dtype), t_net, cond).astype(work)
        if prediction == "velocity":
            denoised = x_t - t * out
        elif prediction == "x0":
            denoised = out
        else:  # x - sigma eps; at a traced infinite level there is no value
            denoised = jnp.where(inf, jnp.nan, xw - s * out)
        return denoised.astype(x.dtype)

    apply_fn.finite_levels_only = prediction == "epsilon"  # the samplers refuse a flow start for it
    return apply_fn
