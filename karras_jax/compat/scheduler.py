"""A diffusers-shaped facade over the pure functions, for code migrating from diffusers.

``KarrasVeScheduler`` (alias ``FlaxKarrasVeScheduler``) holds only the immutable config;
every method is a thin call into :mod:`karras_jax.compat.steps` (diffusers' step API) with
the state passed in and a new state returned, as diffusers' Flax schedulers did.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
from flax import struct
from jax.typing import ArrayLike

from karras_jax.compat import config_file, steps
from karras_jax.config import FIELDS, KarrasVeConfig
from karras_jax.state import KarrasVeState, set_timesteps

__all__ = ["FlaxKarrasVeOutput", "FlaxKarrasVeScheduler", "KarrasVeScheduler", "SchedulerConfig"]


@struct.dataclass
class FlaxKarrasVeOutput:
    """What the facade's ``step`` and ``step_correct`` return, as diffusers' Flax scheduler did.

    Attributes:
      prev_sample: The sample at ``sigma_prev``.
      derivative: The slope used (see :class:`karras_jax.KarrasVeOutput`).
      state: The scheduler state, passed through unchanged.
      pred_original_sample: The denoised estimate.
    """

    prev_sample: jax.Array
    derivative: jax.Array
    state: KarrasVeState
    pred_original_sample: jax.Array

    def to_tuple(self) -> tuple[jax.Array, jax.Array, KarrasVeState]:
        """``(prev_sample, derivative, state)``: diffusers' Flax ``return_dict=False`` form."""
        return self.prev_sample, self.derivative, self.state


def _with_state(out: steps.KarrasVeOutput, state: KarrasVeState,
                return_dict: bool) -> FlaxKarrasVeOutput | tuple:
    wrapped = FlaxKarrasVeOutput(prev_sample=out.prev_sample, derivative=out.derivative,
                                 state=state, pred_original_sample=out.pred_original_sample)
    return wrapped if return_dict else wrapped.to_tuple()


class SchedulerConfig(KarrasVeConfig):
    """A :class:`KarrasVeConfig` that also reads like diffusers' ``FrozenDict`` configs.

    ``scheduler.config["sigma_max"]``, ``dict(**scheduler.config)`` and
    ``KarrasVeScheduler(**scheduler.config)`` work as in diffusers; everything else (a pytree,
    ``replace``, checks) is the config's.
    """

    def __getitem__(self, name: str) -> Any:
        """``config["sigma_max"]``."""
        if name not in FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def keys(self) -> tuple[str, ...]:
        """The six field names, so ``dict(**config)`` works."""
        return FIELDS


class KarrasVeScheduler:
    """Karras et al. (2022) VE stochastic sampler with diffusers' method names.

    Args:
      sigma_min, sigma_max, s_noise, s_churn, s_min, s_max: see :class:`KarrasVeConfig`.

    Example::

        scheduler, state = KarrasVeScheduler.from_pretrained("path/to/scheduler")
        state = scheduler.set_timesteps(state, 50)
    """

    order = 2

    def __init__(
        self,
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
        s_noise: float = 1.007,
        s_churn: float = 80.0,
        s_min: float = 0.05,
        s_max: float = 50.0,
    ) -> None:
        self._config = SchedulerConfig(
            sigma_min=sigma_min, sigma_max=sigma_max, s_noise=s_noise,
            s_churn=s_churn, s_min=s_min, s_max=s_max,
        )

    @property
    def config(self) -> SchedulerConfig:
        """The immutable config (``scheduler.config.sigma_max``, ``scheduler.config["sigma_max"]``)."""
        return self._config

    @property
    def has_state(self) -> bool:
        """True: this scheduler keeps its levels in an explicit state, as diffusers' Flax ones."""
        return True

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self._config, f.name)!r}" for f in dataclasses.fields(self._config)
        )
        return f"{type(self).__name__}({fields})"

    # --- state -------------------------------------------------------------------------

    def create_state(self) -> KarrasVeState:
        """An empty state; fill it with :meth:`set_timesteps`."""
        return KarrasVeState.create()

    def set_timesteps(
        self,
        state: KarrasVeState,
        num_inference_steps: int | None = None,
        shape: tuple[int, ...] = (),
        schedule: str | None = None,
        *,
        rho: ArrayLike | None = None,
        sigmas: ArrayLike | None = None,
    ) -> KarrasVeState:
        """Returns a new state with the noise levels (see :func:`karras_jax.set_timesteps`).

        ``shape`` is accepted for diffusers compatibility and unused (levels do not depend
        on the sample shape). The default schedule is ``"ve"``; pass ``schedule="diffusers"``
        to reproduce diffusers' levels exactly. ``rho=None`` is the schedule's own default.

        Raises:
          ValueError: ``schedule="flow"``: its first level is infinite, which the step-by-step
            calls cannot take (the whole-loop samplers take its exact limit step).
        """
        if not isinstance(state, KarrasVeState):
            raise TypeError(f"state must be a KarrasVeState, got {type(state).__name__}.")
        if schedule == "flow":
            raise ValueError("schedule='flow' starts at sigma = inf, which the step-by-step scheduler "
                             "cannot step from; sample flow models with kj.sample or kj.make_sampler.")
        del shape
        return set_timesteps(self._config, num_inference_steps, schedule, rho=rho, sigmas=sigmas)

    # --- steps -------------------------------------------------------------------------

    def add_noise_to_input(
        self, state: KarrasVeState, sample: ArrayLike, sigma: ArrayLike, key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """See :func:`karras_jax.add_noise_to_input`."""
        return steps.add_noise_to_input(self._config, state, sample, sigma, key)

    def step(
        self,
        state: KarrasVeState,
        model_output: ArrayLike,
        sigma_hat: ArrayLike,
        sigma_prev: ArrayLike,
        sample_hat: ArrayLike,
        return_dict: bool = True,
    ) -> FlaxKarrasVeOutput | tuple[jax.Array, jax.Array, KarrasVeState]:
        """Euler step (see :func:`karras_jax.step`), returning the state as diffusers' Flax did.

        Returns:
          :class:`FlaxKarrasVeOutput` ``(prev_sample, derivative, state, pred_original_sample)``,
          or with ``return_dict=False`` the tuple ``(prev_sample, derivative, state)``.
        """
        out = steps.step(model_output, sigma_hat, sigma_prev, sample_hat)
        return _with_state(out, state, return_dict)

    def step_correct(
        self,
        state: KarrasVeState,
        model_output: ArrayLike,
        sigma_hat: ArrayLike,
        sigma_prev: ArrayLike,
        sample_hat: ArrayLike,
        sample_prev: ArrayLike,
        derivative: ArrayLike,
        return_dict: bool = True,
    ) -> FlaxKarrasVeOutput | tuple[jax.Array, jax.Array, KarrasVeState]:
        """Heun correction (see :func:`karras_jax.step_correct`), returning the state too.

        Returns:
          As :meth:`step`; ``derivative`` is the averaged slope actually used.
        """
        out = steps.step_correct(
            model_output, sigma_hat, sigma_prev, sample_hat, sample_prev, derivative
        )
        return _with_state(out, state, return_dict)

    def scale_model_input(
        self, state: KarrasVeState, sample: ArrayLike, timestep: ArrayLike | None = None
    ) -> jax.Array:
        """Identity (see :func:`karras_jax.scale_model_input`)."""
        return steps.scale_model_input(state, sample, timestep)

    # --- config files ------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | KarrasVeConfig, **overrides: Any
    ) -> KarrasVeScheduler:
        """Builds a scheduler from a diffusers-style dict (or a :class:`KarrasVeConfig`).

        Keyword ``overrides`` replace values of the config, as in diffusers. Unknown keys
        give a warning naming them and are ignored.
        """
        values = config.to_dict() if isinstance(config, KarrasVeConfig) else dict(config)
        values.update(overrides)
        return cls(**config_file.config_from_dict(values, stacklevel=3).to_dict())

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None
    ) -> tuple[KarrasVeScheduler, KarrasVeState]:
        """Loads ``scheduler_config.json`` from a local directory; returns ``(scheduler, state)``.

        Nothing is downloaded: a Hub id that is not a local path raises FileNotFoundError.
        """
        config = config_file.load_config(pretrained_model_name_or_path, subfolder, stacklevel=3)
        scheduler = cls(**config.to_dict())
        return scheduler, scheduler.create_state()

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes ``scheduler_config.json`` (diffusers' format) into ``save_directory``."""
        return config_file.save_config(self._config, save_directory)

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """The same as :meth:`save_pretrained` (diffusers' ``ConfigMixin`` name)."""
        return config_file.save_config(self._config, save_directory)


FlaxKarrasVeScheduler = KarrasVeScheduler
