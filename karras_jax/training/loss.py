r"""Training losses: the four training rows of Table 1 (Karras et al. 2022), and rectified flow.

.. math::

    \mathcal{L}_i = \lambda(\sigma_i)\, \frac{1}{d} \big\lVert D(x_i + \sigma_i \epsilon_i;
    \sigma_i, c_i) - x_i \big\rVert^2, \qquad \epsilon_i \sim \mathcal{N}(0, I_d)

per sample i (d = the number of elements of one sample: the squared error is *averaged*
over a sample's elements, so the loss's scale does not depend on the image size; EDM's code
sums instead, which only rescales the gradient by d):

========= ============================================ ============================
kind      sigma drawn as                               lambda(sigma)
========= ============================================ ============================
``edm``   ln sigma ~ N(p_mean, p_std^2)                (sigma^2 + sd^2)/(sigma sd)^2
``vp``    sigma_vp(t), t ~ U(epsilon_t, 1)             1/sigma^2
``ve``    ln sigma ~ U(ln sigma_min, ln sigma_max)     1/sigma^2
``iddpm`` u_j, j ~ U{0, ..., M-1}                      1/sigma^2
``flow``  t = sigmoid(logit_mean + logit_std n)        ((1 + sigma)/sigma)^2 = 1/t^2
========= ============================================ ============================

**Rectified flow** (``flow``, SD3's logit-normal time sampling, Esser et al. 2024): the flow
time is :math:`t = \mathrm{sigmoid}(m + s\, n)`, :math:`n \sim \mathcal{N}(0, 1)`, with
:math:`m` = ``logit_mean`` (default 0) and :math:`s` = ``logit_std`` (default 1), and
:math:`\sigma = t/(1 - t)`. Since :math:`\ln\sigma = \mathrm{logit}(t) = m + s\,n`, the level
is drawn as :math:`\sigma = \exp(m + s\,n)` directly (EDM's draw; no division by 1 - t).
The weight :math:`\lambda(\sigma) = ((1 + \sigma)/\sigma)^2 = 1/t^2` makes the loss the
flow-matching loss: with :func:`karras_jax.models.flow_denoiser` around a velocity network
:math:`\hat v`, :math:`x = x_0 + \sigma\epsilon` is :math:`x_t = x/(1 + \sigma) = (1 - t)x_0 +
t\epsilon` and :math:`D = x_t - t\hat v`, so :math:`D - x_0 = t\,((\epsilon - x_0) - \hat v)`
and

.. math::

    \lambda(\sigma)\, \lVert D - x_0 \rVert^2 = \lVert \hat v - (\epsilon - x_0) \rVert^2,

the velocity MSE, per element as above. The logit is clipped to :math:`\pm 15`
(``FLOW_LOGIT_LIMIT``, :math:`t \in [3\cdot 10^{-7}, 1 - 3\cdot 10^{-7}]`), where float32
keeps :math:`\sigma`, :math:`x` and the weight finite; with the defaults (0, 1) a draw reaches
it with probability below :math:`10^{-50}`. Computed in float32 through :math:`D`, the loss
carries a relative round-off of about :math:`10^{-7}/t`: it is the velocity MSE to 1e-3 down
to :math:`t \approx 10^{-4}` (logit -9), so keep ``logit_mean - 3 logit_std`` above that.

**Randomness (a contract).** ``key`` is either one key for the batch, split as
``jax.random.split(key, B)`` into one key per sample, or a ``(B,)`` batch of keys, one per
sample. Sample i's key ``k_i`` gives ``k_sigma, k_noise, k_drop = jax.random.split(k_i, 3)``:
its noise level from ``k_sigma``, its noise :math:`\epsilon_i` = ``normal(k_noise, x.shape[1:])``
(float32), and its label dropout from ``uniform(k_drop) < cond_drop_prob``. A sample's draws
therefore depend only on its own key, whatever the devices the batch is split over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from karras_jax._validation import (
    as_typed_keys,
    check_arity,
    check_cond,
    check_finite_array,
    concrete_value,
    level_dtype,
)
from karras_jax.models._batch import check_kind_constants, check_levels, check_null_cond
from karras_jax.schedules import iddpm_levels, vp_sigma
from karras_jax.training._checks import check_real

__all__ = ["LOSSES", "edm_loss", "loss_weight", "training_sigmas"]

# |logit(t)| of the flow row's draw at most: sigma = e^15 and its weight stay finite in float32.
FLOW_LOGIT_LIMIT = 15.0

#: The training rows and their constants with the paper's defaults.
LOSSES: dict[str, dict[str, float]] = {
    "edm": {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5},
    "vp": {"beta_d": 19.9, "beta_min": 0.1, "epsilon_t": 1e-5},
    "ve": {"sigma_min": 0.02, "sigma_max": 100.0},
    "iddpm": {"C1": 0.001, "C2": 0.008, "M": 1000},
    "flow": {"logit_mean": 0.0, "logit_std": 1.0},
}

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def _constants(kind: Any, constants: dict[str, Any]) -> dict[str, Any]:
    values = check_kind_constants(kind, LOSSES, constants, signed=("p_mean", "logit_mean"))
    if kind == "ve" and concrete_value("sigma_min", values["sigma_min"]) is not None and \
            concrete_value("sigma_max", values["sigma_max"]) is not None and \
            not values["sigma_min"] < values["sigma_max"]:
        raise ValueError(f"sigma_min must be < sigma_max, got {values['sigma_min']!r} >= "
                         f"{values['sigma_max']!r}.")
    if kind == "vp" and concrete_value("epsilon_t", values["epsilon_t"]) is not None and \
            not 0 < values["epsilon_t"] < 1:
        raise ValueError(f"epsilon_t must be in (0, 1), got {values['epsilon_t']!r}.")
    return values


def training_sigmas(keys: jax.Array, kind: str = "edm", **constants: Any) -> jax.Array:
    r"""One training noise level per key, drawn as the ``kind`` row of Table 1.

    Args:
      keys: ``(B,)`` typed PRNG keys (each the sample's ``k_sigma``).
      kind: ``"edm"``, ``"vp"``, ``"ve"``, ``"iddpm"`` or ``"flow"`` (:math:`\ln\sigma =
        \mathrm{logit}(t) \sim \mathcal{N}(\text{logit\_mean}, \text{logit\_std}^2)`).
      **constants: Overrides of the row's constants (:data:`LOSSES`).

    Returns:
      ``(B,)`` noise levels in the level dtype (float32; float64 under x64).

    Raises:
      TypeError: ``kind`` is not a string, or ``keys`` are not PRNG keys.
      ValueError: an unknown ``kind``, bad constants, or ``keys`` not a ``(B,)`` batch.

    >>> import jax, karras_jax as kj
    >>> kj.training_sigmas(jax.random.split(jax.random.key(0), 3), "ve").shape
    (3,)
    """
    values = _constants(kind, constants)
    keys = as_typed_keys("keys", keys, batch=True)
    dtype = level_dtype()
    if kind in ("edm", "flow"):  # ln sigma normal; for flow, ln sigma = logit(t) = m + s n
        mean, std = (values["p_mean"], values["p_std"]) if kind == "edm" else \
            (values["logit_mean"], values["logit_std"])
        z = jax.vmap(lambda k: jax.random.normal(k, (), dtype))(keys)
        log_sigma = jnp.asarray(mean, dtype) + jnp.asarray(std, dtype) * z
        if kind == "flow":  # t in [sigmoid(-15), sigmoid(15)]: sigma, x and the weight stay finite
            log_sigma = jnp.clip(log_sigma, -FLOW_LOGIT_LIMIT, FLOW_LOGIT_LIMIT)
        return jnp.exp(log_sigma)
    if kind == "iddpm":
        u = jnp.asarray(iddpm_levels(values["C1"], values["C2"], values["M"])[:-1], dtype)
        return u[jax.vmap(lambda k: jax.random.randint(k, (), 0, values["M"]))(keys)]
    r = jax.vmap(lambda k: jax.random.uniform(k, (), dtype))(keys)
    if kind == "ve":
        lo = jnp.log(jnp.asarray(values["sigma_min"], dtype))
        hi = jnp.log(jnp.asarray(values["sigma_max"], dtype))
        return jnp.exp(lo + r * (hi - lo))
    t = values["epsilon_t"] + r * (1 - values["epsilon_t"])
    return vp_sigma(t, values["beta_d"], values["beta_min"])


def loss_weight(sigma: ArrayLike, kind: str = "edm", **constants: Any) -> jax.Array:
    r"""The loss weight :math:`\lambda(\sigma)` of the ``kind`` row of Table 1 (elementwise).

    For ``"flow"``, :math:`((1 + \sigma)/\sigma)^2 = 1/t^2` (module docstring).

    Raises:
      TypeError: ``kind`` is not a string.
      ValueError: an unknown ``kind``, bad constants, or a concrete ``sigma`` that is not
        finite and > 0 (its weight would be inf or NaN).

    >>> import karras_jax as kj
    >>> float(kj.loss_weight(0.5, "edm"))   # (0.25 + 0.25) / (0.25 * 0.25)
    8.0
    """
    values = _constants(kind, constants)
    check_levels(sigma)
    return _weight(sigma, kind, values)


def _weight(sigma: ArrayLike, kind: str, values: dict[str, Any]) -> jax.Array:
    dtype = level_dtype()
    sigma = jnp.asarray(sigma, dtype)
    if kind == "edm":
        sd = jnp.asarray(values["sigma_data"], dtype)
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
    if kind == "flow":
        return (1.0 + 1.0 / sigma) ** 2
    return 1.0 / sigma**2


def sample_keys(key: Any, batch: int) -> jax.Array:
    """``(B,)`` typed keys, one per sample: ``key`` itself if it is a batch, else ``split(key, B)``."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is None:
        raise TypeError(f"key must be a PRNG key or a (B,) batch of keys, got {type(key).__name__}.")
    if dtype == jnp.uint32:  # raw keys
        if shape[-1:] != (2,) or len(shape) not in (1, 2):
            raise ValueError(f"raw uint32 keys must have shape (2,) or (B, 2), got {shape}.")
        key = jax.random.wrap_key_data(key)
        shape = key.shape
    elif not jnp.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(f"key must be a PRNG key or a (B,) batch of keys, got dtype {dtype}.")
    if shape == ():
        return jax.random.split(key, batch)
    if shape != (batch,):
        raise ValueError(f"key must be one key or one per sample, shape ({batch},); got shape {shape}.")
    return key


def edm_loss(apply_fn: ApplyFn, params: Any, x: ArrayLike, key: Any, cond: Any = None, *,
             kind: str = "edm", cond_drop_prob: ArrayLike = 0.0, null_cond: Any = None,
             **constants: Any) -> jax.Array:
    r"""Per-sample training losses of a denoiser (Table 1's rows or rectified flow; EDM's by default).

    Args:
      apply_fn: ``apply_fn(params, x, sigma, cond) -> D`` called with one sigma per sample,
        shape ``(B,)`` (what :func:`karras_jax.precondition` and
        :func:`karras_jax.discrete_time_denoiser` take).
      params: The network's weights (what is differentiated).
      x: ``(B, ...)`` clean training samples, in the network's dtype.
      key: One PRNG key for the batch or ``(B,)`` keys, one per sample (module docstring).
      cond: The conditioning: an array with a leading batch axis (class labels), a pytree of
        them (every leaf ``(B, ...)``), or None.
      kind: The training row: ``"edm"`` (p_mean=-1.2, p_std=1.2, sigma_data=0.5), ``"vp"``
        (beta_d=19.9, beta_min=0.1, epsilon_t=1e-5), ``"ve"`` (sigma_min=0.02,
        sigma_max=100), ``"iddpm"`` (C1=0.001, C2=0.008, M=1000) or ``"flow"``
        (logit_mean=0.0, logit_std=1.0; the velocity MSE for
        :func:`karras_jax.models.flow_denoiser` around a velocity network, module docstring).
      cond_drop_prob: Label dropout for classifier-free guidance: each sample's ``cond`` (every
        leaf of it) is replaced by ``null_cond`` with this probability. A scalar; may be traced.
      null_cond: One sample's "no condition" value, of ``cond``'s pytree structure (the one
        given to :func:`karras_jax.classifier_free_guidance`); needed when ``cond_drop_prob > 0``.
      **constants: Overrides of the row's constants.

    Returns:
      ``(B,)`` float32 losses :math:`\lambda(\sigma_i)\, \mathrm{mean}((D_i - x_i)^2)`; their
      mean is the batch's loss.

    Raises:
      TypeError: ``kind`` is not a string, ``x`` is not floating point, ``apply_fn`` cannot be
        called with 4 arguments, ``cond_drop_prob`` is not a real number, bad keys.
      ValueError: bad constants, ``cond_drop_prob`` not a scalar in [0, 1], dropout without
        ``null_cond`` or without ``cond``, a ``cond`` leaf without ``B`` rows, a ``null_cond``
        that does not fit one sample of ``cond``, concrete ``x`` holding NaN/inf, or
        ``apply_fn`` returning another shape than ``x``'s.
    """
    values = _constants(kind, constants)
    check_arity("apply_fn", apply_fn, "apply_fn(params, x, sigma, cond)", 4)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...), got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point (the network gets x + sigma * noise in x's dtype), "
                        f"got dtype {x.dtype}.")
    check_finite_array("x", x)
    batch = x.shape[0]
    p = check_real("cond_drop_prob", cond_drop_prob, "in [0, 1]", lambda v: (v >= 0) & (v <= 1))
    dropping = p is None or float(p) > 0
    if dropping and (cond is None or null_cond is None):
        raise ValueError("label dropout (cond_drop_prob > 0) needs cond and null_cond "
                         "(the 'no class' value).")
    if dropping:
        check_null_cond(null_cond, cond, batch)
    else:
        check_cond(cond, batch)
    keys = jax.vmap(lambda k: jax.random.split(k, 3))(sample_keys(key, batch))
    dtype = level_dtype()
    sigma = training_sigmas(keys[:, 0], kind, **values)
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], dtype))(keys[:, 1])
    if dropping:
        drop = jax.vmap(lambda k: jax.random.uniform(k, (), dtype))(keys[:, 2]) < cond_drop_prob
        cond = jax.tree_util.tree_map(  # every leaf of a dropped sample becomes null_cond's
            lambda c, n: jnp.where(drop.reshape((batch,) + (1,) * (jnp.ndim(c) - 1)),
                                   jnp.asarray(n, jnp.result_type(c)), c), cond, null_cond)
    clean = x.astype(dtype)
    shaped = sigma.reshape((batch,) + (1,) * (x.ndim - 1))
    denoised = apply_fn(params, (clean + shaped * noise).astype(x.dtype), sigma, cond)
    if jnp.shape(denoised) != x.shape:
        raise ValueError(f"apply_fn must return D of x's shape {x.shape}, got shape {jnp.shape(denoised)}.")
    error = jnp.mean(jnp.reshape((denoised.astype(dtype) - clean) ** 2, (batch, -1)), axis=1)
    return _weight(sigma, kind, values) * error
