r"""The whole of Algorithm 2 as one XLA program: ``sample`` and ``make_sampler``.

The loop over noise levels is a ``lax.fori_loop`` (a ``lax.scan`` when the trajectory is
kept) driving a :class:`~karras_jax.solvers.Solver`, so compile time does not grow with the
number of steps and the network is traced once per evaluation of one step. Everything per
step that depends only on the levels (churned levels, churn noise std, reciprocals, the
solver's coefficients) is computed once before the loop into a few (N,) arrays; the loop
body holds the network calls, the churn draw and one fused update. The last step, down to
sigma = 0, is peeled off the loop and is the solver's ``last_step`` (Euler for the built-in
solvers): no ``lax.cond`` around the network, and the network is never evaluated at 0.

The sample is carried in float32 (float64 under x64) whatever ``dtype`` is: ``dtype`` is
what the network receives and what is returned, so small late updates are not rounded away
in bfloat16 (EDM carries float64 and runs the network in float16 for the same reason).

Noise stream (a contract, pinned by a golden-value test): for sample ``b`` with key ``k_b``

    k_init, k_churn = jax.random.split(k_b)
    x_0   = init_noise_sigma * jax.random.normal(k_init, sample_shape, dtype)
    eps_i = s_noise * jax.random.normal(jax.random.fold_in(k_churn, i), sample_shape, dtype)

for the churn of step ``i`` (0-based). A sample therefore depends only on its own key
(and its own ``cond``), whatever the batch it sits in or the devices it runs on.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike, DTypeLike

from karras_jax._finite import INPUT, OUTPUT, START, UPDATE, FirstFailure, all_finite, raise_if_not_finite
from karras_jax._noise import churn_keys, churn_noise, normalize_keys, start_sample
from karras_jax._validation import (
    carry_dtype,
    check_arity,
    check_cond,
    check_dtype,
    check_finite_array,
    check_sample_shape,
    level_dtype,
)
from karras_jax.config import KarrasVeConfig, check_config
from karras_jax.solvers import Levels, Solver, get_solver
from karras_jax.solvers.base import levels_of
from karras_jax.state import KarrasVeState, check_state, check_state_matches_config
from karras_jax.steps import add_churn, churn_levels

__all__ = ["Trajectory", "make_sampler", "sample"]

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]

# Sample sizes (B * prod(sample_shape) elements) from which a step without churn (gamma = 0)
# skips the noise draw behind a lax.cond; below them the draw is always made and added
# times 0, which lets XLA fuse it into the step's single elementwise pass. A cond costs about
# a microsecond on CPU and a few on GPUs (the predicate goes to the host, and the step splits
# into more kernels). The draw (the unrolled Threefry hash plus the normal transform) costs
# about 14 ns per element on a CPU core (measured, 2-core VM, JAX 0.10: an idle Euler step
# of 64 elements 2.4 us drawing vs 2.5 us branching; 512 elements 8.4 vs 1.3 us) and about
# 5.5 us per million on an H200 (1.42 ms per 256M floats, JAX 0.11.2). They cross near 100
# elements on CPU and near a million on accelerators.
SKIP_IDLE_DRAW_FROM = {"cpu": 128, "accelerator": 1 << 20}

_RAW_KEY_DTYPE = np.dtype(np.uint32)


class Trajectory(NamedTuple):
    """Per-step record of a sampling run (``sample(..., return_trajectory=True)``).

    Attributes:
      samples: (N+1, B, *sample_shape): x_0 (the start noise) then x_1 .. x_N (x_N is the
        result).
      denoised: (N, B, *sample_shape): D(x_hat_i; sigma_hat_i), the network's first
        estimate of the clean sample at each step.
      sigmas: (N+1,) the noise levels sigma_0 .. sigma_N = 0.
    """

    samples: jax.Array
    denoised: jax.Array
    sigmas: jax.Array


def _progress_printer(total: int) -> Callable[[Any], None]:
    def report(i: Any) -> None:
        done = int(i) + 1
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\rsampling [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def step_table(config: KarrasVeConfig, state: KarrasVeState,
               solver: Solver) -> tuple[Levels, jax.Array]:
    """The per-step scalars of all N steps: :class:`Levels` ((N,) arrays) and the churn noise std.

    Computed once, before the loop: about 7 floats per step.
    """
    sigmas = state.sigmas.astype(level_dtype())
    sigma_hat, noise_std = churn_levels(config, state.num_inference_steps, sigmas[:-1])
    levels = levels_of(sigmas[:-1], sigma_hat, sigmas[1:])
    return levels._replace(extra=solver.scalars(levels)), noise_std


def sample(
    denoise_fn: DenoiseFn,
    keys: jax.Array,
    state: KarrasVeState,
    config: KarrasVeConfig,
    sample_shape: tuple[int, ...],
    cond: Any = None,
    solver: str | Solver = "heun",
    *,
    x_init: ArrayLike | None = None,
    dtype: DTypeLike = jnp.float32,
    return_trajectory: bool = False,
    progress: bool | Callable[[Any], None] = False,
    check_finite: bool = False,
) -> jax.Array | tuple[jax.Array, Trajectory]:
    r"""Runs Algorithm 2 for a batch of seeds: one ``fori_loop``, jit- and vmap-friendly.

    For i = 0 .. N-1, with gamma_i from :func:`karras_jax.churn_gamma`, the churn

    .. math::

        \hat\sigma_i = \sigma_i (1+\gamma_i), \quad
        \hat x_i = x_i + \sqrt{\hat\sigma_i^2 - \sigma_i^2}\, \epsilon_i

    then one step of ``solver`` from :math:`(\hat x_i, \hat\sigma_i)` to :math:`\sigma_{i+1}`.
    For ``"heun"`` (Algorithm 2):
    :math:`d = (\hat x - D(\hat x; \hat\sigma)) / \hat\sigma`,
    :math:`x_{i+1} = \hat x + (\sigma_{i+1} - \hat\sigma)\, d` and, while
    :math:`\sigma_{i+1} > 0`,
    :math:`x_{i+1} \leftarrow \hat x + (\sigma_{i+1} - \hat\sigma)(d + d')/2` with
    :math:`d' = (x_{i+1} - D(x_{i+1}; \sigma_{i+1}))/\sigma_{i+1}`.

    Args:
      denoise_fn: ``denoise_fn(x, sigma, cond) -> D(x; sigma)`` with x of shape
        (B, *sample_shape) in ``dtype`` and sigma a scalar array in the level dtype
        (float32). Close over weights inside a jitted caller (or use :func:`make_sampler`)
        so they stay traced. The output may have any float dtype; it is taken as is into
        the float32 carry.
      keys: (B,) typed keys or (B, 2) raw uint32 keys, one per sample.
      state: From :func:`karras_jax.set_timesteps`.
      config: Hyperparameters; all traced, so a vmap over them does not recompile. Its
        sigma_min/sigma_max must be those the state was built with (the levels come from
        the state); to sweep them, vmap over ``set_timesteps`` as well.
      sample_shape: Shape of one sample, a tuple of positive ints.
      cond: Optional pytree of conditioning, every leaf with leading dimension B.
      solver: ``"heun"`` (2N - 1 evaluations), ``"euler"`` (N), ``"dpmpp_2m"`` (N,
        second order), or any :class:`karras_jax.Solver`.
      x_init: Optional (B, *sample_shape) start sample at sigma_0 instead of the key's
        start noise (the churn noise still comes from ``keys``).
      dtype: The network's and the result's dtype (float32, bfloat16, float16, ...). The
        sample is carried in float32 (float64 under x64) whatever it is.
      return_trajectory: Also return a :class:`Trajectory` (memory grows with N only then).
      progress: True prints a progress bar to stderr from a host callback; a callable is
        called with the 0-based step index. Off by default: the program then has no host
        callbacks.
      check_finite: Debug mode: check every network output and every update, and raise
        ``FloatingPointError`` at the first NaN or inf, naming the step, sigma_hat and
        whether the denoiser's output or the update produced it (``jax.experimental.
        checkify``). The call then compiles and runs its own checked program and waits for
        it, so it must be made outside ``jit``/``vmap``; :func:`make_sampler` takes it too.
        Off by default: the default program has no checks.

    Returns:
      (B, *sample_shape) samples in ``dtype``, or ``(samples, trajectory)``.

    Raises:
      TypeError / ValueError: bad keys, sample_shape, dtype, solver, cond, x_init (also NaN
        or inf in a concrete one), state, a config whose sigma_min/sigma_max differ from the
        state's or that holds an array of values, levels the dtype cannot hold, or a
        denoiser whose signature or output shape does not fit.
      FloatingPointError: with ``check_finite=True``, at the first non-finite value.
    """
    args = _checked(denoise_fn, keys, state, config, sample_shape, cond, solver, x_init, dtype,
                    return_trajectory, progress)
    if not check_finite:
        return _sample(*args)
    traced = [leaf for leaf in jax.tree_util.tree_leaves((keys, state, config, cond, x_init))
              if isinstance(leaf, jax.core.Tracer)]
    if traced:
        raise ValueError(
            "check_finite=True runs its own checked program and raises on the host: call "
            "kj.sample(..., check_finite=True) outside jax.jit / jax.vmap, or use "
            "kj.make_sampler(..., check_finite=True)."
        )
    checked = jax.jit(checkify.checkify(lambda: _sample(*args, checks=True), errors=checkify.user_checks))
    return raise_if_not_finite(*checked())


def check_levels_fit(state: KarrasVeState, config: KarrasVeConfig, dtype: jnp.dtype) -> None:
    r"""Refuses a concrete state whose noise would overflow the network's dtype.

    The sample starts with std ``init_noise_sigma`` and the churn raises it by at most the
    factor :math:`\max_i \hat\sigma_i/\sigma_i` (:math:`\le \sqrt 2`, the bound used when
    the config is traced). With draws up to 6 standard deviations that must stay below the
    dtype's largest value (65504 for float16).

    Raises:
      ValueError: naming the dtype, the noise std and sigma_max.
    """
    leaves = jax.tree_util.tree_leaves((state, config))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        factor = 2**0.5 if not isinstance(state.init_noise_sigma, jax.core.Tracer) else None
    else:
        with jax.ensure_compile_time_eval():  # concrete values, even when called while tracing
            sigmas = jnp.asarray(state.sigmas[:-1], level_dtype())
            factor = float(jnp.max(churn_levels(config, state.num_inference_steps, sigmas)[0] / sigmas))
    if factor is None:
        return
    biggest = float(np.asarray(state.init_noise_sigma)) * factor
    largest = float(jnp.finfo(dtype).max)
    if 6.0 * biggest > largest:
        built = "" if state.sigma_max is None else f" (sigma_max={np.asarray(state.sigma_max)!s})"
        raise ValueError(
            f"dtype={jnp.dtype(dtype).name} cannot hold this run's noise: samples of std up to "
            f"{biggest:.4g}{built} reach about {6 * biggest:.4g}, beyond the largest "
            f"{jnp.dtype(dtype).name} ({largest:.4g}); use a wider dtype (bfloat16 or float32) or a "
            "smaller sigma_max."
        )


def _checked(denoise_fn: DenoiseFn, keys: jax.Array, state: KarrasVeState, config: KarrasVeConfig,
             sample_shape: tuple[int, ...], cond: Any, solver: str | Solver, x_init: ArrayLike | None,
             dtype: DTypeLike, return_trajectory: bool,
             progress: bool | Callable[[Any], None]) -> tuple[Any, ...]:
    """:func:`sample`'s arguments, checked and normalised, in :func:`_sample`'s order."""
    check_config(config, scalar=True)
    check_state(state)
    check_state_matches_config(state, config)
    solver = get_solver(solver)
    check_arity("denoise_fn", denoise_fn, "denoise_fn(x, sigma, cond)", 3)
    keys = normalize_keys(keys)
    sample_shape = check_sample_shape(sample_shape)
    dtype = check_dtype(dtype)
    check_levels_fit(state, config, dtype)
    full_shape = (keys.shape[0], *sample_shape)
    check_cond(cond, keys.shape[0])
    if x_init is not None:
        if jnp.shape(x_init) != full_shape:
            raise ValueError(
                f"x_init must have shape (B, *sample_shape) = {full_shape}, got {jnp.shape(x_init)}."
            )
        check_finite_array("x_init", x_init)
    return (denoise_fn, keys, state, config, sample_shape, cond, solver, x_init, dtype,
            return_trajectory, progress)


def _sample(denoise_fn: DenoiseFn, keys: jax.Array, state: KarrasVeState, config: KarrasVeConfig,
            sample_shape: tuple[int, ...], cond: Any, solver: Solver, x_init: ArrayLike | None,
            dtype: jnp.dtype, return_trajectory: bool, progress: bool | Callable[[Any], None],
            checks: bool = False) -> jax.Array | tuple[jax.Array, Trajectory]:
    """:func:`sample` on checked arguments; ``checks`` adds the debug mode's finiteness checks."""
    n = state.num_inference_steps
    full_shape = (keys.shape[0], *sample_shape)
    carry = carry_dtype(dtype)
    levels, noise_std = step_table(config, state, solver)
    k_churn = churn_keys(keys, sample_shape)
    if x_init is None:
        x0 = start_sample(keys, state.init_noise_sigma, sample_shape, dtype)
    else:
        x0 = jnp.asarray(x_init).astype(carry)
    failure = None  # carried through the loop only in the debug mode
    if checks:
        failure = FirstFailure.none(levels.sigma_hat.dtype).record(
            all_finite(x0), START, 0, levels.sigma_hat[0], levels.sigma[0])
    # (ok, kind, sigma) of the evaluations in the step being traced, in program order.
    events: list[tuple[jax.Array, int, jax.Array]] = []

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        x_in = x.astype(dtype)
        if checks:
            events.append((all_finite(x_in), INPUT, sigma))
        out = denoise_fn(x_in, sigma, cond)
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise TypeError(
                f"denoise_fn must return one array shaped like its input {full_shape}, got "
                f"{type(out).__name__}."
            )
        if jnp.shape(out) != full_shape:
            raise ValueError(
                f"denoise_fn must return an array shaped like its input {full_shape}, "
                f"got {jnp.shape(out)}."
            )
        out = jnp.asarray(out).astype(carry)
        if checks:
            events.append((all_finite(out), OUTPUT, sigma))
        return out

    churn = _churn_fn(k_churn, sample_shape, dtype, math.prod(full_shape))
    report = _progress_printer(n) if progress is True else progress

    def iteration(i: jax.Array, x: jax.Array, solver_state: Any, failure: FirstFailure | None,
                  advance: Callable[..., tuple[jax.Array, jax.Array, Any]]) -> tuple[Any, ...]:
        levels_i = jax.tree_util.tree_map(lambda column: column[i], levels)
        x_hat = churn(i, x, noise_std[i])
        events.clear()
        x_next, denoised, solver_state = advance(denoise, x_hat, levels_i, solver_state)
        if checks:
            events.append((all_finite(x_next), UPDATE, levels_i.sigma_hat))
            for ok, kind, sigma in events:
                failure = failure.record(ok, kind, i, levels_i.sigma_hat, sigma)
        if report:
            jax.debug.callback(report, i, ordered=True)
        return x_next, denoised, solver_state, failure

    loop_steps = n - 1  # the last step, to sigma = 0, is the solver's last_step
    last = jnp.asarray(n - 1, jnp.int32)
    init = (x0, solver.init(x0), failure)
    if not return_trajectory:
        def body(i: jax.Array, carried: tuple[Any, ...]) -> tuple[Any, ...]:
            x_next, _, solver_state, failure = iteration(i, *carried, solver.step)
            return x_next, solver_state, failure

        x, solver_state, failure = jax.lax.fori_loop(0, loop_steps, body, init)
        x_last, _, _, failure = iteration(last, x, solver_state, failure, solver.last_step)
        if checks:
            failure.check(dtype.name)
        return x_last.astype(dtype)

    def scan_body(carried: tuple[Any, ...], i: jax.Array) -> tuple[tuple[Any, ...], tuple[jax.Array, ...]]:
        x_next, denoised, solver_state, failure = iteration(i, *carried, solver.step)
        return (x_next, solver_state, failure), (x_next.astype(dtype), denoised.astype(dtype))

    (x, solver_state, failure), (xs, ds) = jax.lax.scan(
        scan_body, init, jnp.arange(loop_steps, dtype=jnp.int32))
    x_last, d_last, _, failure = iteration(last, x, solver_state, failure, solver.last_step)
    if checks:
        failure.check(dtype.name)
    x_last = x_last.astype(dtype)
    trajectory = Trajectory(
        samples=jnp.concatenate([x0.astype(dtype)[None], xs, x_last[None]]),
        denoised=jnp.concatenate([ds, d_last.astype(dtype)[None]]),
        sigmas=state.sigmas.astype(level_dtype()),
    )
    return x_last, trajectory


def _churn_fn(k_churn: jax.Array, sample_shape: tuple[int, ...], dtype: jnp.dtype,
              size: int) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """``churn(i, x, noise_std) -> x_hat``: always drawn for small samples, skipped when idle for large."""
    def churn(i: jax.Array, x: jax.Array, noise_std: jax.Array) -> jax.Array:
        def draw(x: jax.Array) -> jax.Array:
            return add_churn(x, noise_std, churn_noise(k_churn, i, sample_shape, dtype))

        def skip_when_idle(x: jax.Array) -> jax.Array:
            return jax.lax.cond(noise_std > 0, draw, lambda x: x, x)

        on_cpu = skip_when_idle if size >= SKIP_IDLE_DRAW_FROM["cpu"] else draw
        elsewhere = skip_when_idle if size >= SKIP_IDLE_DRAW_FROM["accelerator"] else draw
        if on_cpu is elsewhere:
            return on_cpu(x)
        return jax.lax.platform_dependent(x, cpu=on_cpu, default=elsewhere)

    return churn


def as_traced_config(config: KarrasVeConfig, *, on_device: bool = False) -> KarrasVeConfig:
    """The config with Python and NumPy scalars as level-dtype arrays.

    A jitted function sees ``1`` (int), ``1.0`` (weakly typed float) and ``np.float32(1)``
    as different argument types and would compile once per kind; after this all three are
    the same float32 scalar argument. ``on_device`` puts them on the device (done once for
    a sampler's default config, so no call copies anything); otherwise they stay NumPy
    scalars, which the jitted call transfers together with its other arguments.
    """
    convert = jnp.asarray if on_device else np.asarray

    def cast(value: Any) -> Any:
        if isinstance(value, (int, float, np.integer, np.floating, np.ndarray)) and not isinstance(
                value, bool):
            return convert(value, level_dtype())
        if (isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
                and (value.dtype != level_dtype() or value.weak_type)):
            return jnp.asarray(value, level_dtype()).astype(level_dtype())  # drops weak typing
        return value

    return jax.tree_util.tree_map(cast, config)


def check_sampler_defaults(state: KarrasVeState, config: KarrasVeConfig, dtype: jnp.dtype, *,
                           on_device: bool = False) -> tuple[KarrasVeState, KarrasVeConfig]:
    """Checks a sampler's state and config once, when it is built (or when a call overrides them)."""
    check_config(config, scalar=True)
    check_state(state)
    check_state_matches_config(state, config)
    check_levels_fit(state, config, dtype)
    return state, as_traced_config(config, on_device=on_device)


def override_resolver(default_state: KarrasVeState, default_config: KarrasVeConfig,
                      dtype: jnp.dtype) -> Callable[[Any, Any], tuple[KarrasVeState, KarrasVeConfig]]:
    """``resolve(state, config)`` for a sampler's ``state=``/``config=`` overrides.

    Checks an override pair the first time it is passed and remembers the last pair (its
    config already on the device), so a loop that passes the same override on every call
    pays the checks (which read levels back from the device) and the copies once.
    """
    last: list[Any] = []

    def resolve(state: KarrasVeState | None,
                config: KarrasVeConfig | None) -> tuple[KarrasVeState, KarrasVeConfig]:
        if last and last[0] is state and last[1] is config:
            return last[2], last[3]
        checked = check_sampler_defaults(default_state if state is None else state,
                                         default_config if config is None else config, dtype,
                                         on_device=True)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(checked)):
            last[:] = [state, config, *checked]  # never keep a caller's tracers beyond their trace
        return checked

    return resolve


def make_sampler(
    apply_fn: ApplyFn,
    state: KarrasVeState,
    config: KarrasVeConfig,
    sample_shape: tuple[int, ...],
    *,
    solver: str | Solver = "heun",
    dtype: DTypeLike = jnp.float32,
    return_trajectory: bool = False,
    progress: bool | Callable[[Any], None] = False,
    check_finite: bool = False,
) -> Callable[..., Any]:
    """Returns a jitted ``sampler(params, keys, cond=None, x_init=None, *, config=, state=)``.

    ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``, e.g. ``lambda p, x, s, c:
    model.apply(p, x, s)`` for a Flax linen module. Weights, keys, cond, x_init, the
    config and the state's levels are all traced arguments: new weights, seeds,
    conditioning or hyperparameters reuse the compiled program (config values are passed as
    float32 scalars, so ``s_churn=1`` and ``s_churn=1.0`` share it). What compiles again:
    new shapes or dtypes of the arguments (batch size, weights), a new
    step count or schedule name (static fields of the state), a new ``cond`` structure.

    Everything is checked once here (and again only for a ``config=``/``state=`` passed to
    a call, or at trace time for new shapes), so a call costs what the jitted program's
    dispatch costs. ``sampler.jitted(params, keys, cond, x_init, config, state)`` is that
    program (raw uint32 keys are wrapped as typed keys before it, so both share it).
    ``check_finite=True`` compiles the checked program of :func:`sample`'s debug mode and
    raises ``FloatingPointError`` after a call that met a NaN or inf (each call then waits
    for its result).

    >>> import jax, jax.numpy as jnp, karras_jax as kj
    >>> cfg = kj.KarrasVeConfig(s_churn=0.0)
    >>> state = kj.set_timesteps(cfg, 8)
    >>> shrink = lambda scale, x, sigma, cond: x * scale / (scale + sigma**2)
    >>> sampler = kj.make_sampler(shrink, state, cfg, (2,))
    >>> sampler(1.0, jax.random.split(jax.random.key(0), 4)).shape
    (4, 2)
    """
    sample_shape = check_sample_shape(sample_shape)
    solver = get_solver(solver)
    dtype = check_dtype(dtype)
    check_arity("apply_fn", apply_fn, "apply_fn(params, x, sigma, cond)", 4)
    default_state, default_config = check_sampler_defaults(state, config, dtype, on_device=True)
    resolve = override_resolver(default_state, default_config, dtype)

    def program(params: Any, keys: jax.Array, cond: Any, x_init: Any,
                config: KarrasVeConfig, state: KarrasVeState) -> Any:
        def denoise_fn(x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
            return apply_fn(params, x, sigma, cond)

        return _sample(*_checked(denoise_fn, keys, state, config, sample_shape, cond, solver, x_init,
                                 dtype, return_trajectory, progress), checks=check_finite)

    if check_finite:
        checked = jax.jit(checkify.checkify(program, errors=checkify.user_checks))

        def run(*args: Any) -> Any:
            return raise_if_not_finite(*checked(*args))

        run.lower = checked.lower  # type: ignore[attr-defined]
    else:
        run = jax.jit(program)

    def sampler(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None,
                *, config: KarrasVeConfig | None = None,
                state: KarrasVeState | None = None) -> Any:
        if getattr(keys, "dtype", None) == _RAW_KEY_DTYPE:  # one program for raw and typed keys
            keys = normalize_keys(keys)
        if config is None and state is None:
            return run(params, keys, cond, x_init, default_config, default_state)
        state, config = resolve(state, config)
        return run(params, keys, cond, x_init, config, state)

    sampler.jitted = run  # type: ignore[attr-defined]
    return sampler
