r"""diffusers' step API: one iteration of Algorithm 2 split as ``KarrasVeScheduler`` splits it.

For code migrating from diffusers; each function is a checked call into the formulas of
:mod:`karras_jax.steps`. One iteration from ``sigma_i`` to ``sigma_{i+1}`` (``sigma_prev``):

1. :func:`add_noise_to_input`: churn ``x_i -> x_hat`` at ``sigma_hat``;
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

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from karras_jax._validation import carry_dtype
from karras_jax.compat._checks import check_float_array, check_key, check_level, check_same_shape
from karras_jax.config import KarrasVeConfig, check_config
from karras_jax.state import KarrasVeState, check_state
from karras_jax.steps import add_churn, churn_levels, euler_update, heun_slope, slope

__all__ = [
    "KarrasVeOutput",
    "add_noise_to_input",
    "scale_model_input",
    "step",
    "step_correct",
]


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


def add_noise_to_input(
    config: KarrasVeConfig,
    state: KarrasVeState,
    sample: ArrayLike,
    sigma: ArrayLike,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    r"""The churn: raise the noise level from sigma to sigma_hat by adding fresh noise.

    .. math::

        \hat\sigma = \sigma (1 + \gamma), \quad
        \hat x = x + \sqrt{\hat\sigma^2 - \sigma^2}\, \epsilon, \quad
        \epsilon = S_{noise}\, z,\; z \sim N(0, I)

    with gamma from :func:`karras_jax.churn_gamma`. ``z = jax.random.normal(key, sample.shape,
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
    check_config(config)
    n = check_state(state)
    check_key("key", key)
    sample = check_float_array("sample", sample)
    sigma = check_level("sigma", sigma, positive=True)
    sigma_hat, noise_std = churn_levels(config, n, sigma)
    z = jax.random.normal(key, sample.shape, sample.dtype)
    sample_hat = add_churn(sample.astype(carry_dtype(sample.dtype)), noise_std, z)
    return sample_hat.astype(sample.dtype), sigma_hat


def step(
    model_output: ArrayLike,
    sigma_hat: ArrayLike,
    sigma_prev: ArrayLike,
    sample_hat: ArrayLike,
    return_dict: bool = True,
) -> KarrasVeOutput | tuple[jax.Array, jax.Array]:
    r"""Euler step from sigma_hat down to sigma_prev.

    .. math::

        D = \hat x + \hat\sigma\, m, \quad d = (\hat x - D)/\hat\sigma, \quad
        x_{prev} = \hat x + (\sigma_{prev} - \hat\sigma)\, d

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
    sample_hat = check_float_array("sample_hat", sample_hat)
    model_output = check_float_array("model_output", model_output)
    check_same_shape("model_output", model_output, "sample_hat", sample_hat)
    s_hat = check_level("sigma_hat", sigma_hat, positive=True)
    s_prev = check_level("sigma_prev", sigma_prev, positive=False)
    out_dtype = sample_hat.dtype
    work = carry_dtype(out_dtype)
    x = sample_hat.astype(work)
    denoised = x + s_hat.astype(work) * model_output.astype(work)
    d = slope(x, denoised, 1.0 / s_hat)
    out = KarrasVeOutput(
        prev_sample=euler_update(x, d, s_prev - s_hat).astype(out_dtype),
        derivative=d.astype(out_dtype),
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
    r"""Heun's second-order correction of an Euler step.

    .. math::

        D' = x_{prev} + \sigma_{prev}\, m', \quad d' = (x_{prev} - D')/\sigma_{prev}, \quad
        x_{prev} \leftarrow \hat x + (\sigma_{prev} - \hat\sigma)\, (d + d')/2

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
    sample_hat = check_float_array("sample_hat", sample_hat)
    sample_prev = check_float_array("sample_prev", sample_prev)
    model_output = check_float_array("model_output", model_output)
    derivative = check_float_array("derivative", derivative)
    for name, array in (("model_output", model_output), ("sample_prev", sample_prev),
                        ("derivative", derivative)):
        check_same_shape(name, array, "sample_hat", sample_hat)
    s_hat = check_level("sigma_hat", sigma_hat, positive=True)
    s_prev = check_level("sigma_prev", sigma_prev, positive=False)
    out_dtype = sample_hat.dtype
    work = carry_dtype(out_dtype)
    last = s_prev == 0
    # Keep 0 * inf (a network evaluated at sigma = 0) out of the arithmetic and its gradient.
    safe_prev = jnp.where(last, jnp.ones_like(s_prev), s_prev)
    m = jnp.where(last, jnp.zeros((), work), model_output.astype(work))
    x_prev = sample_prev.astype(work)
    d = derivative.astype(work)
    denoised = x_prev + safe_prev.astype(work) * m
    averaged = jnp.where(last, d, heun_slope(d, slope(x_prev, denoised, 1.0 / safe_prev)))
    corrected = euler_update(sample_hat.astype(work), averaged, s_prev - s_hat)
    out = KarrasVeOutput(
        prev_sample=jnp.where(last, x_prev, corrected).astype(out_dtype),
        derivative=averaged.astype(out_dtype),
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
