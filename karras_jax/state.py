"""The scheduler state: the noise levels of one sampling run, and ``set_timesteps`` to build it."""

from __future__ import annotations

import dataclasses
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

RANGELESS = ("custom", "flow")  # schedule names whose levels ignore the config's sigma_min/sigma_max


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
        ``sigmas[0]`` except for ``"diffusers"``, which starts at ``sigma_max``; infinite for
        ``"flow"`` (the sampler then holds ``x_0 / sigma_0``).
      schedule_name: A name in :data:`karras_jax.SCHEDULES` (``"ve"``, ``"karras"``,
        ``"diffusers"``, ``"vp"``, ``"iddpm"``, ``"exponential"``, ``"polyexponential"``,
        ``"flow"``), or ``"custom"`` for ``sigmas=``. ``"custom"`` and ``"flow"`` levels do not
        come from the config's sigma_min/sigma_max, so their range is never compared.
      config: The :class:`KarrasVeConfig` the levels were built from: the one source of
        every hyperparameter of a run. :func:`karras_jax.sample` takes s_churn, s_noise,
        s_min and s_max from it; its sigma_min/sigma_max are the levels' range, so they can
        only change together with the levels (:meth:`replace` refuses a new range: build a
        new state with :func:`set_timesteps`; to sweep sigma_max, vmap over it).
    """

    num_inference_steps: int | None = struct.field(pytree_node=False, default=None)
    timesteps: jax.Array | None = None  # int32 (N,)
    schedule: jax.Array | None = None  # (N,)
    sigmas: jax.Array | None = None  # (N+1,)
    init_noise_sigma: jax.Array | None = None  # ()
    schedule_name: str = struct.field(pytree_node=False, default="ve")
    config: KarrasVeConfig | None = None

    @classmethod
    def create(cls) -> KarrasVeState:
        """An empty state, as diffusers' Flax schedulers return before ``set_timesteps``."""
        return cls()

    @property
    def is_set(self) -> bool:
        """Whether ``set_timesteps`` has filled this state."""
        return self.num_inference_steps is not None


def _replace(self: KarrasVeState, **updates: Any) -> KarrasVeState:
    """A new state with fields replaced; its config may change the churn, not the range.

    A new range together with new ``sigmas`` (as flax.serialization restores a state) is
    taken as it is, unchecked: the levels are then the caller's to keep consistent.

    Raises:
      ValueError: ``config`` with another sigma_min/sigma_max than the levels were built
        from (a traced one counts as another unless it is the same value).
    """
    if ("config" in updates and "sigmas" not in updates and self.config is not None
            and self.schedule_name not in RANGELESS and updates["config"] is not None):
        check_same_range(self.config, check_config(updates["config"]), "state.replace(config=...)")
    return dataclasses.replace(self, **updates)


# flax.struct installs a plain replace on the class; this one keeps levels and range together.
KarrasVeState.replace = _replace  # type: ignore[method-assign]


def set_timesteps(
    config: KarrasVeConfig,
    num_inference_steps: int | None = None,
    schedule: str | None = None,
    *,
    rho: ArrayLike | None = None,
    shift: ArrayLike | None = None,
    sigmas: ArrayLike | None = None,
) -> KarrasVeState:
    r"""Builds the state holding the noise levels for a sampling run.

    Args:
      config: The sampler's hyperparameters (``sigma_min`` and ``sigma_max`` are used here).
      num_inference_steps: N, a positive Python int. May be left out when ``sigmas`` is given.
      schedule: A name in :data:`karras_jax.SCHEDULES`: ``"ve"`` (default; the paper's VE
        column), ``"karras"`` (EDM, with ``rho``), ``"diffusers"`` (diffusers'
        KarrasVeScheduler exactly, t_i used as sigma), ``"vp"`` or ``"iddpm"`` (Table 1's
        VP and iDDPM columns), ``"exponential"`` (k-diffusion's name for the VE formula),
        ``"polyexponential"`` (k-diffusion's, with ``rho``) or ``"flow"`` (diffusers'
        FlowMatchEulerDiscreteScheduler with ``shift``: :math:`t' = s t / (1 + (s - 1) t)`,
        :math:`\sigma = t / (1 - t)`, the Karras sample :math:`x = x_t / (1 - t)`; its
        :math:`\sigma_0 = \infty` and the config's range is not used). See
        :mod:`karras_jax.schedules` for the formulas.
      rho: The exponent of ``"karras"`` and ``"polyexponential"``; None (default) is the
        schedule's own default (7 for karras, 1 for polyexponential). Checked whatever the
        schedule, and ignored by the schedules that do not take it.
      shift: The time shift s of ``"flow"``, finite and > 0; None (default) is 1. Refused
        for any other schedule.
      sigmas: Custom (L,) levels instead of a named schedule: finite, > 0, strictly
        descending, without the final 0. With a ``num_inference_steps`` other than L they
        are resampled to that many levels, linearly in log sigma with both ends kept
        (:func:`karras_jax.schedules.interpolated_sigmas`, the Align Your Steps recipe).

    Returns:
      A :class:`KarrasVeState`.

    Raises:
      TypeError: config is not a KarrasVeConfig, or num_inference_steps is not an int.
      ValueError: unknown schedule, bad rho or shift, shift for a schedule other than
        ``"flow"``, bad sigmas, or sigmas that cannot be resampled to the step count.

    >>> import karras_jax as kj
    >>> state = kj.set_timesteps(kj.KarrasVeConfig(), 5)
    >>> state.timesteps.tolist()
    [4, 3, 2, 1, 0]
    >>> [round(s, 4) for s in state.sigmas.tolist()]
    [100.0, 11.8921, 1.4142, 0.1682, 0.02, 0.0]
    >>> [round(s, 3) for s in kj.set_timesteps(kj.KarrasVeConfig(), 3, "flow", shift=3.0).sigmas.tolist()]
    [inf, 3.018, 0.009, 0.0]
    """
    check_config(config, scalar=("sigma_min", "sigma_max"))
    if rho is not None:
        schedules.check_rho(rho)  # checked whatever the schedule, so a typo never passes silently
    options = {name: value for name, value in (("rho", rho), ("shift", shift)) if value is not None}
    if sigmas is not None:
        if schedule is not None:
            raise ValueError(f"pass either schedule={schedule!r} or sigmas=..., not both.")
        if shift is not None:
            raise ValueError("shift is an option of schedule 'flow'; sigmas=... takes no shift.")
        levels = (schedules.custom_sigmas(sigmas) if num_inference_steps is None
                  else schedules.interpolated_sigmas(sigmas, check_num_steps(num_inference_steps)))
        name = "custom"
    else:
        if num_inference_steps is None:
            raise TypeError("num_inference_steps is required unless sigmas is given.")
        name = "ve" if schedule is None else schedule
        n = check_num_steps(num_inference_steps)
        levels = schedules.named_sigmas(name, config.sigma_min, config.sigma_max, n, **options)
    n, dtype = levels.shape[0], level_dtype()
    init_noise_sigma = jnp.asarray(config.sigma_max, dtype) if name == "diffusers" else levels[0]
    return KarrasVeState(num_inference_steps=n, timesteps=jnp.arange(n - 1, -1, -1, dtype=jnp.int32),
                         schedule=levels[::-1], sigmas=jnp.concatenate([levels, jnp.zeros((1,), dtype)]),
                         init_noise_sigma=init_noise_sigma, schedule_name=name, config=config)


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
        if (got := jnp.shape(getattr(state, name))) != want:
            raise ValueError(f"state.num_inference_steps={n} disagrees with state.{name} of shape {got} "
                             f"(expected {want}); build a new state with set_timesteps instead of editing "
                             "one.")
    return n


def check_same_range(built: KarrasVeConfig, given: KarrasVeConfig, where: str) -> None:
    """Refuses ``given`` unless its sigma_min/sigma_max are ``built``'s: equal, or the same object.

    The levels of a state come from ``built``'s range, so a config with another range would
    be silently ignored. Concrete values are compared in the level dtype. A traced value on
    either side cannot be compared, so it passes only when it is the very value the state
    was built from (``set_timesteps`` in the same trace, or ``state.config`` itself); a
    ``vmap`` sweep, a config passed to ``jit`` beside the state, or a concrete config beside
    a traced state is refused (pass ``config=None``: the state carries its config).

    Raises:
      ValueError: naming the field, both values (or that one is traced) and the fix.
    """
    for name in ("sigma_min", "sigma_max"):
        was, now = getattr(built, name), getattr(given, name)
        if was is now:
            continue
        if isinstance(was, jax.core.Tracer) or isinstance(now, jax.core.Tracer):
            shown = f"{name} cannot be compared (traced) with the {name}"
        else:
            was, now = np.asarray(was, level_dtype()), np.asarray(now, level_dtype())
            if was.shape == now.shape == () and was == now:
                continue
            shown = f"{name}={now!s} differs from the {name}={was!s}"
        raise ValueError(f"{where}: config.{shown} the state's levels were built from. The levels come from "
                         f"the state: pass config=None to use the state's config, build the state with "
                         f"set_timesteps from this config (inside the same jit/vmap to sweep {name}), or "
                         "change only s_churn, s_noise, s_min and s_max.")


def resolve_config(state: KarrasVeState, config: KarrasVeConfig | None) -> KarrasVeConfig:
    """The config a run of ``state`` samples with: ``config``, or the state's own when None.

    Raises:
      TypeError: ``config`` is not a config, or neither it nor the state has one.
      ValueError: a field holds an array of values, or the range is not the state's
        (:func:`check_same_range`).
    """
    if config is None:
        if state.config is None:
            raise TypeError("config is None and the state carries none: build the state with "
                            "set_timesteps(config, N), or pass a KarrasVeConfig.")
        config = state.config
    check_config(config, scalar=True)
    if state.config is not None and state.schedule_name not in RANGELESS:  # their levels have no range
        check_same_range(state.config, config, "sample")
    return config
