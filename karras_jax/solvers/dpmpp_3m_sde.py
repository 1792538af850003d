r"""DPM-Solver++(3M) SDE ("DPM++ 3M SDE" of k-diffusion): third order, one evaluation per step.

In the time :math:`t = -\ln\sigma` (data prediction, VE form), step :math:`i` goes from the
churned :math:`(\hat x_i, \hat\sigma_i)` to :math:`\sigma_{i+1} > 0`, a step of
:math:`h_i = \ln(\hat\sigma_i/\sigma_{i+1})`; with :math:`\bar h = (1+\eta) h_i`,
:math:`\varphi_2 = 1 + (e^{-\bar h} - 1)/\bar h` and :math:`\varphi_3 = \varphi_2/\bar h - 1/2`,

.. math::

    x_{i+1} = \frac{\sigma_{i+1}}{\hat\sigma_i} e^{-\eta h_i}\, \hat x_i
        + \bigl(1 - e^{-\bar h}\bigr) D_i + \varphi_2\, \delta_1 - \varphi_3\, \delta_2
        + S\, \sigma_{i+1}\sqrt{1 - e^{-2\eta h_i}}\; z_i,

where :math:`\delta_1, \delta_2` are the first and second divided differences of the last
three evaluations :math:`D_i, D_{i-1}, D_{i-2}` (at :math:`\hat\sigma_i, \hat\sigma_{i-1},
\hat\sigma_{i-2}`, gaps :math:`g_1 = \ln(\hat\sigma_{i-1}/\hat\sigma_i)`, :math:`g_2 =
\ln(\hat\sigma_{i-2}/\hat\sigma_{i-1})`, :math:`r_0 = g_1/h_i`, :math:`r_1 = g_2/h_i`):

.. math::

    \Delta_0 = \frac{D_i - D_{i-1}}{r_0}, \quad \Delta_1 = \frac{D_{i-1} - D_{i-2}}{r_1}, \quad
    \delta_1 = \Delta_0 + \frac{r_0 (\Delta_0 - \Delta_1)}{r_0 + r_1}, \quad
    \delta_2 = \frac{\Delta_0 - \Delta_1}{r_0 + r_1}.

That is linear in the two differences: :math:`x_{i+1} = a\hat x_i + b D_i + \alpha (D_i -
D_{i-1}) - \beta (D_{i-1} - D_{i-2}) + s z_i` with :math:`\alpha = (\varphi_2 + (\varphi_2 r_0
- \varphi_3)/(r_0 + r_1))/r_0` and :math:`\beta = (\varphi_2 r_0 - \varphi_3)/((r_0 + r_1)
r_1)`, all tabulated for every step before the loop (``expm1`` forms, as k-diffusion), so a
step is one evaluation and one fused update; N steps cost N evaluations. With one usable
evaluation back the step is second order (:math:`\alpha = \varphi_2/r_0`, :math:`\beta = 0`),
with none first order (:math:`\alpha = \beta = 0`). What is usable is the rule shared with
DPM-Solver++(2M) (:mod:`karras_jax.solvers._shared`): nothing at the first step, on a
churned step or after an infinite level; :math:`D_{i-2}` only when step :math:`i-1` was not
churned either. The last step, to :math:`\sigma = 0`, is Euler (:math:`x_N = D_{N-1}` up to
rounding, k-diffusion's denoising step).

Noise: :math:`z_i` is draw 0 of step :math:`i` of the solver stream,
``normal(fold_in(fold_in(split(k_b, 3)[2], i), 0))`` (:func:`karras_jax.step_noise`,
docs/noise.md), one draw per step with :math:`\sigma_{i+1} > 0`; with :math:`\eta = 0` or
``s_noise = 0`` nothing is drawn (the solver is then not ``stochastic``).

Churn: Algorithm 2's churn (config ``s_churn``) runs first as for every solver, and the step
starts from :math:`(\hat x_i, \hat\sigma_i)`. With ``s_churn = 0`` this is k-diffusion's
``sample_dpmpp_3m_sde`` fed the same noise.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from karras_jax.solvers._shared import history, noise_parameters, step_terms
from karras_jax.solvers.base import Denoise, Levels, Noise, Solver, one_per_step

__all__ = ["dpmpp_3m_sde"]

_Past = tuple[jax.Array, jax.Array]  # (D_{i-1}, D_{i-2})


class _Coefficients(NamedTuple):
    keep: jax.Array  # of x_hat: (sigma_next / sigma_hat) exp(-eta h)
    denoised: jax.Array  # of D_i: 1 - exp(-(1 + eta) h)
    first: jax.Array  # alpha, of D_i - D_{i-1}
    second: jax.Array  # beta, of -(D_{i-1} - D_{i-2})
    noise_scale: jax.Array  # of z_i: s_noise sigma_next sqrt(1 - exp(-2 eta h))


@dataclasses.dataclass(frozen=True)
class _Scalars:
    """``Solver.scalars``: the coefficients of every step (equal for equal hyperparameters)."""

    eta: float
    s_noise: float

    def __call__(self, levels: Levels) -> _Coefficients:
        past = history(levels, 2)
        h = past.h
        h_eta = (1.0 + self.eta) * h
        phi_2 = jnp.expm1(-h_eta) / h_eta + 1.0
        phi_3 = phi_2 / h_eta - 0.5
        r0, r1 = past.gaps[0] / h, past.gaps[1] / h
        lead = (phi_2 * r0 - phi_3) / (r0 + r1)
        zero = jnp.zeros_like(h)
        first = jnp.where(past.usable[1], (phi_2 + lead) / r0,
                          jnp.where(past.usable[0], phi_2 / r0, zero))
        second = jnp.where(past.usable[1], lead / r1, zero)
        keep, denoised, noise_scale = step_terms(levels, past, self.eta, self.s_noise)
        return _Coefficients(keep, denoised, first, second, noise_scale)


def _init(x0: jax.Array) -> _Past:
    return jnp.zeros_like(x0), jnp.zeros_like(x0)  # their coefficients are 0 until they exist


def _update(denoise: Denoise, x_hat: jax.Array, levels: Levels,
            past: _Past) -> tuple[jax.Array, jax.Array]:
    denoised = denoise(x_hat, levels.sigma_hat)
    last, before = past
    c = jax.tree_util.tree_map(lambda value: value.astype(x_hat.dtype), levels.extra)
    x = (c.keep * x_hat + c.denoised * denoised + c.first * (denoised - last)
         - c.second * (last - before))
    return x, denoised


def _noisy_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, past: _Past,
                noise: Noise) -> tuple[jax.Array, jax.Array, _Past]:
    x, denoised = _update(denoise, x_hat, levels, past)
    return x + levels.extra.noise_scale.astype(x.dtype) * noise(0), denoised, (denoised, past[0])


def _quiet_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, past: _Past,
                noise: Noise | None) -> tuple[jax.Array, jax.Array, _Past]:
    x, denoised = _update(denoise, x_hat, levels, past)
    return x, denoised, (denoised, past[0])



def dpmpp_3m_sde(eta: float = 1.0, s_noise: float = 1.0) -> Solver:
    r"""DPM-Solver++(3M) SDE: N network evaluations for N steps.

    ``order`` is 2, the measured global order at :math:`\eta = 0`: the update is third
    order, but the first two steps (no history yet) are first and second order, as in
    k-diffusion, and they bound the global error to :math:`N^{-2}` (4-10x below
    DPM-Solver++(2M)'s at the same N).

    Args:
      eta: The share of each step taken as fresh noise, finite and >= 0 (0: the ODE
        solver DPM-Solver++(3M); 1: k-diffusion's default).
      s_noise: Scale of the solver's own noise, finite and >= 0 (independent of the
        config's ``s_noise``, which scales the churn).

    Returns:
      A stochastic :class:`~karras_jax.solvers.base.Solver` named ``"dpmpp_3m_sde"``.

    Raises:
      ValueError: ``eta`` or ``s_noise`` not a finite number >= 0.

    >>> from karras_jax.solvers import dpmpp_3m_sde
    >>> solver = dpmpp_3m_sde(eta=0.0)
    >>> solver.order, solver.evaluations(18), solver.stochastic
    (2, 18, False)
    """
    eta, s_noise, noisy = noise_parameters("dpmpp_3m_sde", eta, s_noise)
    return Solver(name="dpmpp_3m_sde", order=2, evaluations=one_per_step,
                  step=_noisy_step if noisy else _quiet_step, init=_init,
                  scalars=_Scalars(eta, s_noise), stochastic=noisy)
