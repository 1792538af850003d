r"""Euler's method on the probability-flow ODE: first order, one evaluation per step.

.. math::

    x_{i+1} = \hat x_i + (\sigma_{i+1} - \hat\sigma_i)\,
    \frac{\hat x_i - D(\hat x_i; \hat\sigma_i)}{\hat\sigma_i}
"""

from __future__ import annotations

from karras_jax.solvers.base import Solver, euler_step, one_per_step

__all__ = ["euler"]



def euler() -> Solver:
    """Euler's method: N network evaluations for N steps, error ~ 1/N.

    >>> import karras_jax as kj
    >>> kj.euler().evaluations(18)
    18
    """
    return Solver(name="euler", order=1, evaluations=one_per_step, step=euler_step)
