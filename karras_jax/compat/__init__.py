"""Migration from diffusers: the ``KarrasVeScheduler`` facade, its step API, ``scheduler_config.json``."""

from karras_jax.compat.config_file import load_config, save_config
from karras_jax.compat.scheduler import (
    FlaxKarrasVeOutput,
    FlaxKarrasVeScheduler,
    KarrasVeScheduler,
    SchedulerConfig,
)
from karras_jax.compat.steps import (
    KarrasVeOutput,
    add_noise_to_input,
    scale_model_input,
    step,
    step_correct,
)

__all__ = [
    "FlaxKarrasVeOutput",
    "FlaxKarrasVeScheduler",
    "KarrasVeOutput",
    "KarrasVeScheduler",
    "SchedulerConfig",
    "add_noise_to_input",
    "load_config",
    "save_config",
    "scale_model_input",
    "step",
    "step_correct",
]
