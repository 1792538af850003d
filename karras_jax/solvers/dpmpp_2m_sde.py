r"""DPM-Solver++(2M) SDE ("DPM++ 2M SDE" of k-diffusion): second order, one evaluation per step.

In the time :math:`t = -\ln\sigma` (data prediction, VE form), step :math:`i` goes from the
churned :math:`(\hat x_i, \hat\sigma_i)` to :math:`\sigma_{i+1} > 0`, a step of
:math:`h_i = \ln(\hat\sigma_i/\sigma_{i+1})`. It solves the SDE whose noise is a share
:math:`\eta` of the step (:math:`\eta = 0`: the probability-flow ODE, DPM-Solver++(2M)
itself), reusing the previous evaluation :math:`D_{i-1}` at :math:`\hat\sigma_{i-1}`,
:math:`g_i = \ln(\hat\sigma_{i-1}/\hat\sigma_i)` earlier, :math:`r_i = g_i/h_i`:

.. math::

    x_{i+1} = \frac{\sigma_{i+1}}{\hat\sigma_i} e^{-\eta h_i}\, \hat x_i
        + \bigl(1 - e^{-(1+\eta) h_i}\bigr) D_i
        + c_i\, (D_i - D_{i-1})
        + S\, \sigma_{i+1} \sqrt{1 - e^{-2\eta h_i}}\; z_i

with :math:`D_i = D(\hat x_i; \hat\sigma_i)`, :math:`S` the solver's ``s_noise`` and the
history coefficient of the chosen ``solver_type``

.. math::

    c_i^{\text{midpoint}} = \frac{1 - e^{-(1+\eta) h_i}}{2 r_i}, \qquad
    c_i^{\text{heun}} = \frac{1}{r_i}\Bigl(1 + \frac{e^{-(1+\eta) h_i} - 1}{(1+\eta) h_i}\Bigr).

The four coefficients are tabulated for all steps before the loop (``expm1`` forms, as
k-diffusion), so a step is one evaluation and one fused update; N steps cost N evaluations.
The history coefficient is 0 (a first-order step) where there is no usable history: at the
first step, on a churned step, after an infinite level (the rule shared with
DPM-Solver++(2M), :mod:`karras_jax.solvers._shared`). The last step, to :math:`\sigma = 0`,
is Euler (:math:`x_N = D_{N-1}` up to rounding, k-diffusion's denoising step).

Noise: :math:`z_i` is draw 0 of step :math:`i` of the solver stream,
``normal(fold_in(fold_in(split(k_b, 3)[2], i), 0))`` (:func:`karras_jax.step_noise`,
docs/noise.md), one draw per step with :math:`\sigma_{i+1} > 0`; with :math:`\eta = 0` or
``s_noise = 0`` nothing is drawn (the solver is then not ``stochastic``).

Churn: Algorithm 2's churn (config ``s_churn``) runs first as for every solver, and the step
starts from :math:`(\hat x_i, \hat\sigma_i)`; a churned step is first order, the steps
outside the churn window keep the history. With ``s_churn = 0`` this is k-diffusion's
``sample_dpmpp_2m_sde`` fed the same noise; with :math:`\eta = 0` and ``"midpoint"``, it is
DPM-Solver++(2M).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from karras_jax.solvers._shared import history, noise_parameters, step_terms
from karras_jax.solvers.base import Denoise, Levels, Noise, Solver, one_per_step

__all__ = ["dpmpp_2m_sde"]

SOLVER_TYPES = ("midpoint", "heun")


class _Coefficients(NamedTuple):
    keep: jax.Array  # of x_hat: (sigma_next / sigma_hat) exp(-eta h)
    denoised: jax.Array  # of D_i: 1 - exp(-(1 + eta) h)
    difference: jax.Array  # of D_i - D_{i-1}: c_i (0: first order)
    noise_scale: jax.Array  # of z_i: s_noise sigma_next sqrt(1 - exp(-2 eta h))


@dataclasses.dataclass(frozen=True)
class _Scalars:
    """``Solver.scalars``: the coefficients of every step (equal for equal hyperparameters)."""

    eta: float
    s_noise: float
    solver_type: str

    def __call__(self, levels: Levels) -> _Coefficients:
        past = history(levels, 1)
        h, gap = past.h, past.gaps[0]
        h_eta = (1.0 + self.eta) * h
        if self.solver_type == "heun":
            difference = (jnp.expm1(-h_eta) / h_eta + 1.0) * (h / gap)
        else:
            difference = -0.5 * jnp.expm1(-h_eta) * (h / gap)
        keep, denoised, noise_scale = step_terms(levels, past, self.eta, self.s_noise)
        return _Coefficients(keep, denoised, jnp.where(past.usable[0], difference, jnp.zeros_like(h)),
                             noise_scale)


def _init(x0: jax.Array) -> jax.Array:
    return jnp.zeros_like(x0)  # D_{i-1}; its coefficient is 0 at the first step


def _update(denoise: Denoise, x_hat: jax.Array, levels: Levels,
            previous: jax.Array) -> tuple[jax.Array, jax.Array]:
    denoised = denoise(x_hat, levels.sigma_hat)
    c = jax.tree_util.tree_map(lambda value: value.astype(x_hat.dtype), levels.extra)
    return c.keep * x_hat + c.denoised * denoised + c.difference * (denoised - previous), denoised


def _noisy_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, previous: jax.Array,
                noise: Noise) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, denoised = _update(denoise, x_hat, levels, previous)
    return x + levels.extra.noise_scale.astype(x.dtype) * noise(0), denoised, denoised


def _quiet_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, previous: jax.Array,
                noise: Noise | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, denoised = _update(denoise, x_hat, levels, previous)
    return x, denoised, denoised



def dpmpp_2m_sde(eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> Solver:
    r"""DPM-Solver++(2M) SDE: N network evaluations for N steps, second order at :math:`\eta = 0`.

    Args:
      eta: The share of each step taken as fresh noise, finite and >= 0 (0: the ODE
        solver DPM-Solver++(2M); 1: k-diffusion's default).
      s_noise: Scale of the solver's own noise, finite and >= 0 (independent of the
        config's ``s_noise``, which scales the churn).
      solver_type: ``"midpoint"`` (k-diffusion's default) or ``"heun"``, the form of the
        second-order history term.

    Returns:
      A stochastic :class:`~karras_jax.solvers.base.Solver` named ``"dpmpp_2m_sde"``
      (``"dpmpp_2m_sde_heun"`` for ``solver_type="heun"``).

    Raises:
      ValueError: ``eta`` or ``s_noise`` not a finite number >= 0, or another
        ``solver_type``.

    >>> from karras_jax.solvers import dpmpp_2m_sde
    >>> solver = dpmpp_2m_sde(solver_type="heun")
    >>> solver.name, solver.order, solver.evaluations(18), solver.stochastic
    ('dpmpp_2m_sde_heun', 2, 18, True)
    """
    eta, s_noise, noisy = noise_parameters("dpmpp_2m_sde", eta, s_noise)
    if not (isinstance(solver_type, str) and solver_type in SOLVER_TYPES):
        raise ValueError(f"dpmpp_2m_sde: solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}.")
    name = "dpmpp_2m_sde" if solver_type == "midpoint" else "dpmpp_2m_sde_heun"
    return Solver(name=name, order=2, evaluations=one_per_step,
                  step=_noisy_step if noisy else _quiet_step, init=_init,
                  scalars=_Scalars(eta, s_noise, solver_type), stochastic=noisy)
