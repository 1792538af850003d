r"""Exponential moving average of the weights: EDM2's power-function EMA (Karras et al. 2024).

After update t (t = 1, 2, ...; the train state's ``step``),

.. math::

    \hat\theta_t = \beta_t \hat\theta_{t-1} + (1 - \beta_t)\, \theta_t, \qquad
    \beta_t = (1 - 1/t)^{\gamma + 1},

which averages the weights with a weight growing as :math:`\tau^\gamma` over the run so
far: the average covers a fixed *fraction* of training, with relative standard deviation
``sigma_rel`` :math:`= \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}`. Chosen over EDM's
half-life EMA because it needs no batch size, no warm-up ramp and no knowledge of the run's
length, and a short run (the digits example) averages as much of it as a long one;
``sigma_rel=0.05`` (gamma = 16.97) is the default. :math:`\beta_1 = 0`, so the average starts
as the first update's weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax.training._checks import check_real

__all__ = ["ema_decay", "ema_gamma", "ema_update"]


def ema_gamma(sigma_rel: float) -> float:
    r"""The exponent gamma of the power-function EMA with relative width ``sigma_rel``.

    Solves :math:`\sigma_{rel}^{-2} = (\gamma+2)^2(\gamma+3)/(\gamma+1)` (EDM2, eq. 3 rearranged
    as :math:`\gamma^3 + 7\gamma^2 + (16 - \sigma_{rel}^{-2})\gamma + 12 - \sigma_{rel}^{-2} = 0`).

    Args:
      sigma_rel: A concrete real number (Python, NumPy or a 0-d JAX array); gamma is solved on
        the host, so not a traced value.

    Raises:
      TypeError: ``sigma_rel`` is not a real number, or is traced.
      ValueError: ``sigma_rel`` is not a scalar in (0, 1/sqrt(12)) (wider averages need gamma <= 0).

    >>> round(ema_gamma(0.05), 2), round(ema_gamma(0.10), 2)
    (16.97, 6.94)
    """
    if isinstance(sigma_rel, jax.core.Tracer):
        raise TypeError("sigma_rel must be a concrete number (gamma is solved on the host with numpy), "
                        "got a traced value; compute ema_gamma outside jit.")
    value = check_real("sigma_rel", sigma_rel, "in (0, 1/sqrt(12) = 0.2887)",
                       lambda v: (v > 0) & (v < 12**-0.5))
    t = float(value) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def _array(value: ArrayLike) -> ArrayLike:
    return np.asarray(value) if isinstance(value, (list, tuple)) else value


def ema_decay(step: ArrayLike, gamma: ArrayLike) -> jax.Array:
    r""":math:`\beta_t = (1 - 1/t)^{\gamma+1}` at update ``step`` = t >= 1 (float32).

    Raises:
      ValueError: a concrete ``step`` that is not an integer >= 1 (step 0 would give inf, a
        negative one a weight outside [0, 1]), or a concrete ``gamma`` that is not finite and
        >= 0 (traced values are not checked).
    """
    step, gamma = _array(step), _array(gamma)
    check_real("step", step, "an integer >= 1 (the update count t)", lambda v: (v >= 1) & (v == np.floor(v)),
               scalar=False)
    check_real("gamma", gamma, ">= 0 (kj.ema_gamma(sigma_rel))", lambda v: v >= 0, scalar=False)
    t = jnp.asarray(step, jnp.float32)
    return (1.0 - 1.0 / t) ** (jnp.asarray(gamma, jnp.float32) + 1.0)


def ema_update(ema: Any, params: Any, step: ArrayLike, gamma: ArrayLike) -> Any:
    r"""The average after update ``step`` (>= 1) gave ``params``.

    :math:`\beta_t \hat\theta + (1-\beta_t)\theta`, computed in float32; pure; every leaf
    keeps its dtype.

    Raises:
      ValueError: as :func:`ema_decay` (concrete ``step`` < 1 or not an integer, ``gamma`` < 0 or
        not finite), or ``ema`` and ``params`` of different structures or shapes.
    """
    beta = ema_decay(step, gamma)
    ema_tree, params_tree = jax.tree_util.tree_structure(ema), jax.tree_util.tree_structure(params)
    if ema_tree != params_tree:
        raise ValueError(f"ema and params must have the same structure, got {ema_tree} and {params_tree}.")
    for (path, e), p in zip(jax.tree_util.tree_leaves_with_path(ema), jax.tree_util.tree_leaves(params),
                            strict=True):
        if jnp.shape(e) != jnp.shape(p):
            raise ValueError(f"ema{jax.tree_util.keystr(path)} has shape {jnp.shape(e)}, params"
                             f"{jax.tree_util.keystr(path)} has {jnp.shape(p)}: they must match.")
    return jax.tree_util.tree_map(
        lambda e, p: (beta * e.astype(jnp.float32) + (1 - beta) * p.astype(jnp.float32)).astype(e.dtype),
        ema, params)


def check_sigma_rels(name: str, sigma_rels: Any) -> tuple[float, ...]:
    """``sigma_rels`` as a tuple of distinct Python floats, each a valid EMA width.

    Raises:
      TypeError: not a tuple or list, or an entry that is not a concrete real number.
      ValueError: an entry outside (0, 1/sqrt(12)), or one that repeats.
    """
    if isinstance(sigma_rels, np.ndarray) and sigma_rels.ndim == 1:
        sigma_rels = sigma_rels.tolist()
    if not isinstance(sigma_rels, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of EMA widths sigma_rel in (0, 1/sqrt(12) = 0.2887), e.g. "
                        f"(0.05, 0.1), got {type(sigma_rels).__name__} {sigma_rels!r}.")
    values = []
    for i, value in enumerate(sigma_rels):
        try:
            ema_gamma(value)
        except (TypeError, ValueError) as err:  # named as this parameter's entry
            raise type(err)(str(err).replace("sigma_rel", f"{name}[{i}]", 1)) from None
        values.append(float(np.asarray(value)))
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a width (two equal profiles add nothing), got "
                         f"{tuple(values)}.")
    return tuple(values)
