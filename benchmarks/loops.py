"""What ``kj.sample`` is measured against, and one switch on ``kj.sample`` itself.

Hand-written baselines (what kj.sample is compared against, not library code):

- :func:`make_python_loop`: a host-side Python loop over jitted ``kj.add_noise_to_input`` /
  ``kj.step`` / ``kj.step_correct`` calls with noise levels pulled to the host as floats,
  the way diffusers' pipeline drove its scheduler (one dispatch per stage per step).
- :func:`batch_noise_loop`: Heun's loop drawing each step's churn noise for the whole batch
  from one key (gives up per-seed reproducibility); it calls the library's formulas
  (:mod:`karras_jax.steps`), only the loop and the noise are written here.
- :func:`network_loop`: the floor at large batch: the same 2N - 1 network evaluations in
  one ``fori_loop`` with nothing else.

``kj.sample`` itself in its other form (the churn draw made at every step) is not here but
in :mod:`benchmarks.switches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from karras_jax import _compiled as kj_compiled
from karras_jax.solvers.base import levels_of
from karras_jax.steps import add_churn, churn_levels, euler_update, heun_slope, slope

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def make_python_loop(
    apply_fn: ApplyFn, state: kj.KarrasVeState, config: kj.KarrasVeConfig
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Hand-written baseline, what kj.sample is compared against, not library code.

    Returns ``loop(params, x0, key) -> x_N``: diffusers-pipeline style per-step dispatch.
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


def batch_noise_loop(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    x0: jax.Array,
    state: kj.KarrasVeState,
    config: kj.KarrasVeConfig,
) -> jax.Array:
    """Hand-written baseline, what kj.sample is compared against, not library code.

    Heun's loop (Euler last step) with step i's churn noise for the whole batch drawn from
    ``normal(fold_in(key, i), x.shape)``: one draw per step instead of one per sample. The
    formulas are the library's (:func:`~karras_jax.steps.churn_levels`,
    :func:`~karras_jax.steps.add_churn`, :func:`~karras_jax.steps.slope`,
    :func:`~karras_jax.steps.euler_update`, :func:`~karras_jax.steps.heun_slope`), the
    per-step scalars are tabulated before the loop and idle draws are skipped above the
    same size threshold as in ``kj.sample``, so that only the noise differs.
    """
    n = state.num_inference_steps
    sigmas = state.sigmas.astype(jnp.float32)
    sigma_hat, noise_std = churn_levels(config, n, sigmas[:-1])
    lv = levels_of(sigmas[:-1], sigma_hat, sigmas[1:])
    backend = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    skip_idle = x0.size >= kj_compiled.SKIP_IDLE_DRAW_FROM[backend]

    def churn(i: jax.Array, x: jax.Array) -> jax.Array:
        def draw(x: jax.Array) -> jax.Array:
            return add_churn(x, noise_std[i], jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype))

        return jax.lax.cond(noise_std[i] > 0, draw, lambda x: x, x) if skip_idle else draw(x)

    def iteration(i: jax.Array, x: jax.Array, heun: bool) -> jax.Array:
        x_hat = churn(i, x)
        d = slope(x_hat, denoise_fn(x_hat, lv.sigma_hat[i]), lv.inv_sigma_hat[i])
        x_next = euler_update(x_hat, d, lv.h[i])
        if heun:
            d_next = slope(x_next, denoise_fn(x_next, lv.sigma_next[i]), lv.inv_sigma_next[i])
            x_next = euler_update(x_hat, heun_slope(d, d_next), lv.h[i])
        return x_next

    x = jax.lax.fori_loop(0, n - 1, lambda i, x: iteration(i, x, True), x0.astype(jnp.float32))
    return iteration(jnp.asarray(n - 1, jnp.int32), x, False)


def network_loop(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    state: kj.KarrasVeState,
) -> jax.Array:
    """Hand-written baseline (the floor), what kj.sample is compared against, not library code.

    The 2N - 1 network evaluations of Heun's method back to back, nothing else.
    Evaluation j feeds on evaluation j - 1 (so none can be skipped or hoisted) at the
    level sigma_{floor(j/2)}.
    """
    levels = state.sigmas.astype(jnp.float32)
    evals = 2 * state.num_inference_steps - 1
    return jax.lax.fori_loop(0, evals, lambda j, x: denoise_fn(x, levels[j // 2]), x0)


def deterministic_loop(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    sigmas: jax.Array,
    heun: bool = True,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Hand-written baseline, what kj.sample and diffrax are compared against, not library code.

    The probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` stepped over the
    levels ``sigmas`` (N levels, then 0) with Heun's method (Euler on the last step, to 0)
    or Euler's, in one ``fori_loop``, written as directly as it can be: the bound that a
    deterministic sampler can reach with this denoiser, for measurement 12. With
    ``dtype=jnp.float64`` (under ``jax.enable_x64``) it is that measurement's reference.
    """
    sigmas = sigmas.astype(dtype)
    n = sigmas.shape[0] - 1

    def euler(i: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = (x - denoise_fn(x, sigmas[i])) / sigmas[i]
        return x + (sigmas[i + 1] - sigmas[i]) * d, d

    def step(i: jax.Array, x: jax.Array) -> jax.Array:
        x_next, d = euler(i, x)
        if heun:
            d_next = (x_next - denoise_fn(x_next, sigmas[i + 1])) / sigmas[i + 1]
            x_next = x + (sigmas[i + 1] - sigmas[i]) * (0.5 * d + 0.5 * d_next)
        return x_next

    x = jax.lax.fori_loop(0, n - 1, step, x0.astype(dtype))
    return euler(jnp.asarray(n - 1, jnp.int32), x)[0]
