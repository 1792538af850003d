"""The JAX alternatives that ``kj.sample`` is measured against.

- :func:`make_python_loop`: a host-side Python loop over jitted ``kj.add_noise_to_input`` /
  ``kj.step`` / ``kj.step_correct`` calls with noise levels pulled to the host as floats,
  the way diffusers' pipeline drove its scheduler (one dispatch per stage per step).
- :func:`sample_variant`: ``kj.sample``'s loop, optionally with each step's churn noise for
  the whole batch from one key (gives up per-seed reproducibility), or with the churn fused
  into the step (no ``lax.cond``).
- :func:`make_network_loop`: the floor at large batch: the same 2N - 1 network
  evaluations in one ``fori_loop`` with nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from karras_jax.steps import churn_std

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def make_python_loop(
    apply_fn: ApplyFn, state: kj.KarrasVeState, config: kj.KarrasVeConfig
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Returns ``loop(params, x0, key) -> x_N``: diffusers-pipeline style per-step dispatch.

    Every stage is its own jitted call (model calls too); levels are Python floats, so
    the jitted functions trace once and are re-dispatched every step. The churn noise of
    step i is ``normal(fold_in(key, i), x.shape)`` for the whole batch.
    """
    levels = [float(s) for s in np.asarray(state.sigmas)]
    n = state.num_inference_steps

    add_noise = jax.jit(
        lambda x, sigma, key, i: kj.add_noise_to_input(config, state, x, sigma, jax.random.fold_in(key, i))
    )
    # diffusers' convention: model_output = (D(x; sigma) - x) / sigma
    model = jax.jit(lambda params, x, sigma: (apply_fn(params, x, sigma, None) - x) / sigma)
    step = jax.jit(lambda m, s_hat, s_prev, x_hat: kj.step(m, s_hat, s_prev, x_hat))
    correct = jax.jit(
        lambda m, s_hat, s_prev, x_hat, x_prev, d: kj.step_correct(m, s_hat, s_prev, x_hat, x_prev, d)
    )

    def loop(params: Any, x0: jax.Array, key: jax.Array) -> jax.Array:
        x = x0
        for i in range(n):
            sigma, sigma_prev = levels[i], levels[i + 1]
            x_hat, sigma_hat = add_noise(x, sigma, key, i)
            out = step(model(params, x_hat, sigma_hat), sigma_hat, sigma_prev, x_hat)
            if sigma_prev != 0:
                m = model(params, out.prev_sample, sigma_prev)
                out = correct(m, sigma_hat, sigma_prev, x_hat, out.prev_sample, out.derivative)
            x = out.prev_sample
        return x

    return loop


def sample_variant(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    keys: jax.Array,
    x0: jax.Array,
    state: kj.KarrasVeState,
    config: kj.KarrasVeConfig,
    *,
    batch_noise: bool = False,
    fused_churn: bool = False,
) -> jax.Array:
    """``kj.sample``'s Heun loop (peeled Euler last step; float32 samples) with two knobs.

    Args:
      keys: (B,) keys, one per sample (churn noise ``normal(fold_in(k_churn_b, i))`` with
        ``k_churn_b = split(k_b)[1]``, as ``kj.sample`` draws it), or a single key when
        ``batch_noise``: then step i's noise for the whole batch is ``normal(fold_in(key, i))``.
      fused_churn: False (as ``kj.sample``): the churn is a ``lax.cond`` that skips the draw
        when gamma = 0, so its result x_hat is written to memory. True: the noise is always
        drawn and added (times 0 when gamma = 0), so that XLA can fuse the churn with the
        Euler/Heun update into one pass over the sample.
    """
    n = state.num_inference_steps
    levels = state.sigmas.astype(jnp.float32)
    s_noise = jnp.asarray(config.s_noise, jnp.float32)
    k_churn = keys if batch_noise else jax.vmap(jax.random.split)(keys)[:, 1]

    def noise(i: jax.Array, x: jax.Array) -> jax.Array:
        if batch_noise:
            return jax.random.normal(jax.random.fold_in(k_churn, i), x.shape, x.dtype)
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(k_churn)

    def iteration(i: jax.Array, x: jax.Array, heun: bool) -> jax.Array:
        sigma = levels[i]
        gamma = kj.churn_gamma(config, n, sigma)
        sigma_hat = sigma * (1.0 + gamma)
        std = churn_std(sigma, gamma) * s_noise

        def add_noise(x: jax.Array) -> jax.Array:
            return x + std * noise(i, x)

        x_hat = add_noise(x) if fused_churn else jax.lax.cond(gamma > 0, add_noise, lambda x: x, x)
        sigma_next = levels[i + 1]
        slope = (x_hat - denoise_fn(x_hat, sigma_hat)) * (1.0 / sigma_hat)
        h = sigma_next - sigma_hat
        x_next = x_hat + h * slope
        if heun:
            slope_2 = (x_next - denoise_fn(x_next, sigma_next)) * (1.0 / sigma_next)
            x_next = x_hat + h * (0.5 * slope + 0.5 * slope_2)
        return x_next

    x = jax.lax.fori_loop(0, n - 1, lambda i, x: iteration(i, x, True), x0)
    return iteration(jnp.asarray(n - 1, jnp.int32), x, False)


def network_loop(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    state: kj.KarrasVeState,
) -> jax.Array:
    """The 2N - 1 network evaluations of Heun's method back to back, nothing else.

    Evaluation j feeds on evaluation j - 1 (so none can be skipped or hoisted) at the
    level sigma_{floor(j/2)}.
    """
    levels = state.sigmas.astype(jnp.float32)
    evals = 2 * state.num_inference_steps - 1
    return jax.lax.fori_loop(0, evals, lambda j, x: denoise_fn(x, levels[j // 2]), x0)
