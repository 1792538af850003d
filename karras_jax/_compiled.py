"""What ``make_sampler`` and ``make_sharded_sampler`` share: checks once, then a lean call.

A compiled sampler checks its state and config when it is built (and a ``state=``/``config=``
override the first time it is passed), moves the config to the device as level-dtype scalars,
and decides once, from concrete values, whether the run can churn at all: a run whose churn
is zero at every step gets a program with no noise draw (``draws`` is a static argument of
the jitted program). A call then only wraps raw keys and places arrays before dispatch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from karras_jax._noise import churn_keys, churn_noise
from karras_jax._validation import level_dtype
from karras_jax.config import KarrasVeConfig
from karras_jax.solvers import Solver
from karras_jax.solvers.restart import check_restart_levels
from karras_jax.state import KarrasVeState, check_state, resolve_config
from karras_jax.steps import add_churn, churn_levels

__all__ = ["SKIP_IDLE_DRAW_FROM", "Prepared", "as_traced_config", "check_levels_fit", "check_start",
           "churn_fn", "churn_is_idle", "concrete_churn", "loop_config", "prepare", "wrap_program"]


# Sample sizes (B * prod(sample_shape)) from which a step that may churn skips an idle draw
# behind a lax.cond; below them the draw is added times 0 in the fused update. A draw costs
# ~14 ns/element on a CPU core, ~5.5 us/million on an H200; a cond ~1 us on CPU, a few on GPUs.
SKIP_IDLE_DRAW_FROM = {"cpu": 128, "accelerator": 1 << 20}


def churn_fn(keys: jax.Array, sample_shape: tuple[int, ...], dtype: jnp.dtype,
              noise_std: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``churn(i, x) -> x_hat``: drawn every step for small samples, skipped when idle for large."""
    k_churn = churn_keys(keys, sample_shape)
    size = keys.shape[0] * math.prod(sample_shape)

    def churn(i: jax.Array, x: jax.Array) -> jax.Array:
        def draw(x: jax.Array) -> jax.Array:
            return add_churn(x, noise_std[i], churn_noise(k_churn, i, sample_shape, dtype))

        def skip_when_idle(x: jax.Array) -> jax.Array:
            return jax.lax.cond(noise_std[i] > 0, draw, lambda x: x, x)

        on_cpu = skip_when_idle if size >= SKIP_IDLE_DRAW_FROM["cpu"] else draw
        elsewhere = skip_when_idle if size >= SKIP_IDLE_DRAW_FROM["accelerator"] else draw
        return on_cpu(x) if on_cpu is elsewhere else jax.lax.platform_dependent(x, cpu=on_cpu,
                                                                                default=elsewhere)

    return churn


def concrete_churn(config: KarrasVeConfig, state: KarrasVeState) -> tuple[np.ndarray, np.ndarray] | None:
    """(sigma_hat / sigma, noise std) of every step when config and levels are concrete, else None."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((config, state.sigmas))):
        return None
    with jax.ensure_compile_time_eval():  # concrete even when called while tracing
        sigmas = jnp.asarray(state.sigmas[:-1], level_dtype())
        sigma_hat, noise_std = churn_levels(config, state.num_inference_steps, sigmas)
        finite = np.isfinite(np.asarray(sigmas))  # no churn at an infinite level (a flow start)
        return np.where(finite, sigma_hat / sigmas, 1.0), np.where(finite, noise_std, 0.0)


def churn_is_idle(config: KarrasVeConfig, state: KarrasVeState,
                  churn: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
    """Whether the churn is known, at trace time, to be gamma = 0 at every step.

    True for a concrete ``s_churn = 0`` (whatever else is traced) and for concrete values
    that put every level outside ``[s_min, s_max]``; False whenever it cannot be known, and
    for ``s_noise = 0`` with gamma > 0 (the levels are still raised; only the draw is zero).
    ``churn`` is :func:`concrete_churn`'s result when the caller has it.
    """
    s_churn = config.s_churn
    if not isinstance(s_churn, jax.core.Tracer) and np.all(np.asarray(s_churn) == 0):
        return True
    churn = concrete_churn(config, state) if churn is None else churn
    return churn is not None and bool(np.all(churn[0] == 1.0))


def loop_config(state: KarrasVeState, draws: bool) -> KarrasVeConfig:
    """The config a compiled program samples with: the state's, with a concrete s_churn = 0 when idle."""
    return state.config if draws else state.config.replace(s_churn=0.0)


def check_levels_fit(state: KarrasVeState, config: KarrasVeConfig, dtype: jnp.dtype,
                     churn: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    r"""Refuses a concrete state whose noise would overflow the network's dtype.

    The sample starts with std ``init_noise_sigma`` and the churn raises it by at most the
    factor :math:`\max_i \hat\sigma_i/\sigma_i` (:math:`\le \sqrt 2`, the bound used when
    the config is traced). With draws up to 6 standard deviations that must stay below the
    dtype's largest value (65504 for float16).

    Raises:
      ValueError: naming the dtype, the noise std and sigma_max.
    """
    if isinstance(state.init_noise_sigma, jax.core.Tracer):
        return
    churn = concrete_churn(config, state) if churn is None else churn
    factor = 2**0.5 if churn is None else float(np.max(churn[0]))
    levels = np.asarray(state.sigmas)
    start = float(np.asarray(state.init_noise_sigma))  # held as x_0 / sigma_0 when infinite:
    start = start if np.isfinite(start) else max(1.0, float(levels[1]) if levels.size > 1 else 0.0)
    biggest = start * factor
    largest = float(jnp.finfo(dtype).max)
    if 6.0 * biggest > largest:
        sigma_max = config.sigma_max
        built = "" if isinstance(sigma_max, jax.core.Tracer) else f" (sigma_max={np.asarray(sigma_max)!s})"
        raise ValueError(f"dtype={jnp.dtype(dtype).name} cannot hold this run's noise: samples of std up to "
                         f"{biggest:.4g}{built} reach about {6 * biggest:.4g}, beyond the largest "
                         f"{jnp.dtype(dtype).name} ({largest:.4g}); use a wider dtype (bfloat16 or float32) "
                         "or a smaller sigma_max.")


def check_start(apply_fn: Any, state: KarrasVeState, solver: Solver) -> None:
    """Refuses what the levels themselves rule out: no denoised value at the start, an empty restart.

    Raises:
      ValueError: ``apply_fn`` says ``finite_levels_only`` (an epsilon-prediction flow model)
        and the state's schedule is ``"flow"``; or (concrete levels) a Restart interval whose
        t_min snaps to a level at or above its t_max.
    """
    check_restart_levels(solver, state.sigmas)
    if state.schedule_name == "flow" and getattr(apply_fn, "finite_levels_only", False):
        raise ValueError("this denoiser has no value at sigma = inf (an epsilon-prediction flow model: "
                         "D = (x_t - t eps) / (1 - t) at t = 1), where the flow schedule starts; start "
                         "below t = 1, e.g. kj.set_timesteps(cfg, sigmas=...) or the karras schedule.")


def as_traced_config(config: KarrasVeConfig) -> KarrasVeConfig:
    """The config as a plain :class:`KarrasVeConfig` of level-dtype device scalars.

    A jitted function sees ``1`` (int), ``1.0`` (weakly typed float), ``np.float32(1)`` and a
    subclass (the diffusers facade's ``SchedulerConfig``) as different arguments and would
    compile once per kind; after this they are all the same argument. Done once per
    sampler default or override, so no call copies anything. Tracers pass through.
    """
    def cast(value: Any) -> Any:
        if isinstance(value, jax.core.Tracer):
            return value
        return jnp.asarray(value, level_dtype()).astype(level_dtype())  # drops weak typing

    leaves = [cast(value) for value in jax.tree_util.tree_leaves(config)]
    return jax.tree_util.tree_unflatten(_PLAIN, leaves)


_PLAIN = jax.tree_util.tree_structure(KarrasVeConfig())


@struct.dataclass
class Prepared:
    """A checked run of a compiled sampler."""

    state: KarrasVeState  # its config as level-dtype device scalars
    draws: bool = struct.field(pytree_node=False)  # static: whether the program draws churn noise


def prepare(state: KarrasVeState, config: KarrasVeConfig | None, dtype: jnp.dtype) -> Prepared:
    """Checks a sampler's state and config once and returns them ready for every call.

    Raises:
      TypeError / ValueError: as :func:`karras_jax.sample` for the same state and config.
    """
    check_state(state)
    config = resolve_config(state, config)
    churn = concrete_churn(config, state)  # one host read for both uses
    check_levels_fit(state, config, dtype, churn)
    draws = not churn_is_idle(config, state, churn)
    return Prepared(dataclasses.replace(state, config=as_traced_config(config)), draws)  # checked above


def wrap_program(run: Any, default: Prepared, dtype: jnp.dtype,
                 place: Callable[[Any, Any, Any], tuple[Any, Any, Any]]) -> Callable[..., Any]:
    """``sampler(params, keys, cond=None, x_init=None, *, config=None, state=None)`` around ``run``.

    ``run(params, keys, cond, x_init, state, draws)`` is the jitted program (``draws``
    static); ``place(keys, cond, x_init)`` readies a call's arrays (wraps raw keys, puts
    them on a sharding); ``sampler.lower(params, keys, cond, x_init)`` lowers the default
    run. An override pair is checked the first time it is passed and the
    last one is remembered, so a loop passing the same override pays the checks once.
    """
    last: list[Any] = []

    def resolve(state: KarrasVeState | None, config: KarrasVeConfig | None) -> Prepared:
        if last and last[0] is state and last[1] is config:
            return last[2]
        base = default.state if state is None else state
        checked = prepare(base, config, dtype)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(checked.state)):
            last[:] = [state, config, checked]  # never keep a caller's tracers beyond their trace
        return checked

    def sampler(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None, *,
                config: KarrasVeConfig | None = None, state: KarrasVeState | None = None) -> Any:
        keys, cond, x_init = place(keys, cond, x_init)
        chosen = default if config is None and state is None else resolve(state, config)
        return run(params, keys, cond, x_init, chosen.state, chosen.draws)

    def lower(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None) -> Any:
        return run.lower(params, *place(keys, cond, x_init), default.state, default.draws)

    sampler.jitted, sampler.lower = run, lower  # type: ignore[attr-defined]
    return sampler
