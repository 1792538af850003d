r"""Preconditioning (Table 1 of Karras et al. 2022): a trained network F as a denoiser D.

.. math::

    D(x; \sigma) = c_{skip}(\sigma)\, x + c_{out}(\sigma)\, F(c_{in}(\sigma)\, x,\; c_{noise}(\sigma))

with the four columns of Table 1 (``sd`` = sigma_data):

========= ==================== ============================ ==================== ======================
kind      c_skip               c_out                        c_in                 c_noise
========= ==================== ============================ ==================== ======================
``vp``    1                    -sigma                       1/sqrt(sigma^2+1)    (M-1) t(sigma)
``ve``    1                    sigma                        1                    ln(sigma/2)
``iddpm`` 1                    -sigma                       1/sqrt(sigma^2+1)    M-1-argmin_j|u_j-sigma|
``edm``   sd^2/(sigma^2+sd^2)  sigma sd/sqrt(sigma^2+sd^2)  1/sqrt(sigma^2+sd^2) ln(sigma)/4
========= ==================== ============================ ==================== ======================

VP's :math:`t(\sigma) = (\sqrt{\beta_{min}^2 + 2\beta_d \ln(\sigma^2+1)} - \beta_{min})/\beta_d`
and iDDPM's :math:`u_j` (:func:`iddpm_levels`) are the training schedules' own. All
coefficients are computed in the level dtype (float32, float64 under x64) whatever the
network's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from karras_jax._validation import check_arity, concrete_value, level_dtype
from karras_jax.models._batch import (
    as_sigma_shape,
    check_kind_constants,
    check_levels,
    check_sigma_shape,
    per_sample,
)
from karras_jax.schedules import iddpm_levels

__all__ = ["PRECONDITIONINGS", "precondition", "precondition_coefficients"]

#: The kinds and their constants with the paper's defaults.
PRECONDITIONINGS: dict[str, dict[str, float]] = {
    "edm": {"sigma_data": 0.5},
    "vp": {"beta_d": 19.9, "beta_min": 0.1, "M": 1000},
    "ve": {},
    "iddpm": {"C1": 0.001, "C2": 0.008, "M": 1000},
}

NetFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def _constants(kind: Any, constants: dict[str, Any]) -> dict[str, Any]:
    values = check_kind_constants(kind, PRECONDITIONINGS, constants)
    if kind == "iddpm":  # the constants fix a NumPy table of training levels
        c1, c2 = concrete_value("C1", values["C1"]), concrete_value("C2", values["C2"])
        if c1 is None or c2 is None or c1.shape or c2.shape:
            raise TypeError("iddpm's C1 and C2 must be concrete scalars (they fix the table of training "
                            f"levels), got C1={values['C1']!r}, C2={values['C2']!r}.")
        if c1 > 1:
            raise ValueError(f"C1 must be in (0, 1] (larger values give NaN levels), got {values['C1']!r}.")
    return values


def precondition_coefficients(
    sigma: ArrayLike, kind: str = "edm", **constants: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""``(c_skip, c_out, c_in, c_noise)`` of Table 1 at noise level(s) ``sigma``.

    Args:
      sigma: Noise level(s) > 0, any shape (elementwise).
      kind: ``"edm"`` (sigma_data=0.5), ``"vp"`` (beta_d=19.9, beta_min=0.1, M=1000),
        ``"ve"`` or ``"iddpm"`` (C1=0.001, C2=0.008, M=1000).
      **constants: Overrides of the kind's constants.

    Returns:
      Four arrays of ``sigma``'s shape in the level dtype.

    Raises:
      ValueError: a concrete ``sigma`` that is not finite and > 0, an unknown kind, a constant
        that is not finite and > 0, or iDDPM's C1 > 1.
      TypeError: a kind that is not a string, a constant the kind does not take, a non-int M,
        or traced iDDPM constants.

    >>> [round(float(c), 4) for c in precondition_coefficients(1.0, "edm")]
    [0.2, 0.4472, 0.8944, 0.0]
    """
    values = _constants(kind, constants)
    check_levels(sigma)
    dtype = level_dtype()
    sigma = jnp.asarray(sigma, dtype)
    one = jnp.ones_like(sigma)
    if kind == "edm":
        sd2 = jnp.asarray(values["sigma_data"], dtype) ** 2
        norm = jnp.sqrt(sigma**2 + sd2)
        return sd2 / (sigma**2 + sd2), sigma * jnp.sqrt(sd2) / norm, 1.0 / norm, jnp.log(sigma) / 4
    if kind == "ve":
        return one, sigma, one, jnp.log(0.5 * sigma)
    c_in = 1.0 / jnp.sqrt(sigma**2 + 1)
    if kind == "vp":
        beta_d = jnp.asarray(values["beta_d"], dtype)
        beta_min = jnp.asarray(values["beta_min"], dtype)
        t = (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d
        return one, -sigma, c_in, (values["M"] - 1) * t
    u = jnp.asarray(iddpm_levels(values["C1"], values["C2"], values["M"]), dtype)
    index = jnp.argmin(jnp.abs(sigma[..., None] - u), axis=-1)
    return one, -sigma, c_in, (values["M"] - 1 - index).astype(dtype)


def precondition(net_fn: NetFn, kind: str = "edm", *, sigma_shape: str = "scalar",
                 **constants: Any) -> Callable[[Any, jax.Array, jax.Array, Any], jax.Array]:
    r"""Wraps a network F as ``apply_fn(params, x, sigma, cond) = D(x; sigma)`` for the samplers.

    .. math::

        D(x; \sigma) = c_{skip} x + c_{out} F(\text{params}, c_{in} x, c_{noise}, \text{cond})

    Args:
      net_fn: ``net_fn(params, x_in, c_noise, cond) -> F`` shaped like ``x_in``.
      kind: A column of Table 1 (see :func:`precondition_coefficients`).
      sigma_shape: ``"scalar"`` passes ``c_noise`` as the scalar the sampler gives;
        ``"batch"`` broadcasts it to ``(B,)`` for networks that embed one level per sample.
        ``apply_fn`` also takes one sigma per sample (``(B,)`` or ``(B, 1, ..., 1)``, as a
        training loss passes them); ``c_noise`` then reaches the network as ``(B,)``.
      **constants: Overrides of the kind's constants.

    Returns:
      ``apply_fn(params, x, sigma, cond)``, ready for :func:`karras_jax.make_sampler`. The
      arithmetic runs in float32 (or the wider of x's dtype and it); the result has x's dtype.

    Raises:
      TypeError: ``net_fn`` cannot be called with four arguments, or as
        :func:`precondition_coefficients`. ``apply_fn`` raises as it does for a concrete sigma.
      ValueError: as :func:`precondition_coefficients`, or a ``sigma_shape`` other than
        ``"scalar"`` and ``"batch"``.

    >>> import jax.numpy as jnp, karras_jax as kj
    >>> zero_net = lambda params, x_in, c_noise, cond: jnp.zeros_like(x_in)
    >>> denoise = kj.precondition(zero_net, "edm")
    >>> float(denoise(None, jnp.ones((1, 2)), jnp.float32(1.0), None)[0, 0])  # c_skip * x
    0.2
    """
    check_arity("net_fn", net_fn, "net_fn(params, x_in, c_noise, cond)", 4)
    _constants(kind, constants)
    check_sigma_shape(sigma_shape)

    def apply_fn(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        sigma, level = per_sample(jnp.asarray(sigma, level_dtype()), x)
        c_skip, c_out, c_in, _ = precondition_coefficients(sigma, kind, **constants)
        c_noise = precondition_coefficients(level, kind, **constants)[3]
        work = jnp.promote_types(x.dtype, level_dtype())
        c_noise = as_sigma_shape(c_noise, x, sigma_shape)
        f = net_fn(params, (c_in.astype(work) * x.astype(work)).astype(x.dtype), c_noise, cond)
        return (c_skip.astype(work) * x.astype(work) + c_out.astype(work) * f.astype(work)).astype(x.dtype)

    return apply_fn
