r"""Inversion of the deterministic sampler: data to the latent that ``kj.sample`` maps back to it.

The deterministic sampler (``s_churn = 0``) runs the probability-flow ODE down the levels
:math:`\sigma_0 > \dots > \sigma_{N-1} > \sigma_N = 0`: solver steps from :math:`\sigma_i` to
:math:`\sigma_{i+1}` for :math:`i = 0 .. N-2`, then one Euler step to 0,
:math:`x_N = D(x_{N-1}; \sigma_{N-1})`. :func:`invert` undoes these in reverse order:

1. The last step exactly: it solves :math:`D(y; \sigma_{N-1}) = x` by the fixed-point
   iteration :math:`y \leftarrow y + (x - D(y; \sigma_{N-1}))`, from :math:`y = x`.
2. Each solver step by the same solver run up the levels, from :math:`\sigma_{i+1}` to
   :math:`\sigma_i` for :math:`i = N-2 .. 0`. A Heun or Euler step takes an increasing
   :math:`\sigma` as it takes a decreasing one; it is not the exact inverse of the step down
   (that would need an implicit solve per step), but both are steps of the same ODE, so the
   round trip is off by the solver's local error: :math:`O(N^{-2})` for Heun, :math:`O(N^{-1})`
   for Euler, in all.

Everything is one XLA program (two ``lax.fori_loop``), jit- and vmap-friendly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from karras_jax._compiled import check_levels_fit, check_start, concrete_churn
from karras_jax._validation import (
    carry_dtype,
    check_arity,
    check_cond,
    check_count,
    check_dtype,
    check_finite_array,
    level_dtype,
)
from karras_jax.solvers import Solver, get_solver
from karras_jax.solvers.base import euler_step, levels_of
from karras_jax.solvers.heun import heun
from karras_jax.state import KarrasVeState, check_state, resolve_config

__all__ = ["INVERTIBLE_SOLVERS", "invert"]

INVERTIBLE_SOLVERS = ("heun", "euler")
"""The solvers :func:`invert` runs up the levels: those whose step is a one-step ODE formula."""

_STEPS = {"heun": heun().step, "euler": euler_step}


def invert(denoise_fn: Callable[[jax.Array, jax.Array, Any], jax.Array], x: ArrayLike,
           state: KarrasVeState, config: Any = None, solver: str | Solver = "heun", *,
           cond: Any = None, dtype: DTypeLike = jnp.float32, iterations: int = 3) -> jax.Array:
    r"""The latent at :math:`\sigma_0` that the deterministic sampler maps to ``x``.

    ``kj.sample(denoise_fn, keys, state, config.replace(s_churn=0.0), x.shape[1:], cond,
    solver, x_init=invert(denoise_fn, x, state, ..., solver=solver))`` returns ``x`` up to
    the solver's discretisation error (Heun, the EDM mixture, N = 64: about 1e-4 relative;
    docs/editing.md). With :math:`\sigma_0 > \dots > \sigma_{N-1} > \sigma_N = 0` the levels of
    ``state``:

    * Last level. The sampler's last step is Euler to 0, :math:`x_N = D(x_{N-1};
      \sigma_{N-1})`, so the latent there is a :math:`y` with :math:`D(y; \sigma_{N-1}) = x`,
      found by ``iterations`` rounds of :math:`y \leftarrow y + (x - D(y; \sigma_{N-1}))`
      from :math:`y = x`. By Tweedie, :math:`D(y) = y + \sigma^2 \nabla \log p_\sigma(y)`, so
      the start is off by :math:`\sigma_{N-1}^2 |\nabla \log p_\sigma|` (about
      :math:`\sigma^2 / s` for data of local scale :math:`s`) and each round multiplies the
      error by :math:`\sigma^2 |\nabla^2 \log p_\sigma|`, about :math:`\sigma^2 / s^2`:
      :math:`10^{-3}` at the EDM :math:`\sigma_{\min} = 0.002` and :math:`s = 0.1`, so three
      rounds solve the equation to float32 rounding. (``iterations=0`` takes :math:`y = x`.)
    * Then ``solver``'s step from :math:`\sigma_{i+1}` up to :math:`\sigma_i`, for
      :math:`i = N-2 .. 0`. For Heun, with :math:`h = \sigma_i - \sigma_{i+1} > 0`:
      :math:`d = (y - D(y; \sigma_{i+1}))/\sigma_{i+1}`, :math:`y' = y + h d`,
      :math:`d' = (y' - D(y'; \sigma_i))/\sigma_i`, :math:`y \leftarrow y + h (d + d')/2`.
    * The flow schedule (:math:`\sigma_0 = \infty`): the sampler holds the latent as
      :math:`z = x_0/\sigma_0` and its first step is :math:`x_1 = \sigma_1 z + D(z; \infty)`;
      that is inverted by ``iterations`` rounds of :math:`z \leftarrow (x_1 - D(z;
      \infty))/\sigma_1` from :math:`z = x_1/\sigma_1` (exact after one round when
      :math:`D(\cdot; \infty)` is constant, as for the analytic data), and the result is
      :math:`z`, what ``x_init`` takes there.

    The inversion is of the deterministic sampler: run ``kj.sample`` with ``s_churn = 0``.

    Args:
      denoise_fn: ``denoise_fn(x, sigma, cond) -> D(x; sigma)``, as for :func:`karras_jax.sample`.
      x: (B, *sample_shape) data, real and finite.
      state: From :func:`karras_jax.set_timesteps`: the levels the sampler will run.
      config: None for ``state.config``. Only its churn is read: a concrete ``s_churn > 0``
        that would churn some step is refused (a traced one is let through, and ignored).
      solver: ``"heun"`` or ``"euler"`` (:data:`INVERTIBLE_SOLVERS`), or the Solver of one.
      cond: Optional pytree of conditioning, every leaf with leading dimension B.
      dtype: The network's dtype; the arithmetic runs in float32 (float64 under x64).
      iterations: Fixed-point rounds at the last level (and the flow's first), an int >= 0.

    Returns:
      (B, *sample_shape) latent in float32 (float64 under x64): the sample at
      :math:`\sigma_0`, or :math:`x_0/\sigma_0` at an infinite :math:`\sigma_0`.

    Raises:
      TypeError / ValueError: a bad state, config (one that churns), solver (not in
        :data:`INVERTIBLE_SOLVERS`, stochastic, or with restarts), x (shape, dtype, NaN or
        inf), cond, dtype, iterations, a flow state of one step, or a denoiser that does not fit.

    >>> import jax, jax.numpy as jnp, karras_jax as kj
    >>> from karras_jax.analytic import GaussianData
    >>> from karras_jax.inversion import invert
    >>> data = GaussianData(mean=jnp.zeros(2), std=jnp.asarray(1.0))
    >>> cfg = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
    >>> state = kj.set_timesteps(cfg, 64, "karras")
    >>> x = jnp.asarray([[0.5, -1.0]])
    >>> latent = invert(data.denoise, x, state)
    >>> back = kj.sample(data.denoise, jax.random.split(jax.random.key(0), 1), state, None, (2,),
    ...                  x_init=latent)
    >>> bool(jnp.max(jnp.abs(back - x)) < 1e-3)  # Heun's round trip: 2e-4 here
    True
    """
    check_arity("denoise_fn", denoise_fn, "denoise_fn(x, sigma, cond)", 3)
    n = check_state(state)
    config = resolve_config(state, config)
    solver, dtype = get_solver(solver), check_dtype(dtype)
    step = _check_solver(solver)
    iterations = check_count("iterations", iterations, minimum=0)
    _check_no_churn(config, state)
    check_levels_fit(state, config, dtype)
    check_start(denoise_fn, state, solver)
    flow = state.schedule_name == "flow"
    if flow and n < 2:
        raise ValueError("invert needs at least 2 steps on the flow schedule (its one step goes from "
                         "sigma = inf straight to 0); use set_timesteps(cfg, N, 'flow') with N >= 2.")
    carry = carry_dtype(dtype)
    x = _check_x(x, carry)
    check_cond(cond, x.shape[0])

    def denoise(y: jax.Array, sigma: jax.Array) -> jax.Array:
        out = denoise_fn(y.astype(dtype), sigma, cond)
        if not (hasattr(out, "shape") and hasattr(out, "dtype")) or out.shape != x.shape:
            raise ValueError(f"denoise_fn must return one array shaped like its input {x.shape}, "
                             f"got {getattr(out, 'shape', type(out).__name__)}.")
        return out.astype(carry)

    sigmas = state.sigmas.astype(level_dtype())
    last = sigmas[n - 1]
    y = jax.lax.fori_loop(0, iterations, lambda _, y: y + (x - denoise(y, last)), x)
    first = int(flow)  # the flow's step 0 (from sigma = inf) is inverted apart, below
    up = levels_of(sigmas[1:n], sigmas[1:n], sigmas[:n - 1])  # row i: sigma_{i+1} up to sigma_i

    def body(j: jax.Array, y: jax.Array) -> jax.Array:
        levels = jax.tree_util.tree_map(lambda column: column[n - 2 - j], up)
        return step(denoise, y, levels, None, None)[0]

    if n - 1 > first:  # (a loop over no rows would still index the empty columns)
        y = jax.lax.fori_loop(0, n - 1 - first, body, y)
    if flow:
        sigma_1, inf = sigmas[1].astype(carry), sigmas[0]
        y = jax.lax.fori_loop(0, iterations, lambda _, z: (y - denoise(z, inf)) / sigma_1, y / sigma_1)
    return y


def _check_solver(solver: Solver) -> Callable[..., Any]:
    """The step function of an invertible ``solver``; ValueError naming the supported ones."""
    supported = ", ".join(repr(name) for name in INVERTIBLE_SOLVERS)
    if solver.restarts:
        raise ValueError(f"invert cannot undo Restart's noise jumps: use a solver without restarts "
                         f"({supported}).")
    step = _STEPS.get(solver.name)
    if solver.stochastic or step is None or solver.step is not step or solver.last_step is not euler_step:
        raise ValueError(f"invert supports solver in ({supported}), got {solver.name!r}: a stochastic "
                         "solver has no deterministic inverse, and a multistep one (dpmpp_2m) is not "
                         "verified to run up the levels.")
    return step


def _check_no_churn(config: Any, state: KarrasVeState) -> None:
    """Refuses a concrete config whose churn would be on at some step of ``state``."""
    s_churn = config.s_churn
    if isinstance(s_churn, jax.core.Tracer) or np.all(np.asarray(s_churn) == 0):
        return
    churn = concrete_churn(config, state)
    if churn is not None and bool(np.all(churn[0] == 1.0)):
        return  # every level lies outside [s_min, s_max]
    raise ValueError(f"invert inverts the deterministic sampler, but config.s_churn={np.asarray(s_churn)!s} "
                     "churns; pass config=cfg.replace(s_churn=0.0) here and to kj.sample.")


def _check_x(x: Any, carry: jnp.dtype) -> jax.Array:
    """``x`` as a carry-dtype array after its checks (shape (B, *sample_shape), real, finite)."""
    shape, kind = jnp.shape(x), getattr(x, "dtype", None)
    if len(shape) < 1 or 0 in shape:
        raise ValueError(f"x must have shape (B, *sample_shape) with no zero dimension, got {shape}.")
    if kind is not None and not (jnp.issubdtype(kind, jnp.floating) or jnp.issubdtype(kind, jnp.integer)):
        raise ValueError(f"x must hold real numbers, got dtype {kind}.")
    check_finite_array("x", x)
    return jnp.asarray(x).astype(carry)
