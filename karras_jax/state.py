"""The scheduler state: the noise levels of one sampling run, and ``set_timesteps`` to build it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from karras_jax import schedules
from karras_jax._validation import check_num_steps, level_dtype
from karras_jax.config import KarrasVeConfig, check_config

__all__ = ["KarrasVeState", "set_timesteps"]


@struct.dataclass
class KarrasVeState:
    """Noise levels for ``num_inference_steps`` steps; immutable, a pytree.

    ``num_inference_steps`` and ``schedule_name`` are static (they fix shapes and the
    loop length); the arrays are leaves. An empty state (from ``KarrasVeState.create()``
    or ``KarrasVeScheduler.create_state()``) has them all None until ``set_timesteps``.

    Attributes:
      num_inference_steps: N, a Python int.
      timesteps: int32 (N,), ``[N-1, ..., 0]``: diffusers' loop order.
      schedule: (N,) noise level at each timestep, ``schedule[t]`` for ``t in timesteps``
        (so ascending in t: ``schedule[N-1]`` is the first, largest level).
      sigmas: (N+1,) the levels in sampling order, descending, ending in 0.0:
        ``sigmas[i] == schedule[N-1-i]``.
      init_noise_sigma: scalar std of the starting noise, ``x_0 ~ N(0, init_noise_sigma^2 I)``.
        ``sigmas[0]`` except for ``"diffusers"``, which starts at ``sigma_max``.
      schedule_name: A name in :data:`karras_jax.SCHEDULES` (``"ve"``, ``"karras"``,
        ``"diffusers"``, ``"vp"``, ``"iddpm"``), or ``"custom"`` for ``sigmas=``.
      sigma_min, sigma_max: The config values the levels were built from (None for custom
        levels). The sampler refuses a concrete config whose range differs: the levels come
        from the state, so such a config would otherwise be silently ignored.
    """

    num_inference_steps: int | None = struct.field(pytree_node=False, default=None)
    timesteps: jax.Array | None = None  # int32 (N,)
    schedule: jax.Array | None = None  # (N,)
    sigmas: jax.Array | None = None  # (N+1,)
    init_noise_sigma: jax.Array | None = None  # ()
    schedule_name: str = struct.field(pytree_node=False, default="ve")
    sigma_min: jax.Array | None = None  # ()
    sigma_max: jax.Array | None = None  # ()

    @classmethod
    def create(cls) -> KarrasVeState:
        """An empty state, as diffusers' Flax schedulers return before ``set_timesteps``."""
        return cls()

    @property
    def is_set(self) -> bool:
        """Whether ``set_timesteps`` has filled this state."""
        return self.num_inference_steps is not None


def set_timesteps(
    config: KarrasVeConfig,
    num_inference_steps: int | None = None,
    schedule: str | None = None,
    *,
    rho: ArrayLike = 7.0,
    sigmas: ArrayLike | None = None,
) -> KarrasVeState:
    """Builds the state holding the noise levels for a sampling run.

    Args:
      config: The sampler's hyperparameters (``sigma_min`` and ``sigma_max`` are used here).
      num_inference_steps: N, a positive Python int. May be left out when ``sigmas`` is given.
      schedule: A name in :data:`karras_jax.SCHEDULES`: ``"ve"`` (default; the paper's VE
        column), ``"karras"`` (EDM, with ``rho``), ``"diffusers"`` (diffusers'
        KarrasVeScheduler exactly, t_i used as sigma), ``"vp"`` or ``"iddpm"`` (Table 1's
        VP and iDDPM columns). See :mod:`karras_jax.schedules` for the formulas.
      rho: The EDM exponent, only used by ``"karras"``.
      sigmas: Custom (N,) levels instead of a named schedule: finite, > 0, strictly
        descending, without the final 0.

    Returns:
      A :class:`KarrasVeState`.

    Raises:
      TypeError: config is not a KarrasVeConfig, or num_inference_steps is not an int.
      ValueError: unknown schedule, bad rho, bad sigmas, or a step count that disagrees
        with ``len(sigmas)``.

    >>> import karras_jax as kj
    >>> state = kj.set_timesteps(kj.KarrasVeConfig(), 5)
    >>> state.timesteps.tolist()
    [4, 3, 2, 1, 0]
    >>> [round(s, 4) for s in state.sigmas.tolist()]
    [100.0, 11.8921, 1.4142, 0.1682, 0.02, 0.0]
    """
    check_config(config, scalar=("sigma_min", "sigma_max"))
    schedules.check_rho(rho)  # checked whatever the schedule, so a typo never passes silently
    if sigmas is not None:
        if schedule is not None:
            raise ValueError(
                f"pass either schedule={schedule!r} or sigmas=..., not both."
            )
        levels = schedules.custom_sigmas(sigmas)
        if num_inference_steps is not None and check_num_steps(num_inference_steps) != levels.shape[0]:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} disagrees with len(sigmas)={levels.shape[0]}."
            )
        name = "custom"
    else:
        if num_inference_steps is None:
            raise TypeError("num_inference_steps is required unless sigmas is given.")
        name = "ve" if schedule is None else schedule
        n = check_num_steps(num_inference_steps)
        levels = schedules.named_sigmas(name, config.sigma_min, config.sigma_max, n, rho=rho)
    n = levels.shape[0]
    dtype = level_dtype()
    if name == "diffusers":
        init_noise_sigma = jnp.asarray(config.sigma_max, dtype)
    else:
        init_noise_sigma = levels[0]
    return KarrasVeState(
        num_inference_steps=n,
        timesteps=jnp.arange(n - 1, -1, -1, dtype=jnp.int32),
        schedule=levels[::-1],
        sigmas=jnp.concatenate([levels, jnp.zeros((1,), dtype)]),
        init_noise_sigma=init_noise_sigma,
        schedule_name=name,
        sigma_min=None if name == "custom" else jnp.asarray(config.sigma_min, dtype),
        sigma_max=None if name == "custom" else jnp.asarray(config.sigma_max, dtype),
    )


def check_state(state: Any) -> int:
    """Checks that ``state`` is a filled, self-consistent state and returns its step count.

    The step count is a static field and the levels are arrays, so an edited state (for
    example ``state.replace(num_inference_steps=...)``) could otherwise run the loop over
    the wrong number of levels.

    Raises:
      TypeError: ``state`` is not a :class:`KarrasVeState`.
      ValueError: the state has no levels yet, or its step count and levels disagree.
    """
    if not isinstance(state, KarrasVeState):
        raise TypeError(f"state must be a KarrasVeState, got {type(state).__name__}.")
    if not state.is_set:
        raise ValueError("state has no noise levels yet: call set_timesteps first.")
    n = check_num_steps(state.num_inference_steps)
    for name, want in (("sigmas", (n + 1,)), ("timesteps", (n,)), ("schedule", (n,))):
        got = jnp.shape(getattr(state, name))
        if got != want:
            raise ValueError(
                f"state.num_inference_steps={n} disagrees with state.{name} of shape {got} "
                f"(expected {want}); build a new state with set_timesteps instead of editing one."
            )
    return n


def check_state_matches_config(state: KarrasVeState, config: KarrasVeConfig) -> None:
    """Refuses a concrete config whose sigma_min/sigma_max differ from the state's.

    Only concrete values are compared (a traced sweep is the caller's to keep consistent:
    vmap over ``set_timesteps`` too).

    Raises:
      ValueError: naming both values of the field that differs.
    """
    for name in ("sigma_min", "sigma_max"):
        built, given = getattr(state, name), getattr(config, name)
        if built is None or isinstance(built, jax.core.Tracer) or isinstance(given, jax.core.Tracer):
            continue
        dtype = level_dtype()
        built_value, given_value = np.asarray(built, dtype), np.asarray(given, dtype)
        if built_value.shape == given_value.shape == () and built_value != given_value:
            raise ValueError(
                f"config.{name}={given_value!s} differs from the {name}={built_value!s} "
                f"the state's levels were built with; call set_timesteps with this config (to sweep "
                f"{name}, vmap over set_timesteps as well)."
            )
