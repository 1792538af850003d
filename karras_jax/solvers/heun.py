r"""Heun's method (Algorithm 2 of Karras et al. 2022): second order, two evaluations per step.

.. math::

    d = \frac{\hat x - D(\hat x; \hat\sigma)}{\hat\sigma}, \quad
    x' = \hat x + h\, d, \quad
    d' = \frac{x' - D(x'; \sigma_{i+1})}{\sigma_{i+1}}, \quad
    x_{i+1} = \hat x + h\, \frac{d + d'}{2}

with :math:`h = \sigma_{i+1} - \hat\sigma`. The last step, to :math:`\sigma_N = 0`, is
Euler only (Algorithm 2's ``if sigma_{i+1} != 0``), so N steps cost 2N - 1 evaluations.
"""

from __future__ import annotations

from typing import Any

import jax

from karras_jax import steps
from karras_jax.solvers.base import Denoise, Levels, Noise, Solver

__all__ = ["heun"]


def _step(denoise: Denoise, x_hat: jax.Array, levels: Levels, solver_state: Any,
          noise: Noise) -> tuple[jax.Array, jax.Array, Any]:
    denoised = denoise(x_hat, levels.sigma_hat)
    d = steps.slope(x_hat, denoised, levels.inv_sigma_hat)
    x_euler = steps.euler_update(x_hat, d, levels.h)
    d_next = steps.slope(x_euler, denoise(x_euler, levels.sigma_next), levels.inv_sigma_next)
    return steps.euler_update(x_hat, steps.heun_slope(d, d_next), levels.h), denoised, solver_state


def _evaluations(num_steps: int) -> int:
    return 2 * num_steps - 1


def heun() -> Solver:
    """Heun's second-order method: 2N - 1 network evaluations for N steps, error ~ 1/N^2.

    >>> import karras_jax as kj
    >>> kj.heun().evaluations(18)
    35
    """
    return Solver(name="heun", order=2, evaluations=_evaluations, step=_step)
