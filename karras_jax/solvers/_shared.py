r"""What several solvers share: the multistep history rule and the noise hyperparameter checks.

**The history rule** (DPM-Solver++(2M), its SDE variants and DPM-Solver++(3M) SDE). In the
time :math:`t = -\ln\sigma`, step :math:`i` goes from :math:`\hat\sigma_i` to
:math:`\sigma_{i+1}`, a step of :math:`h_i = \ln(\hat\sigma_i/\sigma_{i+1}) > 0`. A multistep
solver reuses the evaluations :math:`D_{i-k} = D(\hat x_{i-k}; \hat\sigma_{i-k})` of earlier
steps, :math:`g_{i,k} = \ln\hat\sigma_{i-k} - \ln\hat\sigma_{i-k+1}` apart in :math:`t`.
:math:`D_{i-k}` is usable at step :math:`i` only when

* the step is a real one: :math:`\sigma_{i+1} > 0` and :math:`\hat\sigma_i` finite (the last
  step, to 0, is first order);
* the step exists in the history: :math:`i \ge k`;
* no churn moved the sample off the trajectory since :math:`D_{i-k}` was evaluated: steps
  :math:`i-k+1, \dots, i` are not churned (:math:`\hat\sigma_j \le \sigma_j`; a churned
  step is first order, and the step after it cannot reach back across it);
* every gap back to it is finite and positive (an infinite :math:`\hat\sigma_{i-k}`, a flow
  model's first level, leaves no usable history; a Restart jump upward neither).

Where a rule fails the gap is reported as 1 (and the step size as 1 on rows that are no
real step), so coefficients computed from them are finite on every row and are masked out.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from karras_jax.solvers.base import Levels

__all__ = ["History", "check_noise_parameter", "history", "noise_parameters", "step_terms"]


class History(NamedTuple):
    r"""The step sizes in :math:`t = -\ln\sigma` of all M rows and which history they may use.

    Attributes:
      h: (M,) :math:`h_i = \ln(\hat\sigma_i/\sigma_{i+1})`; 1 on rows that are no real step
        (to :math:`\sigma = 0`, or from an infinite level).
      step: (M,) bool, the rows where ``h`` is the real step.
      gaps: ``depth`` (M,) arrays, ``gaps[k-1]`` :math:`= g_{i,k} = \ln\hat\sigma_{i-k} -
        \ln\hat\sigma_{i-k+1}`, 1 where ``usable[k-1]`` is False.
      usable: ``depth`` (M,) bool arrays, ``usable[k-1]``: :math:`D_{i-k}` may be used at step i.
    """

    h: jax.Array
    step: jax.Array
    gaps: tuple[jax.Array, ...]
    usable: tuple[jax.Array, ...]


def _delayed(values: jax.Array, k: int, fill: Any) -> jax.Array:
    """``values`` moved k rows later, the first k rows ``fill``: row i holds ``values[i - k]``."""
    m = values.shape[0]
    head = jnp.full((min(k, m),), fill, values.dtype)
    return jnp.concatenate([head, values[:m - k]]) if k < m else head


def history(levels: Levels, depth: int) -> History:
    """The step sizes and the usable history up to ``depth`` steps back, for (M,) levels."""
    sigma_hat = levels.sigma_hat
    log_hat = jnp.log(sigma_hat)
    h = jnp.log(sigma_hat * levels.inv_sigma_next)  # inv_sigma_next is 1 where sigma_next = 0
    step = (levels.sigma_next > 0) & jnp.isfinite(h) & (h > 0)
    unchurned = sigma_hat <= levels.sigma
    # gap back from row i to row i-1: log sigma_hat_{i-1} - log sigma_hat_i (inf - finite = inf).
    gap = jnp.concatenate([jnp.zeros_like(log_hat[:1]), log_hat[:-1] - log_hat[1:]])
    fine = jnp.isfinite(gap) & (gap > 0)
    ok = step
    gaps, usable = [], []
    for k in range(1, depth + 1):
        # D_{i-k}: the gap from row i-k+1 back to i-k, and row i-k+1 not churned.
        ok = ok & _delayed(fine & unchurned, k - 1, False)
        gap_k = _delayed(gap, k - 1, 0.0)
        usable.append(ok)
        gaps.append(jnp.where(ok, gap_k, jnp.ones_like(gap_k)))
    return History(h=jnp.where(step, h, jnp.ones_like(h)), step=step, gaps=tuple(gaps),
                   usable=tuple(usable))


def step_terms(levels: Levels, past: History, eta: float, s_noise: float) -> tuple[jax.Array, ...]:
    r"""The SDE step's coefficients of :math:`\hat x`, :math:`D_i` and the noise, over all rows.

    :math:`(\sigma_{i+1}/\hat\sigma_i) e^{-\eta h}`, :math:`1 - e^{-(1+\eta) h}` and
    :math:`s_{noise}\,\sigma_{i+1}\sqrt{1 - e^{-2\eta h}}`, from the real step :math:`h`
    (0 on a row of zero length, where the step then leaves the sample as it is: repeated
    levels, a Restart interval that is empty).
    """
    h = jnp.where(past.step, past.h, jnp.zeros_like(past.h))
    keep = levels.sigma_next * levels.inv_sigma_hat * jnp.exp(-eta * h)
    noise_scale = s_noise * levels.sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * eta * h))
    return keep, -jnp.expm1(-(1.0 + eta) * h), noise_scale


def noise_parameters(solver: str, eta: Any, s_noise: Any) -> tuple[float, float, bool]:
    """``(eta, s_noise, draws)``: both checked, and whether the solver draws noise at all.

    Raises:
      ValueError: as :func:`check_noise_parameter`.
    """
    eta = check_noise_parameter(solver, "eta", eta)
    s_noise = check_noise_parameter(solver, "s_noise", s_noise)
    return eta, s_noise, eta > 0 and s_noise > 0


def check_noise_parameter(solver: str, name: str, value: Any) -> float:
    """``value`` as a float, or ``ValueError`` naming ``solver``, ``name``, the range and the value.

    The noise hyperparameters (``eta``, ``s_noise``) must be concrete real numbers, finite
    and >= 0: they decide at build time whether the solver draws noise at all.
    """
    if (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and not isinstance(value, jax.core.Tracer)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if math.isfinite(number) and number >= 0:
            return number
    raise ValueError(f"{solver}: {name} must be a finite number >= 0, got {value!r}.")
