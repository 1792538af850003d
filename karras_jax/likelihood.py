r"""Exact log-likelihoods of a denoiser's model: the probability-flow ODE run upward.

A denoiser :math:`D(x;\sigma)` defines, through the probability-flow ODE

.. math::

    \frac{dx}{d\sigma} = f(x, \sigma) = \frac{x - D(x;\sigma)}{\sigma},

a continuous normalizing flow between the data end (small :math:`\sigma`) and the Gaussian
at :math:`\sigma_{max}`. Along a solution the density obeys the instantaneous change of
variables :math:`\frac{d}{d\sigma} \log p_\sigma(x(\sigma)) = -\nabla\cdot f(x(\sigma), \sigma)`,
so for a sample :math:`x` at the smallest positive level :math:`\sigma_{min}`

.. math::

    \log p_{\sigma_{min}}(x) = \log \mathcal N\big(x(\sigma_{max}); 0, \sigma_{max}^2 I\big)
    + \int_{\sigma_{min}}^{\sigma_{max}} \nabla\cdot f(x(\sigma), \sigma)\, d\sigma .

:func:`log_likelihood` integrates :math:`(x, \int \nabla\cdot f)` together with the sampler's
own Euler or Heun steps on the reversed grid of a :func:`karras_jax.set_timesteps` state,
from :math:`\sigma_{N-1}` up to :math:`\sigma_0`. The density it measures is the model's at
:math:`\sigma_{min}`: the data distribution convolved with :math:`N(0, \sigma_{min}^2 I)`,
not the data's own (that has none for discrete data). The prior at the top is
:math:`N(0, \sigma_{max}^2 I)`, which stands in for the model's marginal there (the data
convolved with :math:`N(0, \sigma_{max}^2 I)`); for :math:`\sigma_{max}` large against the
data's scale the difference is :math:`O(s^2/\sigma_{max}^2)` nats per dimension.

:func:`bits_per_dim` converts nats per sample to bits per dimension,
:math:`-\log p / (d \ln 2)`.

>>> import jax, jax.numpy as jnp, karras_jax as kj
>>> from karras_jax.likelihood import log_likelihood
>>> from karras_jax.analytic import GaussianData
>>> data = GaussianData(mean=jnp.zeros(2), std=jnp.asarray(1.0))
>>> state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.01, sigma_max=80.0), 256, "karras")
>>> ll = log_likelihood(data.denoise, jnp.zeros((1, 2)), state)
>>> closed = -jnp.log(2 * jnp.pi * (1 + 0.01**2))        # log N(0; 0, (1 + 0.01^2) I), d = 2
>>> round(float(ll[0]), 3), round(float(closed), 3)
(-1.837, -1.838)
>>> round(float(bits_per_dim(ll, 2)[0]), 2)               # -ll / (d ln 2)
1.33
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax import steps
from karras_jax._validation import (
    as_typed_keys,
    carry_dtype,
    check_arity,
    check_cond,
    check_count,
    check_finite_array,
    concrete_value,
    level_dtype,
)
from karras_jax.state import KarrasVeState, check_state

__all__ = ["TRACES", "PROBES", "LIKELIHOOD_SOLVERS", "bits_per_dim", "log_likelihood"]

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
LIKELIHOOD_SOLVERS = ("heun", "euler")

Denoise = Callable[[jax.Array, jax.Array, Any], jax.Array]


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Returns ``value`` when it is one of ``allowed``; else TypeError (not a str) or ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {type(value).__name__} {value!r}.")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


def log_likelihood(denoise_fn: Denoise, x: ArrayLike, state: KarrasVeState, key: ArrayLike | None = None, *,
                   trace: str = "exact", probes: int = 1, probe: str = "rademacher", solver: str = "heun",
                   cond: Any = None) -> jax.Array:
    r"""The model's log-density at each sample of ``x``, in nats, by the probability-flow ODE.

    With the levels :math:`\sigma_0 > \dots > \sigma_{N-1} > 0` of ``state`` walked upward,
    :math:`x_{N-1} = x` and :math:`\ell_{N-1} = 0`, each step from :math:`\sigma = \sigma_i`
    to :math:`\sigma' = \sigma_{i-1}` (:math:`h = \sigma' - \sigma > 0`) advances the
    augmented state :math:`(x, \ell)` with the drift :math:`f = (x - D(x;\sigma))/\sigma`
    and its divergence :math:`\nabla\cdot f = \operatorname{tr} \partial f/\partial x`:

    .. math::

        \text{euler:}\quad x' = x + h f, \quad \ell' = \ell + h\, \nabla\cdot f

        \text{heun:}\quad \tilde x = x + h f, \quad
        x' = x + \tfrac h2 \big(f + \tilde f\big), \quad
        \ell' = \ell + \tfrac h2 \big(\nabla\cdot f + \nabla\cdot \tilde f\big)

    (:math:`\tilde f` at :math:`(\tilde x, \sigma')`), the sampler's step formulas
    (:func:`karras_jax.slope`, :func:`karras_jax.euler_update`, :func:`karras_jax.heun_slope`)
    run backwards. At the top

    .. math::

        \log p(x) = \ell_0 + \log \mathcal N(x_0; 0, \sigma_0^2 I)
        = \ell_0 - \frac{\lVert x_0\rVert^2}{2\sigma_0^2} - \frac d2 \log(2\pi\sigma_0^2).

    This is the density of the model's distribution at :math:`\sigma_{N-1}`
    (:math:`\sigma_{min}`): the data convolved with :math:`N(0, \sigma_{min}^2 I)`. Heun's
    error falls as :math:`N^{-2}` (:math:`2(N-1)` Jacobian evaluations), Euler's as
    :math:`N^{-1}`. The ``"karras"`` schedule (:math:`\rho = 7`) spends its steps at low
    :math:`\sigma`, where the drift bends most.

    ``trace="exact"`` computes :math:`\operatorname{tr} \partial f/\partial x` per sample from
    d Jacobian-vector products (d = ``prod(sample_shape)``) of one linearization: exact, and
    dear for large d. ``trace="hutchinson"`` estimates it as
    :math:`\frac1P \sum_p v_p^\top (\partial f/\partial x)\, v_p` with ``probes`` = P probe
    vectors per sample (Rademacher or standard normal) drawn once from ``key`` and kept for
    every step, as is standard (FFJORD, k-diffusion): one product per probe, unbiased, with a
    variance that falls as 1/P.

    The denoiser must treat samples independently (no cross-batch statistics): the exact
    trace pushes one basis direction through every sample of the batch at once.

    Everything is one ``lax.fori_loop``: ``jax.jit`` and ``jax.vmap`` (over ``x``, ``key``,
    or the state's levels) work.

    Args:
      denoise_fn: ``denoise_fn(x, sigma, cond) -> D(x; sigma)``, x (B, *sample_shape) in
        the carry dtype (float32, float64 under x64), sigma a scalar; differentiable.
      x: (B, *sample_shape) data, at least one axis beyond the batch.
      state: From :func:`karras_jax.set_timesteps`, with a finite :math:`\sigma_0` (not
        ``"flow"``); the trailing 0 level is not used.
      key: A PRNG key (typed or raw uint32) for the Hutchinson probes; required for
        ``trace="hutchinson"``, ignored for ``"exact"``.
      trace: ``"exact"`` or ``"hutchinson"``.
      probes: P >= 1, the probe vectors per sample (``"hutchinson"`` only).
      probe: ``"rademacher"`` (entries :math:`\pm 1`, the lower variance) or ``"gaussian"``.
      solver: ``"heun"`` (second order) or ``"euler"`` (first order).
      cond: Optional conditioning passed to ``denoise_fn``, every leaf with leading dimension B.

    Returns:
      (B,) log-likelihoods in nats per sample, in the carry dtype. Bits per dimension:
      :func:`bits_per_dim`.

    Raises:
      TypeError: ``denoise_fn`` not callable with three arguments, a non-string ``trace``,
        ``probe`` or ``solver``, ``key`` that is not a PRNG key, or a state that is not one.
      ValueError: unknown ``trace``, ``probe`` or ``solver``; ``probes`` < 1; no ``key`` for
        ``"hutchinson"``; ``x`` without a sample axis, not floating point, or with NaN/inf;
        ``cond`` of another batch; an unset state or one with an infinite or non-positive
        level; a denoiser output not shaped like ``x``.
    """
    check_arity("denoise_fn", denoise_fn, "denoise_fn(x, sigma, cond)", 3)
    trace = _check_choice("trace", trace, TRACES)
    probe = _check_choice("probe", probe, PROBES)
    solver = _check_choice("solver", solver, LIKELIHOOD_SOLVERS)
    probes = check_count("probes", probes)
    n = check_state(state)
    shape = jnp.shape(x)
    if len(shape) < 2 or 0 in shape:
        raise ValueError(f"x must have shape (B, *sample_shape) with at least one sample axis and no empty "
                         f"axis, got {shape}; for one sample pass x[None].")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must hold floating-point data, got dtype {x.dtype}.")
    check_finite_array("x", x)
    check_cond(cond, shape[0])
    if trace == "hutchinson":
        if key is None:
            raise ValueError("key is required for trace='hutchinson' (it draws the probe vectors); pass "
                             "jax.random.key(seed).")
        key = as_typed_keys("key", key, batch=False)
        if key.ndim != 0:
            raise ValueError(f"key must be one PRNG key, got a batch of shape {key.shape}.")

    levels = jnp.asarray(state.sigmas, level_dtype())[:n][::-1]  # sigma_{N-1}, ..., sigma_0: upward
    concrete = concrete_value("state.sigmas", levels)
    if concrete is not None and not (np.all(np.isfinite(concrete)) and np.all(concrete > 0)):
        raise ValueError("state.sigmas must be finite and > 0 above the trailing 0 for log_likelihood (the "
                         "'flow' schedule's infinite sigma_0 has no Gaussian prior); use another schedule.")

    carry = carry_dtype(x.dtype)
    x = x.astype(carry)
    batch, sample_shape = shape[0], shape[1:]
    dims = math.prod(sample_shape)

    def drift(y: jax.Array, sigma: jax.Array) -> jax.Array:
        out = denoise_fn(y, sigma, cond)
        if not (hasattr(out, "shape") and hasattr(out, "dtype")) or out.shape != shape:
            raise ValueError(f"denoise_fn must return one array shaped like its input {shape}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}.")
        return steps.slope(y, out.astype(carry), 1.0 / sigma)

    if trace == "exact":
        def divergence(y: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
            f, jvp = jax.linearize(lambda z: drift(z, sigma), y)

            def add_column(j: jax.Array, total: jax.Array) -> jax.Array:
                basis = jnp.broadcast_to(jax.nn.one_hot(j, dims, dtype=carry), (batch, dims))
                column = jvp(basis.reshape(shape)).reshape(batch, dims)
                return total + column[:, j]

            return f, jax.lax.fori_loop(0, dims, add_column, jnp.zeros((batch,), carry))
    else:
        if probe == "rademacher":
            vs = jax.random.rademacher(key, (probes, *shape), carry)
        else:
            vs = jax.random.normal(key, (probes, *shape), carry)

        def divergence(y: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
            f, jvp = jax.linearize(lambda z: drift(z, sigma), y)
            jv = jax.vmap(jvp)(vs)
            return f, jnp.mean(jnp.sum((vs * jv).reshape(probes, batch, dims), axis=-1), axis=0)

    def step(i: jax.Array, carried: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        y, ell = carried
        sigma, sigma_next = levels[i], levels[i + 1]
        h = sigma_next - sigma
        f, div = divergence(y, sigma)
        if solver == "euler":
            return steps.euler_update(y, f, h), ell + h.astype(carry) * div
        f_next, div_next = divergence(steps.euler_update(y, f, h), sigma_next)
        return (steps.euler_update(y, steps.heun_slope(f, f_next), h),
                ell + h.astype(carry) * steps.heun_slope(div, div_next))

    top, ell = jax.lax.fori_loop(0, n - 1, step, (x, jnp.zeros((batch,), carry)))
    sigma_max = levels[-1].astype(carry)
    squares = jnp.sum(top.reshape(batch, dims) ** 2, axis=-1)
    prior = -0.5 * squares / sigma_max**2 - 0.5 * dims * jnp.log(2 * jnp.pi * sigma_max**2)
    return prior + ell


def bits_per_dim(log_likelihood: ArrayLike, dims: int) -> jax.Array:
    r"""Nats per sample to bits per dimension: :math:`-\log p / (d \ln 2)`.

    For data rescaled from 8-bit pixels (:math:`[0, 255] \to [-1, 1]`), the usual
    discrete-data figure adds :math:`\log_2 127.5` per dimension for the change of scale
    (and dequantization noise, or the :math:`\sigma_{min}` smoothing, stands in for the
    discretization).

    Args:
      log_likelihood: Log-likelihoods in nats, from :func:`log_likelihood`.
      dims: d, the dimensions of one sample (``prod(sample_shape)``), >= 1.

    Returns:
      The bits per dimension, elementwise.

    >>> round(float(bits_per_dim(-2 * jnp.log(2.0), 2)), 6)
    1.0
    """
    dims = check_count("dims", dims)
    ll = jnp.asarray(log_likelihood)
    return -ll / (dims * jnp.log(jnp.asarray(2.0, jnp.result_type(ll.dtype, float))))
