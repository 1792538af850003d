"""Migration from diffusers: the ``KarrasVeScheduler`` facade and its ``scheduler_config.json`` files."""

from karras_jax.compat.config_file import load_config, save_config
from karras_jax.compat.scheduler import FlaxKarrasVeOutput, FlaxKarrasVeScheduler, KarrasVeScheduler

__all__ = ["FlaxKarrasVeOutput", "FlaxKarrasVeScheduler", "KarrasVeScheduler", "load_config", "save_config"]
