r"""The formulas of one step of Algorithm 2, each written once, public and pure.

Every solver (:mod:`karras_jax.solvers`), the sampling loop and diffusers' step API
(:mod:`karras_jax.compat.steps`) call these; a solver written outside the package needs
nothing else:

* the churn: :func:`churn_gamma` (:math:`\gamma_i`), :func:`churn_std`
  (:math:`\sqrt{\hat\sigma^2 - \sigma^2}`), :func:`churn_levels` (:math:`\hat\sigma` and the
  std of the noise added, for one level or all N) and :func:`add_churn`
  (:math:`\hat x = x + \text{std}\cdot z`);
* :func:`slope`: :math:`d = (x - D(x;\sigma))/\sigma`, written with the reciprocal;
* :func:`euler_update`: :math:`x' = x + h\, d` with :math:`h = \sigma_{next} - \hat\sigma`;
* :func:`heun_slope`: :math:`(d + d')/2`.

The churn formulas take a :class:`~karras_jax.KarrasVeConfig` and check it (cheap Python
checks, paid once per trace); the elementwise formulas check nothing, so a loop body holds
only arithmetic. Levels are in the level dtype (float32, or float64 under x64); the
elementwise formulas compute in the dtype of ``x`` and cast the scalars to it.

>>> import jax.numpy as jnp
>>> import karras_jax as kj
>>> x, denoised = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0])
>>> d = kj.slope(x, denoised, jnp.float32(1 / 2.0))           # (x - D) / sigma at sigma = 2
>>> kj.euler_update(x, d, jnp.float32(1.0 - 2.0)).tolist()     # to sigma = 1
[0.75, 1.5]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from karras_jax._validation import check_num_steps, level_dtype
from karras_jax.config import KarrasVeConfig, check_config

__all__ = ["add_churn", "churn_gamma", "churn_levels", "churn_std", "euler_update", "heun_slope", "slope"]

_SQRT2_MINUS_1 = math.sqrt(2.0) - 1.0


def churn_gamma(config: KarrasVeConfig, num_inference_steps: int, sigma: ArrayLike) -> jax.Array:
    r"""The churn factor :math:`\gamma_i` of Algorithm 2, elementwise over ``sigma``.

    .. math::

        \gamma_i = \min(S_{churn}/N, \sqrt{2}-1) \text{ if } S_{min} \le \sigma_i \le S_{max}
        \text{ else } 0

    The window test is a ``jnp.where``, so traced levels and a traced config work.

    Args:
      config: Supplies s_churn, s_min, s_max (traced or concrete).
      num_inference_steps: N, a positive Python int.
      sigma: The level sigma_i, or all N levels (traced or concrete).

    Returns:
      gamma_i in the level dtype, of the broadcast shape of ``sigma`` and the config.

    Raises:
      TypeError: ``config`` is not a :class:`~karras_jax.KarrasVeConfig` (or holds
        placeholders), or ``num_inference_steps`` is not an int.
      ValueError: ``num_inference_steps`` < 1.
    """
    check_config(config)
    n = check_num_steps(num_inference_steps)
    dtype = level_dtype()
    sigma = jnp.asarray(sigma, dtype)
    s_churn = jnp.asarray(config.s_churn, dtype)
    inside = (jnp.asarray(config.s_min, dtype) <= sigma) & (sigma <= jnp.asarray(config.s_max, dtype))
    gamma = jnp.minimum(s_churn / n, jnp.asarray(_SQRT2_MINUS_1, dtype))
    return jnp.where(inside, gamma, jnp.zeros_like(gamma))


def churn_std(sigma: ArrayLike, gamma: ArrayLike) -> jax.Array:
    r""":math:`\sqrt{\hat\sigma^2 - \sigma^2}` for :math:`\hat\sigma = \sigma(1+\gamma)`, never NaN.

    Written as :math:`\sigma\sqrt{\gamma(2+\gamma)}`: the difference of squares can round
    (or be contracted into a fused multiply-add) to a tiny negative number when gamma is
    0 or tiny, and squaring 1e4-sized legacy levels costs range. The gradient at
    gamma = 0 is kept finite (0) with the double-``where`` trick.

    Args:
      sigma: The level(s) before the churn.
      gamma: :math:`\gamma` from :func:`churn_gamma`, >= 0.

    Returns:
      The std, elementwise (without :math:`S_{noise}`; :func:`churn_levels` applies it).
    """
    sigma, gamma = jnp.asarray(sigma), jnp.asarray(gamma)
    radicand = gamma * (2.0 + gamma)
    positive = radicand > 0
    root = jnp.sqrt(jnp.where(positive, radicand, jnp.ones_like(radicand)))
    return sigma * jnp.where(positive, root, jnp.zeros_like(root))


def churn_levels(config: KarrasVeConfig, num_inference_steps: int,
                 sigma: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""The churned level and the std of the noise added, elementwise over ``sigma``.

    .. math::

        \hat\sigma = \sigma(1 + \gamma), \qquad
        \text{std} = S_{noise} \sqrt{\hat\sigma^2 - \sigma^2}

    with :math:`\gamma` from :func:`churn_gamma` and the root from :func:`churn_std`.

    Args:
      config: Supplies s_churn, s_min, s_max and s_noise.
      num_inference_steps: N, a positive Python int.
      sigma: One level or all N (the sampler computes all N once, before its loop).

    Returns:
      ``(sigma_hat, noise_std)`` in the level dtype.

    Raises:
      As :func:`churn_gamma`.
    """
    gamma = churn_gamma(config, num_inference_steps, sigma)
    sigma = jnp.asarray(sigma, gamma.dtype)
    s_noise = jnp.asarray(config.s_noise, gamma.dtype)
    return sigma * (1.0 + gamma), churn_std(sigma, gamma) * s_noise


def add_churn(x: ArrayLike, noise_std: ArrayLike, z: ArrayLike) -> jax.Array:
    r"""The churned sample :math:`\hat x = x + \text{std}\cdot z`, in the dtype of ``x``.

    Args:
      x: The sample at sigma_i.
      noise_std: The std from :func:`churn_levels` (it already holds :math:`S_{noise}`).
      z: Standard normal noise of the shape of ``x``.
    """
    x = jnp.asarray(x)
    return x + jnp.asarray(noise_std).astype(x.dtype) * jnp.asarray(z).astype(x.dtype)


def slope(x: ArrayLike, denoised: ArrayLike, inv_sigma: ArrayLike) -> jax.Array:
    r"""The probability-flow slope :math:`d = (x - D(x;\sigma))/\sigma`.

    Takes :math:`1/\sigma`: one scalar division per step, then an elementwise multiply
    (an elementwise division is several times dearer on CPU, where XLA keeps it exact,
    and made the memory-bound Heun update compute-bound).

    Args:
      x: The sample at sigma.
      denoised: :math:`D(x;\sigma)`, the shape of ``x``.
      inv_sigma: :math:`1/\sigma`, a scalar (or broadcastable).

    Returns:
      d in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    return (x - denoised) * jnp.asarray(inv_sigma).astype(x.dtype)


def euler_update(x: ArrayLike, d: ArrayLike, h: ArrayLike) -> jax.Array:
    r"""The Euler update :math:`x + h\, d`, with :math:`h = \sigma_{next} - \hat\sigma` (negative).

    Args:
      x: The sample the step starts from (:math:`\hat x`).
      d: The slope, from :func:`slope` or :func:`heun_slope`.
      h: The step size, a scalar (or broadcastable).

    Returns:
      The sample at :math:`\sigma_{next}`, in the dtype of ``x``.
    """
    x = jnp.asarray(x)
    return x + jnp.asarray(h).astype(x.dtype) * d


def heun_slope(d: ArrayLike, d_next: ArrayLike) -> jax.Array:
    r"""Heun's averaged slope :math:`(d + d')/2` (the trapezoidal rule).

    Args:
      d: The slope at the start of the step.
      d_next: The slope at the Euler result, at :math:`\sigma_{next}`.
    """
    return 0.5 * jnp.asarray(d) + 0.5 * jnp.asarray(d_next)
