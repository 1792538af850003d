"""What ``make_sampler`` and ``make_sharded_sampler`` share: checks once, then a lean call.

A compiled sampler checks its state and config when it is built (and a ``state=``/``config=``
override the first time it is passed), moves the config to the device as float32 scalars,
and decides once, from concrete values, whether the run can churn at all: a run whose churn
is zero at every step gets a program with no noise draw (``draws`` is a static argument of
the jitted program). A call then only wraps raw keys and places arrays before dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from karras_jax._validation import level_dtype
from karras_jax.config import KarrasVeConfig
from karras_jax.state import KarrasVeState, check_state, resolve_config
from karras_jax.steps import churn_levels

__all__ = ["Prepared", "as_traced_config", "check_levels_fit", "churn_is_idle", "loop_config", "prepare",
           "wrap_program"]


def _concrete_churn(config: KarrasVeConfig, state: KarrasVeState) -> tuple[np.ndarray, np.ndarray] | None:
    """(sigma_hat / sigma, noise std) of every step when config and levels are concrete, else None."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((config, state.sigmas))):
        return None
    with jax.ensure_compile_time_eval():  # concrete even when called while tracing
        sigmas = jnp.asarray(state.sigmas[:-1], level_dtype())
        sigma_hat, noise_std = churn_levels(config, state.num_inference_steps, sigmas)
        return np.asarray(sigma_hat / sigmas), np.asarray(noise_std)


def churn_is_idle(config: KarrasVeConfig, state: KarrasVeState) -> bool:
    """Whether the churn is known, at trace time, to add nothing at any step.

    True for a concrete ``s_churn = 0`` (whatever else is traced) and for concrete values
    that put every level outside ``[s_min, s_max]``; False whenever it cannot be known.
    """
    s_churn = config.s_churn
    if not isinstance(s_churn, jax.core.Tracer) and np.all(np.asarray(s_churn) == 0):
        return True
    churn = _concrete_churn(config, state)
    return churn is not None and not np.any(churn[1] > 0)


def loop_config(state: KarrasVeState, draws: bool) -> KarrasVeConfig:
    """The config a compiled program samples with: the state's, with a concrete s_churn = 0 when idle."""
    return state.config if draws else state.config.replace(s_churn=0.0)


def check_levels_fit(state: KarrasVeState, config: KarrasVeConfig, dtype: jnp.dtype) -> None:
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
    churn = _concrete_churn(config, state)
    factor = 2**0.5 if churn is None else float(np.max(churn[0]))
    biggest = float(np.asarray(state.init_noise_sigma)) * factor
    largest = float(jnp.finfo(dtype).max)
    if 6.0 * biggest > largest:
        sigma_max = config.sigma_max
        built = "" if isinstance(sigma_max, jax.core.Tracer) else f" (sigma_max={np.asarray(sigma_max)!s})"
        raise ValueError(
            f"dtype={jnp.dtype(dtype).name} cannot hold this run's noise: samples of std up to "
            f"{biggest:.4g}{built} reach about {6 * biggest:.4g}, beyond the largest "
            f"{jnp.dtype(dtype).name} ({largest:.4g}); use a wider dtype (bfloat16 or float32) or a "
            "smaller sigma_max."
        )


def as_traced_config(config: KarrasVeConfig, *, on_device: bool = False) -> KarrasVeConfig:
    """The config with Python and NumPy scalars as level-dtype arrays.

    A jitted function sees ``1`` (int), ``1.0`` (weakly typed float) and ``np.float32(1)``
    as different argument types and would compile once per kind; after this all three are
    the same float32 scalar argument. ``on_device`` puts them on the device (done once for
    a sampler's default config, so no call copies anything).
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
    check_levels_fit(state, config, dtype)
    config = as_traced_config(config, on_device=True)
    return Prepared(state.replace(config=config), not churn_is_idle(config, state))


def wrap_program(run: Any, default: Prepared, dtype: jnp.dtype,
                 place: Callable[[Any, Any, Any], tuple[Any, Any, Any]]) -> Callable[..., Any]:
    """``sampler(params, keys, cond=None, x_init=None, *, config=None, state=None)`` around ``run``.

    ``run(params, keys, cond, x_init, state, draws)`` is the jitted program (``draws``
    static); ``place(keys, cond, x_init)`` readies a call's arrays (wraps raw keys, puts
    them on a sharding). An override pair is checked the first time it is passed and the
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

    sampler.jitted = run  # type: ignore[attr-defined]
    return sampler
