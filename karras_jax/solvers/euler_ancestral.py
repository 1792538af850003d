r"""Euler ancestral ("Euler a" of k-diffusion and most UIs): first order, one evaluation per step.

Step :math:`i` from the churned :math:`(\hat x_i, \hat\sigma_i)` to :math:`\sigma_{i+1} > 0`
splits the target level into a deterministic part :math:`\sigma_\downarrow` reached by an
Euler step and fresh noise of std :math:`\sigma_\uparrow`, with
:math:`\sigma_\downarrow^2 + \sigma_\uparrow^2 = \sigma_{i+1}^2`:

.. math::

    \sigma_\uparrow = \min\Bigl(\sigma_{i+1},\ \eta\, \sigma_{i+1}
        \sqrt{1 - \sigma_{i+1}^2/\hat\sigma_i^2}\Bigr), \qquad
    \sigma_\downarrow = \sqrt{\sigma_{i+1}^2 - \sigma_\uparrow^2},

.. math::

    x_{i+1} = \hat x_i + (\sigma_\downarrow - \hat\sigma_i)\,
        \frac{\hat x_i - D(\hat x_i; \hat\sigma_i)}{\hat\sigma_i}
        + S\, \sigma_\uparrow\, z_i, \qquad z_i \sim \mathcal N(0, I),

with :math:`S` the solver's ``s_noise``. :math:`\eta = 1` is ancestral sampling proper
(DDPM's posterior variance), :math:`\eta = 0` is Euler exactly; :math:`\sigma_\uparrow`,
:math:`\sigma_\downarrow - \hat\sigma_i` and :math:`S\sigma_\uparrow` are tabulated for all
steps before the loop, so a step is one evaluation and one fused update.

Noise: :math:`z_i` is draw 0 of step :math:`i` of the solver stream,
``normal(fold_in(fold_in(split(k_b, 3)[2], i), 0))`` (:func:`karras_jax.step_noise`,
docs/noise.md), apart from the start noise and the churn. The last step (to
:math:`\sigma = 0`, where :math:`\sigma_\uparrow = 0`) is plain Euler and draws nothing; with
:math:`\eta = 0` or ``s_noise = 0`` no step draws (the solver is then not ``stochastic``).

Churn: Algorithm 2's churn (config ``s_churn``, ``s_noise``) runs first as for every solver,
and the ancestral step starts from :math:`(\hat x_i, \hat\sigma_i)`: the two compose, the
churn raising the level and the ancestral step taking it down with its own noise. With
``s_churn = 0`` this is k-diffusion's ``sample_euler_ancestral``. N steps cost N evaluations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from karras_jax import steps
from karras_jax.solvers._shared import noise_parameters
from karras_jax.solvers.base import Denoise, Levels, Noise, Solver, one_per_step

__all__ = ["euler_ancestral"]


class _Coefficients(NamedTuple):
    h_down: jax.Array  # sigma_down - sigma_hat, the Euler step (negative)
    noise_scale: jax.Array  # s_noise * sigma_up


def _ancestral_levels(inv_sigma_hat: jax.Array, sigma_next: jax.Array,
                      eta: float) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\sigma_\downarrow, \sigma_\uparrow)` from :math:`\hat\sigma` to :math:`\sigma_{i+1}`.

    Written with :math:`\sigma_{i+1}/\hat\sigma`, so an infinite :math:`\hat\sigma` gives
    :math:`\sigma_\uparrow = \min(1, \eta)\,\sigma_{i+1}` rather than NaN.
    """
    ratio = sigma_next * inv_sigma_hat
    kept = jnp.sqrt(jnp.maximum(1.0 - ratio * ratio, 0.0))
    sigma_up = jnp.minimum(sigma_next, eta * sigma_next * kept)
    sigma_down = jnp.sqrt(jnp.maximum(sigma_next * sigma_next - sigma_up * sigma_up, 0.0))
    return sigma_down, sigma_up


@dataclasses.dataclass(frozen=True)
class _Scalars:
    """``Solver.scalars``: the ancestral split of every step (equal for equal hyperparameters)."""

    eta: float
    s_noise: float

    def __call__(self, levels: Levels) -> _Coefficients:
        if self.eta == 0:  # Euler exactly
            return _Coefficients(levels.h, jnp.zeros_like(levels.h))
        sigma_down, sigma_up = _ancestral_levels(levels.inv_sigma_hat, levels.sigma_next, self.eta)
        return _Coefficients(sigma_down - levels.sigma_hat, self.s_noise * sigma_up)


def _deterministic_part(denoise: Denoise, x_hat: jax.Array,
                        levels: Levels) -> tuple[jax.Array, jax.Array]:
    denoised = denoise(x_hat, levels.sigma_hat)
    d = steps.slope(x_hat, denoised, levels.inv_sigma_hat)
    return steps.euler_update(x_hat, d, levels.extra.h_down), denoised


def _noisy_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, solver_state: Any,
                noise: Noise) -> tuple[jax.Array, jax.Array, Any]:
    x, denoised = _deterministic_part(denoise, x_hat, levels)
    return x + levels.extra.noise_scale.astype(x.dtype) * noise(0), denoised, solver_state


def _quiet_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, solver_state: Any,
                noise: Noise | None) -> tuple[jax.Array, jax.Array, Any]:
    x, denoised = _deterministic_part(denoise, x_hat, levels)
    return x, denoised, solver_state



def euler_ancestral(eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    r"""Euler ancestral sampling: N network evaluations for N steps, first order.

    Args:
      eta: The share of the step's variance replaced by fresh noise, finite and >= 0
        (1: ancestral sampling; 0: Euler; above 1 the noise std is capped at
        :math:`\sigma_{i+1}`).
      s_noise: Scale of the solver's own noise, finite and >= 0 (independent of the
        config's ``s_noise``, which scales the churn).

    Returns:
      A stochastic :class:`~karras_jax.solvers.base.Solver` named ``"euler_ancestral"``.

    Raises:
      ValueError: ``eta`` or ``s_noise`` not a finite number >= 0.

    >>> from karras_jax.solvers import euler_ancestral
    >>> solver = euler_ancestral(eta=0.5)
    >>> solver.order, solver.evaluations(18), solver.stochastic
    (1, 18, True)
    """
    eta, s_noise, noisy = noise_parameters("euler_ancestral", eta, s_noise)
    return Solver(name="euler_ancestral", order=1, evaluations=one_per_step,
                  step=_noisy_step if noisy else _quiet_step, scalars=_Scalars(eta, s_noise),
                  stochastic=noisy)
