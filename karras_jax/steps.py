"""The pure step functions of Algorithm 2, split the way diffusers' KarrasVeScheduler splits them.

One iteration from level ``sigma_i`` to ``sigma_{i+1}`` (``sigma_prev`` in diffusers' naming):

1. :func:`add_noise_to_input`: churn ``x_i -> x_hat`` at ``sigma_hat = sigma_i (1 + gamma_i)``.
2. the caller evaluates the network at ``(x_hat, sigma_hat)``;
3. :func:`step`: Euler step to ``sigma_prev``;
4. if ``sigma_prev > 0``, the caller evaluates the network at the Euler result and
   :func:`step_correct` applies Heun's correction.

``model_output`` follows diffusers' convention, ``model_output = (D(x; sigma) - x) / sigma``
where ``D`` is the denoiser, so ``pred_original_sample = x + sigma * model_output == D``.

Noise-level arithmetic runs in float32 (float64 under x64) whatever the sample dtype; the
elementwise update is computed in the wider of the two and cast back, so every output has
the sample's dtype and a float16 sample survives diffusers' levels up to 1e4 (squares 1e8).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from karras_jax._validation import check_key, check_same_shape, concrete_value, level_dtype
from karras_jax.config import KarrasVeConfig
from karras_jax.state import KarrasVeState

__all__ = [
    "KarrasVeOutput",
    "add_noise_to_input",
    "churn_gamma",
    "scale_model_input",
    "step",
    "step_correct",
]

_SQRT2_MINUS_1 = math.sqrt(2.0) - 1.0


@struct.dataclass
class KarrasVeOutput:
    """What :func:`step` and :func:`step_correct` return; a pytree.

    Attributes:
      prev_sample: The sample at ``sigma_prev``: the next loop input (or the input to the
        second network evaluation, after :func:`step`).
      derivative: The slope dx/dsigma used for the update: the Euler slope from
        :func:`step`, the averaged Heun slope from :func:`step_correct`.
      pred_original_sample: The denoised estimate ``D`` at the level the network was
        evaluated at.
    """

    prev_sample: jax.Array
    derivative: jax.Array
    pred_original_sample: jax.Array

    def to_tuple(self) -> tuple[jax.Array, jax.Array]:
        """``(prev_sample, derivative)``, diffusers' ``return_dict=False`` form."""
        return self.prev_sample, self.derivative


def _level(name: str, value: ArrayLike, *, positive: bool) -> jax.Array:
    """A scalar noise level in the level dtype, checked when concrete."""
    concrete = concrete_value(name, value)
    if concrete is not None:
        if concrete.shape != ():
            raise ValueError(f"{name} must be a scalar noise level, got shape {concrete.shape}.")
        if not math.isfinite(float(concrete)):
            raise ValueError(f"{name} must be finite, got {float(concrete)!r}.")
        bad = float(concrete) <= 0 if positive else float(concrete) < 0
        if bad:
            allowed = "> 0" if positive else ">= 0"
            raise ValueError(f"{name} must be {allowed}, got {float(concrete)!r}.")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar noise level, got shape {jnp.shape(value)}.")
    return jnp.asarray(value, level_dtype())


def _sample(name: str, value: ArrayLike) -> jax.Array:
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    return array


def _work_dtype(sample_dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(sample_dtype, level_dtype())


def _check_state(state: KarrasVeState) -> int:
    if not isinstance(state, KarrasVeState):
        raise TypeError(f"state must be a KarrasVeState, got {type(state).__name__}.")
    if not state.is_set:
        raise ValueError("state has no noise levels yet: call set_timesteps first.")
    return state.num_inference_steps


def churn_gamma(config: KarrasVeConfig, num_inference_steps: int, sigma: ArrayLike) -> jax.Array:
    """The churn factor gamma_i of Algorithm 2.

    .. math::

        \\gamma_i = \\min(S_{churn}/N, \\sqrt{2}-1) \\text{ if } S_{min} \\le \\sigma_i \\le S_{max}
        \\text{ else } 0

    Args:
      config: Supplies s_churn, s_min, s_max (traced or concrete).
      num_inference_steps: N.
      sigma: The current level sigma_i (traced or concrete).

    Returns:
      gamma_i in the level dtype (an array of the broadcast shape of sigma and the config).
    """
    config.check_numeric()
    dtype = level_dtype()
    sigma = jnp.asarray(sigma, dtype)
    s_churn = jnp.asarray(config.s_churn, dtype)
    inside = (jnp.asarray(config.s_min, dtype) <= sigma) & (sigma <= jnp.asarray(config.s_max, dtype))
    gamma = jnp.minimum(s_churn / num_inference_steps, jnp.asarray(_SQRT2_MINUS_1, dtype))
    return jnp.where(inside, gamma, jnp.zeros_like(gamma))


def churn_std(sigma: jax.Array, gamma: jax.Array) -> jax.Array:
    """sqrt(sigma_hat^2 - sigma^2) for sigma_hat = sigma (1 + gamma), never NaN.

    Written as ``sigma * sqrt(gamma (2 + gamma))``: the difference of squares can round
    (or be contracted into a fused multiply-add) to a tiny negative number when gamma is
    0 or tiny, and squaring 1e4-sized legacy levels costs range. The gradient at
    gamma = 0 is kept finite (0) with the double-``where`` trick.
    """
    radicand = gamma * (2.0 + gamma)
    positive = radicand > 0
    root = jnp.sqrt(jnp.where(positive, radicand, jnp.ones_like(radicand)))
    return sigma * jnp.where(positive, root, jnp.zeros_like(root))


def add_noise_to_input(
    config: KarrasVeConfig,
    state: KarrasVeState,
    sample: ArrayLike,
    sigma: ArrayLike,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The churn: raise the noise level from sigma to sigma_hat by adding fresh noise.

    .. math::

        \\hat\\sigma = \\sigma (1 + \\gamma), \\quad
        \\hat x = x + \\sqrt{\\hat\\sigma^2 - \\sigma^2}\\, \\epsilon, \\quad
        \\epsilon = S_{noise}\\, z,\\; z \\sim N(0, I)

    with gamma from :func:`churn_gamma`. ``z = jax.random.normal(key, sample.shape,
    sample.dtype)``. Works with a traced ``sigma`` under ``jit`` (the window test is a
    ``jnp.where``, not a Python ``if``).

    Args:
      config: Hyperparameters.
      state: From :func:`set_timesteps` (supplies N).
      sample: x_i, any float dtype and shape.
      sigma: sigma_i, a scalar > 0.
      key: A typed key (``jax.random.key``) or raw uint32 key (``jax.random.PRNGKey``).
        Use a fresh key per step; it is not stored.

    Returns:
      ``(sample_hat, sigma_hat)``: sample_hat in the sample's dtype, sigma_hat a scalar
      in the level dtype.

    Raises:
      TypeError: bad key, non-float sample, config or state of the wrong type.
      ValueError: sigma not a finite scalar > 0, or a state without levels.
    """
    if not isinstance(config, KarrasVeConfig):
        raise TypeError(f"config must be a KarrasVeConfig, got {type(config).__name__}.")
    n = _check_state(state)
    check_key("key", key)
    sample = _sample("sample", sample)
    sigma = _level("sigma", sigma, positive=True)
    gamma = churn_gamma(config, n, sigma)
    sigma_hat = sigma * (1.0 + gamma)
    z = jax.random.normal(key, sample.shape, sample.dtype)
    work = _work_dtype(sample.dtype)
    eps = jnp.asarray(config.s_noise, level_dtype()) * z.astype(work)
    sample_hat = sample.astype(work) + churn_std(sigma, gamma).astype(work) * eps
    return sample_hat.astype(sample.dtype), sigma_hat


def step(
    model_output: ArrayLike,
    sigma_hat: ArrayLike,
    sigma_prev: ArrayLike,
    sample_hat: ArrayLike,
    return_dict: bool = True,
) -> KarrasVeOutput | tuple[jax.Array, jax.Array]:
    """Euler step from sigma_hat down to sigma_prev.

    .. math::

        D = \\hat x + \\hat\\sigma\\, m, \\quad d = (\\hat x - D)/\\hat\\sigma, \\quad
        x_{prev} = \\hat x + (\\sigma_{prev} - \\hat\\sigma)\\, d

    where ``m`` is ``model_output`` in diffusers' convention ``(D - x)/sigma``.

    Args:
      model_output: Network output at ``(sample_hat, sigma_hat)``, same shape as sample_hat.
      sigma_hat: The churned level, a scalar > 0.
      sigma_prev: The next level, a scalar >= 0.
      sample_hat: The churned sample.
      return_dict: False gives diffusers' tuple ``(prev_sample, derivative)``.

    Returns:
      :class:`KarrasVeOutput` (``derivative`` is the Euler slope d), or a tuple.

    Raises:
      ValueError: shapes differ, or a concrete level is out of range.
    """
    sample_hat = _sample("sample_hat", sample_hat)
    model_output = _sample("model_output", model_output)
    check_same_shape("model_output", model_output, "sample_hat", sample_hat)
    s_hat = _level("sigma_hat", sigma_hat, positive=True)
    s_prev = _level("sigma_prev", sigma_prev, positive=False)
    out_dtype = sample_hat.dtype
    work = _work_dtype(out_dtype)
    x = sample_hat.astype(work)
    denoised = x + s_hat.astype(work) * model_output.astype(work)
    derivative = (x - denoised) / s_hat.astype(work)
    prev = x + (s_prev - s_hat).astype(work) * derivative
    out = KarrasVeOutput(
        prev_sample=prev.astype(out_dtype),
        derivative=derivative.astype(out_dtype),
        pred_original_sample=denoised.astype(out_dtype),
    )
    return out if return_dict else out.to_tuple()


def step_correct(
    model_output: ArrayLike,
    sigma_hat: ArrayLike,
    sigma_prev: ArrayLike,
    sample_hat: ArrayLike,
    sample_prev: ArrayLike,
    derivative: ArrayLike,
    return_dict: bool = True,
) -> KarrasVeOutput | tuple[jax.Array, jax.Array]:
    """Heun's second-order correction of an Euler step.

    .. math::

        D' = x_{prev} + \\sigma_{prev}\\, m', \\quad d' = (x_{prev} - D')/\\sigma_{prev}, \\quad
        x_{prev} \\leftarrow \\hat x + (\\sigma_{prev} - \\hat\\sigma)\\, (d + d')/2

    At ``sigma_prev == 0`` (the last step) there is nothing to correct and no division:
    the Euler result ``sample_prev`` comes back unchanged, with the Euler slope, finite.
    This is a ``jnp.where``, so a traced ``sigma_prev`` works.

    Differences from diffusers: diffusers divides by ``sigma_prev`` unguarded (NaN at 0)
    and returns the stale first-stage ``derivative``; here ``derivative`` is the averaged
    slope ``(d + d')/2`` actually used for the update.

    Args:
      model_output: Network output at ``(sample_prev, sigma_prev)``.
      sigma_hat: The churned level of this step, > 0.
      sigma_prev: The next level, >= 0.
      sample_hat: The churned sample the step started from.
      sample_prev: The Euler result from :func:`step`.
      derivative: The Euler slope from :func:`step`.
      return_dict: False gives the tuple ``(prev_sample, derivative)``.

    Returns:
      :class:`KarrasVeOutput` with the corrected sample and the averaged slope.

    Raises:
      ValueError: shapes differ, or a concrete level is out of range.
    """
    sample_hat = _sample("sample_hat", sample_hat)
    sample_prev = _sample("sample_prev", sample_prev)
    model_output = _sample("model_output", model_output)
    derivative = _sample("derivative", derivative)
    for name, array in (("model_output", model_output), ("sample_prev", sample_prev),
                        ("derivative", derivative)):
        check_same_shape(name, array, "sample_hat", sample_hat)
    s_hat = _level("sigma_hat", sigma_hat, positive=True)
    s_prev = _level("sigma_prev", sigma_prev, positive=False)
    out_dtype = sample_hat.dtype
    work = _work_dtype(out_dtype)
    last = s_prev == 0
    # Keep 0 * inf (a network evaluated at sigma = 0) out of the arithmetic and its gradient.
    safe_prev = jnp.where(last, jnp.ones_like(s_prev), s_prev).astype(work)
    m = jnp.where(last, jnp.zeros((), work), model_output.astype(work))
    x_prev = sample_prev.astype(work)
    d = derivative.astype(work)
    denoised = x_prev + safe_prev * m
    d_corr = (x_prev - denoised) / safe_prev
    slope = jnp.where(last, d, 0.5 * d + 0.5 * d_corr)
    corrected = sample_hat.astype(work) + (s_prev - s_hat).astype(work) * slope
    prev = jnp.where(last, x_prev, corrected)
    out = KarrasVeOutput(
        prev_sample=prev.astype(out_dtype),
        derivative=slope.astype(out_dtype),
        pred_original_sample=jnp.where(last, x_prev, denoised).astype(out_dtype),
    )
    return out if return_dict else out.to_tuple()


def scale_model_input(
    state: KarrasVeState, sample: ArrayLike, timestep: ArrayLike | None = None
) -> jax.Array:
    """Identity: the VE model takes the sample unscaled.

    Kept so that loops written for other schedulers run unchanged.
    """
    del state, timestep
    return jnp.asarray(sample)
