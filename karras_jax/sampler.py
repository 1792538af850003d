r"""The whole of Algorithm 2 as one XLA program: ``sample`` and ``make_sampler``.

One ``lax.fori_loop`` (a ``lax.scan`` of the same body to keep the trajectory) drives a
:class:`~karras_jax.solvers.Solver`; what depends only on the levels is tabulated before it, so
the body holds the network calls, the churn draw (none when the churn is known to be idle) and
one fused update. The last step, to sigma = 0, is peeled off. The carry is float32 (float64
under x64) whatever ``dtype`` the network gets; the noise stream is a contract (docs/noise.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike, DTypeLike

from karras_jax._compiled import (
    check_levels_fit,
    check_start,
    churn_fn,
    churn_is_idle,
    loop_config,
    prepare,
    wrap_program,
)
from karras_jax._debug import TRACED_MESSAGE, run_checked, start, watch
from karras_jax._noise import paint_keys, paint_noise, solver_keys, solver_noise, start_sample
from karras_jax._progress import step_bar
from karras_jax._validation import (
    as_typed_keys,
    carry_dtype,
    check_arity,
    check_cond,
    check_dtype,
    check_finite_array,
    check_sample_shape,
    concrete_value,
    level_dtype,
)
from karras_jax.config import KarrasVeConfig
from karras_jax.solvers import Solver, get_solver
from karras_jax.solvers.base import levels_of
from karras_jax.solvers.restart import check_restart_levels, jump_points, jump_table, restart_table
from karras_jax.state import KarrasVeState, check_state, resolve_config
from karras_jax.steps import churn_levels

__all__ = ["Trajectory", "make_sampler", "sample"]

@struct.dataclass
class Trajectory:
    """Per-step record of a sampling run (``sample(..., return_trajectory=True)``).

    Attributes:
      samples: (N+1, B, *sample_shape): x_0 (the start noise; x_0 / sigma_0 at an infinite
        sigma_0) then x_1 .. x_N (the result). With Restart or RePaint's jumps, N counts
        their steps too.
      denoised: (N, B, *sample_shape): D(x_hat_i; sigma_hat_i), the first estimate of each step.
      sigmas: (N+1,) the level after each step, from sigma_0 to 0 (with Restart or jumps, the
        levels visited again included).
    """

    samples: jax.Array
    denoised: jax.Array
    sigmas: jax.Array


def sample(denoise_fn: Callable[[jax.Array, jax.Array, Any], jax.Array], keys: jax.Array,
           state: KarrasVeState, config: KarrasVeConfig | None, sample_shape: tuple[int, ...],
           cond: Any = None, solver: str | Solver = "heun", *, x_init: ArrayLike | None = None,
           dtype: DTypeLike = jnp.float32, return_trajectory: bool = False,
           progress: bool | Callable[[Any], None] = False, check_finite: bool = False,
           start_step: int | None = None, strength: float | None = None, mask: ArrayLike | None = None,
           known: ArrayLike | None = None,
           jump: tuple[int, int] | None = None) -> jax.Array | tuple[jax.Array, Trajectory]:
    r"""Runs Algorithm 2 for a batch of seeds: one loop, jit- and vmap-friendly.

    For i = 0 .. N-1, with :math:`\gamma_i` from :func:`karras_jax.churn_gamma`, the churn
    :math:`\hat\sigma_i = \sigma_i (1+\gamma_i)`,
    :math:`\hat x_i = x_i + \sqrt{\hat\sigma_i^2 - \sigma_i^2}\, \epsilon_i`, then one step of
    ``solver`` from :math:`(\hat x_i, \hat\sigma_i)` to :math:`\sigma_{i+1}`. For ``"heun"``
    (Algorithm 2): :math:`d = (\hat x - D(\hat x; \hat\sigma))/\hat\sigma`,
    :math:`x_{i+1} = \hat x + (\sigma_{i+1} - \hat\sigma)\, d` and, while
    :math:`\sigma_{i+1} > 0`, :math:`x_{i+1} \leftarrow \hat x + (\sigma_{i+1} - \hat\sigma)
    (d + d')/2` with :math:`d' = (x_{i+1} - D(x_{i+1}; \sigma_{i+1}))/\sigma_{i+1}`.

    Args:
      denoise_fn: ``denoise_fn(x, sigma, cond) -> D(x; sigma)``, x (B, *sample_shape) in
        ``dtype``, sigma a float32 scalar (close over weights, or use :func:`make_sampler`).
      keys: (B,) typed keys or (B, 2) raw uint32 keys, one per sample.
      state: From :func:`karras_jax.set_timesteps`: the levels and the config they came from.
      config: None for ``state.config``; or a config whose s_churn, s_noise, s_min and s_max
        are used (traced welcome) and whose range is the state's (to sweep sigma_min or
        sigma_max, build the state inside the vmap).
      sample_shape: Shape of one sample, a tuple of positive ints.
      cond: Optional pytree of conditioning, every leaf with leading dimension B.
      solver: A name in ``kj.SOLVERS`` (``"heun"``: 2N - 1 evaluations) or a :class:`Solver`.
      x_init: Optional (B, *sample_shape) start sample at sigma_0 instead of the key's start
        noise (the churn noise still comes from ``keys``); at an infinite sigma_0 (the flow
        schedule) it is x_0 / sigma_0, the unit noise.
      dtype: The network's and the result's dtype (float32, bfloat16, float16, ...).
      return_trajectory: Also return a :class:`Trajectory` (memory grows with N only then).
      progress: True: a progress bar on stderr (a host callback); a callable gets the 0-based
        step index. Off by default: the program then has no host callbacks.
      check_finite: Debug mode, outside ``jit``/``vmap``: raise ``FloatingPointError`` at the
        first NaN or inf in a network input, output or update, naming the step and sigma_hat.
      start_step: Image-to-image (SDEdit): ``x_init`` is then a clean image, noised to
        :math:`\sigma_k` with the key's start normals (``x_k = x_init + sigma_k z``, z the
        draw that makes x_0) before steps k .. N-1 run; k in 1 .. N (N returns the image).
      strength: The same as ``start_step = N - int(strength * N)`` (diffusers' rule), in
        [0, 1]: 0 returns the image, 1 is plain sampling from the key's noise.
      mask: Inpainting: weights in [0, 1] broadcastable to (B, *sample_shape), 1 where
        ``known`` holds. At the start level and after every step, at level
        :math:`\sigma_j`, the sample becomes :math:`m (k + \sigma_j \epsilon_j) + (1 - m) x`
        with :math:`\epsilon_j` from the inpainting stream (docs/noise.md): score_sde's
        replacement method, RePaint without resampling. The result equals ``known`` where
        ``mask`` is 1. No extra network evaluations.
      known: The known values, broadcastable to (B, *sample_shape); needed with ``mask``.
      jump: Inpainting with RePaint's resampling, ``(jump_length, jump_n_sample)`` = (L, n):
        each time the run reaches a level :math:`\sigma_j`, :math:`j = N - 1 - mL`
        (:math:`m \ge 0`, :math:`j - L \ge 0`), it goes back up to :math:`\sigma_{j-L}`,
        :math:`x \leftarrow x + \sqrt{\sigma_{j-L}^2 - \sigma_j^2}\,\epsilon`, and runs the
        L steps down again (the known region replaced after each), n - 1 times; n = 1 is no
        resampling. Needs ``mask``/``known``; L in 1 .. N - 1. A run from ``start_step`` k
        (1 on the flow schedule, whose :math:`\sigma_0` is infinite) keeps the jumps with
        :math:`j - L \ge k`. Evaluations ``solver.evaluations(N + R)``,
        :math:`R = (n - 1) L \lfloor (N - 1 - k) / L \rfloor` (Heun: 2(N + R) - 1; see
        docs/editing.md). Not with :func:`karras_jax.restart`.

    Returns:
      (B, *sample_shape) samples in ``dtype``, or ``(samples, trajectory)``.

    Raises:
      TypeError / ValueError: bad keys, sample_shape, dtype, solver, cond, x_init (NaN or inf
        in a concrete one too), state, a config holding arrays of values or another range
        than the state's, levels the dtype cannot hold, a denoiser that does not fit, bad
        mask/known, or a jump out of range or without mask/known.
      FloatingPointError: with ``check_finite=True``, at the first non-finite value.
    """
    check_arity("denoise_fn", denoise_fn, "denoise_fn(x, sigma, cond)", 3)
    args = (denoise_fn, keys, state, config, sample_shape, cond, solver, x_init, dtype,
            return_trajectory, progress)
    from_image, jump = check_start_step(start_step, strength), check_jump(jump)
    paint = (mask, known)
    if not check_finite:
        return _sample(*args, from_image=from_image, paint=paint, jump=jump)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args[1:])):
        raise ValueError(TRACED_MESSAGE)
    return run_checked(lambda: _sample(*args, checks=True, from_image=from_image, paint=paint, jump=jump))()


def _sample(denoise_fn: Callable[..., jax.Array], keys: Any, state: KarrasVeState,
            config: KarrasVeConfig | None, sample_shape: tuple[int, ...], cond: Any,
            solver: str | Solver, x_init: ArrayLike | None, dtype: DTypeLike, return_trajectory: bool,
            progress: bool | Callable[[Any], None], checks: bool = False,
            from_image: tuple[str, Any] | None = None, paint: tuple[Any, Any] = (None, None),
            jump: tuple[int, int] | None = None) -> Any:
    """:func:`sample`: its checks, then the loop (``checks`` adds the debug mode's).

    ``from_image``: ``("step", k)`` or ``("strength", s)`` (image-to-image), from :func:`check_start_step`;
    ``jump``: ``(L, n)`` from :func:`check_jump`.
    """
    n = check_state(state)
    config = resolve_config(state, config)
    solver, dtype = get_solver(solver), check_dtype(dtype)
    keys, sample_shape = as_typed_keys("keys", keys, batch=True), check_sample_shape(sample_shape)
    check_levels_fit(state, config, dtype)
    check_restart_levels(solver, state.sigmas)
    full_shape, carry = (keys.shape[0], *sample_shape), carry_dtype(dtype)
    check_cond(cond, full_shape[0])
    offset = _first_step(from_image, n, solver, x_init)
    first = int(state.schedule_name == "flow" and not offset)  # sigma_0 = inf: step 0 is Euler's limit
    layout = _jump_layout(jump, n, max(offset, int(state.schedule_name == "flow")), solver, paint)
    if x_init is None or offset == 0 and from_image is not None:  # strength 1: plain sampling
        x0 = start_sample(keys, state.init_noise_sigma, sample_shape, dtype)
    elif jnp.shape(x_init) != full_shape:
        raise ValueError(f"x_init must have shape (B, *sample_shape) = {full_shape}, got "
                         f"{jnp.shape(x_init)}.")
    else:
        check_finite_array("x_init", x_init)
        x0 = jnp.asarray(x_init).astype(carry)
        if offset:  # the clean image noised to sigma_k with the key's start normals
            x0 = x0 + start_sample(keys, state.sigmas[offset], sample_shape, dtype)

    sigmas = state.sigmas.astype(level_dtype())
    sigma_hat, noise_std = churn_levels(config, n, sigmas[:-1])
    columns = (sigmas[:-1], sigma_hat, sigmas[1:], noise_std)
    sigma, sigma_hat, sigma_next, noise_std = restart_table(solver.restarts, *columns, config.s_noise)
    sigma, sigma_hat, sigma_next, noise_std = jump_table(*layout, sigma, sigma_hat, sigma_next, noise_std)
    sigma, sigma_hat, sigma_next = sigma[offset:], sigma_hat[offset:], sigma_next[offset:]
    levels = levels_of(sigma, sigma_hat, sigma_next)  # a run from step k: its history starts there
    levels, m = levels.replace(extra=solver.scalars(levels)), sigma.shape[0]
    # a jump row is a churn (of the forward noise) even where the config's churn is idle
    idle = churn_is_idle(config, state) and not solver.restarts and not layout[0]
    churn = None if idle else churn_fn(keys, sample_shape, dtype, noise_std)
    k_solver = solver_keys(keys, sample_shape) if solver.stochastic else None
    replace = _painter(keys, sample_shape, dtype, full_shape, *paint)
    if replace is not None and not first:  # at sigma_0 = inf the known values weigh nothing in x / sigma
        x0 = replace(jnp.asarray(offset, jnp.int32), sigma[0], x0)

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        out = denoise_fn(x.astype(dtype), sigma, cond)
        if not (hasattr(out, "shape") and hasattr(out, "dtype")) or out.shape != full_shape:
            raise ValueError(f"denoise_fn must return one array shaped like its input {full_shape}, "
                             f"got {getattr(out, 'shape', type(out).__name__)}.")
        return out.astype(carry)

    def stepper(advance: Callable[..., Any]) -> Callable[..., tuple[Any, ...]]:
        if checks:
            return watch(advance, denoise, dtype)
        return lambda x_hat, lv, s, failure, i, noise: (*advance(denoise, x_hat, lv, s, noise), failure)

    report = step_bar(m) if progress is True else progress or None

    def one(i: jax.Array, carried: tuple[Any, ...], advance: Callable[..., Any],
            churned: bool = True) -> tuple[Any, ...]:
        x, solver_state, failure = carried
        levels_i = jax.tree_util.tree_map(lambda column: column[i], levels)
        step = i + offset  # the step's index in the noise streams and in messages
        x_hat = x if churn is None or not churned else churn(step, x)
        noise = None if k_solver is None else (
            lambda draw: solver_noise(k_solver, step, draw, sample_shape, dtype))
        x, denoised, solver_state, failure = advance(x_hat, levels_i, solver_state, failure, step, noise)
        if replace is not None:
            x = replace(step + 1, levels_i.sigma_next, x)
        if report is not None:
            jax.debug.callback(report, i, ordered=True)
        return (x, solver_state, failure), denoised

    inner, last = stepper(solver.step), stepper(solver.last_step)

    def body(carried: tuple[Any, ...], i: jax.Array) -> tuple[tuple[Any, ...], Any]:
        carried, denoised = one(i, carried, inner)
        return carried, (carried[0].astype(dtype), denoised.astype(dtype))

    if m == 0:  # start_step = N (strength 0): nothing to run, the image itself
        x = x0.astype(dtype)
        empty = jnp.zeros((0, *full_shape), dtype)
        return (x, Trajectory(x[None], empty, sigmas[n:])) if return_trajectory else x
    carried = (x0, solver.init(x0), start(x0, sigma_hat[0], sigma[0]) if checks else None)
    path = [(jnp.zeros((0, *full_shape), dtype),) * 2]
    if first:  # x_0 is held as x_0 / sigma_0 = z, and the limit of a first step from there is Euler's
        carried, denoised = one(jnp.asarray(0, jnp.int32), carried, stepper(_limit_step), churned=False)
        path.append((carried[0].astype(dtype)[None], denoised.astype(dtype)[None]))
    if return_trajectory:  # the same body, its per-step outputs stacked
        carried, rows = jax.lax.scan(body, carried, jnp.arange(first, m - 1, dtype=jnp.int32))
        path.append(rows)
    else:
        carried = jax.lax.fori_loop(first, m - 1, lambda i, c: one(i, c, inner)[0], carried)
    if m > first:
        carried, denoised = one(jnp.asarray(m - 1, jnp.int32), carried, last)
        path.append((carried[0].astype(dtype)[None], denoised.astype(dtype)[None]))
    x, _, failure = carried
    if checks:
        failure.check(dtype.name)
    x = x.astype(dtype)
    if not return_trajectory:
        return x
    samples, denoised = (jnp.concatenate(column) for column in zip(*path, strict=True))
    return x, Trajectory(jnp.concatenate([x0.astype(dtype)[None], samples]), denoised,
                         jnp.concatenate([sigma[:1], sigma_next]))


def check_start_step(start_step: Any, strength: Any) -> tuple[str, Any] | None:
    """Checks the image-to-image arguments alone (the step count comes later, with the state).

    Raises:
      ValueError: both given, start_step not an int >= 1 (0 would ignore the image: use
        strength=1 or leave it out), or strength not a real number in [0, 1].
    """
    if start_step is not None and strength is not None:
        raise ValueError("pass start_step or strength, not both.")
    if start_step is not None:
        if not isinstance(start_step, (int, np.integer)) or isinstance(start_step, bool) or start_step < 1:
            raise ValueError(f"start_step must be an int >= 1 (the first step run from the noised x_init; "
                             f"start_step=0 would ignore the image: leave it out, or strength=1), got "
                             f"{start_step!r}.")
        return "step", int(start_step)
    if strength is not None:
        if not (isinstance(strength, (int, float, np.number)) and not isinstance(strength, bool)
                and 0 <= strength <= 1):
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}.")
        return "strength", float(strength)
    return None


def check_jump(jump: Any) -> tuple[int, int] | None:
    """Checks RePaint's ``jump=(jump_length, jump_n_sample)`` alone (its range against N comes later).

    Raises:
      TypeError: not a pair.
      ValueError: jump_length not an int >= 1 or jump_n_sample not an int >= 1.
    """
    if jump is None:
        return None
    if not (isinstance(jump, (tuple, list)) and len(jump) == 2):
        raise TypeError(f"jump must be a pair (jump_length, jump_n_sample) of ints, got {jump!r}.")
    for name, value in zip(("jump_length", "jump_n_sample"), jump, strict=True):
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
            raise ValueError(f"jump: {name} must be an int >= 1, got {value!r}.")
    return int(jump[0]), int(jump[1])


def _jump_layout(jump: tuple[int, int] | None, n: int, lowest: int, solver: Solver,
                 paint: tuple[Any, Any]) -> tuple[list[int], int, int]:
    """``(points, L, n)`` for :func:`~karras_jax.solvers.restart.jump_table` (no points: no jump rows).

    ``lowest`` is the highest level a jump may return to: the run's start step, or 1 when
    sigma_0 is infinite (a flow schedule), since x is held there as x / sigma_0.

    Raises:
      ValueError: jump without mask/known, with kj.restart, or jump_length above N - 1.
    """
    if jump is None:
        return [], 1, 1
    length, count = jump
    if paint[0] is None or paint[1] is None:
        raise ValueError("jump (RePaint's resampling) is for inpainting: it needs mask and known.")
    if solver.restarts:
        raise ValueError("jump does not combine with kj.restart: both insert rows into the level table; "
                         "pass the base solver.")
    if length > n - 1:
        raise ValueError(f"jump: jump_length must be an int in [1, {n - 1}] (1 .. N - 1 for "
                         f"num_inference_steps={n}), got {length}.")
    return (jump_points(n, lowest, length) if count > 1 else []), length, count


def _painter(keys: jax.Array, sample_shape: tuple[int, ...], dtype: jnp.dtype, full_shape: tuple[int, ...],
             mask: Any, known: Any) -> Callable[[Any, jax.Array, jax.Array], jax.Array] | None:
    """``replace(j, sigma_j, x)``: the known region noised to level j put back into x (None: no mask)."""
    if mask is None and known is None:
        return None
    if mask is None or known is None:
        raise ValueError("inpainting needs both mask and known.")
    carry = carry_dtype(dtype)
    arrays = []
    for name, value in (("mask", mask), ("known", known)):
        check_finite_array(name, value)
        value = jnp.asarray(value)
        try:
            fits = jnp.broadcast_shapes(value.shape, full_shape) == full_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to (B, *sample_shape) = {full_shape}, got "
                             f"{value.shape}.")
        arrays.append(value.astype(carry))
    weights = concrete_value("mask", mask)
    if weights is not None and not np.all((weights >= 0) & (weights <= 1)):
        raise ValueError("mask must hold weights in [0, 1] (1 where known holds).")
    m, k = arrays
    k_paint = paint_keys(keys, sample_shape)

    def replace(j: Any, level: jax.Array, x: jax.Array) -> jax.Array:
        noised = k + level.astype(carry) * paint_noise(k_paint, j, sample_shape, dtype)
        return m * noised + (1 - m) * x

    return replace


def _first_step(from_image: tuple[str, Any] | None, n: int, solver: Solver, x_init: Any) -> int:
    """The step an image-to-image run starts at (0 for a plain run), checked against N."""
    if from_image is None:
        return 0
    kind, value = from_image
    if x_init is None:
        raise ValueError(f"{'start_step' if kind == 'step' else 'strength'} needs x_init, the clean image "
                         "to start from.")
    if solver.restarts:
        raise ValueError("image-to-image (start_step/strength) does not combine with kj.restart.")
    k = n - int(value * n) if kind == "strength" else value
    if k > n:
        raise ValueError(f"start_step must be at most num_inference_steps={n}, got {k}.")
    return k


def _limit_step(denoise: Callable[..., jax.Array], x_hat: jax.Array, levels: Any, solver_state: Any,
                noise: Any) -> tuple[jax.Array, jax.Array, Any]:
    r"""A step from :math:`\hat\sigma = \infty`, x held as :math:`z = x/\hat\sigma`: Euler's limit.

    :math:`x_1 = \sigma_1 z + D(z; \infty)`, the only solver step with a finite limit there
    (DDIM's first step, and a flow model's Euler step from t = 1).
    """
    denoised = denoise(x_hat, levels.sigma_hat)
    return levels.sigma_next.astype(x_hat.dtype) * x_hat + denoised, denoised, solver_state


def make_sampler(apply_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array], state: KarrasVeState,
                 config: KarrasVeConfig | None, sample_shape: tuple[int, ...], *,
                 solver: str | Solver = "heun", dtype: DTypeLike = jnp.float32,
                 return_trajectory: bool = False, progress: bool | Callable[[Any], None] = False,
                 check_finite: bool = False, start_step: int | None = None,
                 strength: float | None = None, jump: tuple[int, int] | None = None) -> Callable[..., Any]:
    """Returns a jitted ``sampler(params, keys, cond=None, x_init=None, *, config=, state=, mask=, known=)``.

    ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``, e.g. ``lambda p, x, s, c:
    model.apply(p, x, s)``. Weights, keys, cond, x_init and the state (levels and config) are
    traced: only new shapes or dtypes, step count, schedule name, ``cond`` structure, or the
    switch between a run that can churn and one that cannot (no noise draw) compile again.
    With ``start_step``/``strength`` (image-to-image) every call needs ``x_init``, the image.
    Inpainting: each call may pass ``mask=``/``known=`` (broadcastable to (B, *sample_shape),
    as for :func:`sample`; traced, so new values do not compile again, new shapes do, and the
    values are not checked per call, like ``x_init``'s); with ``jump`` (RePaint's resampling,
    fixed when the sampler is built: it shapes the loop) every call needs them.
    Everything is checked here once (an override ``config=``/``state=`` when first passed), so
    a call costs the dispatch of ``sampler.jitted(params, keys, cond, x_init, state, draws)``
    (with ``mask``/``known``, ``x_init`` there is a bundle of the three).
    Other arguments are as for :func:`sample`.

    >>> import jax, jax.numpy as jnp, karras_jax as kj
    >>> cfg = kj.KarrasVeConfig(s_churn=0.0)
    >>> shrink = lambda scale, x, sigma, cond: x * scale / (scale + sigma**2)
    >>> sampler = kj.make_sampler(shrink, kj.set_timesteps(cfg, 8), None, (2,))
    >>> sampler(1.0, jax.random.split(jax.random.key(0), 4)).shape
    (4, 2)
    """
    sample_shape, solver, dtype = check_sample_shape(sample_shape), get_solver(solver), check_dtype(dtype)
    check_arity("apply_fn", apply_fn, "apply_fn(params, x, sigma, cond)", 4)
    from_image, jump = check_start_step(start_step, strength), check_jump(jump)
    default = prepare(state, config, dtype)

    check_start(apply_fn, default.state, solver)

    def program(params: Any, keys: jax.Array, cond: Any, x_init: Any, state: KarrasVeState,
                draws: bool = True) -> Any:
        check_start(apply_fn, state, solver)
        x_init, paint = unbundle(x_init)
        return _sample(lambda x, sigma, c: apply_fn(params, x, sigma, c), keys, state,
                       loop_config(state, draws), sample_shape, cond, solver, x_init, dtype,
                       return_trajectory, progress, checks=check_finite, from_image=from_image,
                       paint=paint, jump=jump)

    run = (run_checked if check_finite else jax.jit)(program, static_argnums=5)

    def place(keys: Any, cond: Any, x_init: Any) -> tuple[Any, Any, Any]:
        if getattr(keys, "dtype", None) == jnp.uint32:  # one program for raw and typed keys
            keys = as_typed_keys("keys", keys, batch=True)
        return keys, cond, x_init

    return with_paint(wrap_program(run, default, dtype, place))


@struct.dataclass
class Painted:
    """What a compiled sampler's ``x_init`` slot carries on an inpainting call (arrays, or None)."""

    image: Any
    mask: Any
    known: Any


def bundle(x_init: Any, mask: Any, known: Any) -> Any:
    """``x_init`` alone without inpainting (the program a call without mask/known always had)."""
    return x_init if mask is None and known is None else Painted(x_init, mask, known)


def unbundle(x_init: Any) -> tuple[Any, tuple[Any, Any]]:
    """``(x_init, (mask, known))`` from what :func:`bundle` made."""
    if isinstance(x_init, Painted):
        return x_init.image, (x_init.mask, x_init.known)
    return x_init, (None, None)


def with_paint(base: Callable[..., Any]) -> Callable[..., Any]:
    """``base`` (from ``wrap_program``) taking ``mask=``/``known=`` as well, bundled into its ``x_init``."""

    def sampler(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None, *,
                config: KarrasVeConfig | None = None, state: KarrasVeState | None = None,
                mask: ArrayLike | None = None, known: ArrayLike | None = None) -> Any:
        return base(params, keys, cond, bundle(x_init, mask, known), config=config, state=state)

    def lower(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None, *,
              mask: ArrayLike | None = None, known: ArrayLike | None = None) -> Any:
        return base.lower(params, keys, cond, bundle(x_init, mask, known))

    sampler.jitted, sampler.lower = base.jitted, lower  # type: ignore[attr-defined]
    return sampler
