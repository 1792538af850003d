"""karras_jax: Karras et al. (2022) stochastic sampling (EDM Algorithm 2) in JAX.

Pure step functions with diffusers' ``KarrasVeScheduler`` shape, immutable pytree state,
pluggable solvers, and a whole-loop sampler that compiles to one XLA program.
"""

from karras_jax._noise import initial_noise
from karras_jax.compat import (
    FlaxKarrasVeOutput,
    FlaxKarrasVeScheduler,
    KarrasVeScheduler,
    load_config,
    save_config,
)
from karras_jax.config import KarrasVeConfig
from karras_jax.models import (
    PRECONDITIONINGS,
    Guidance,
    UNet,
    autoguidance,
    classifier_free_guidance,
    discrete_sigmas,
    discrete_time_denoiser,
    precondition,
    precondition_coefficients,
)
from karras_jax.sampler import Trajectory, make_sampler, sample
from karras_jax.schedules import (
    SCHEDULES,
    custom_sigmas,
    diffusers_sigmas,
    iddpm_levels,
    iddpm_sigmas,
    karras_sigmas,
    ve_sigmas,
    vp_sigma,
    vp_sigmas,
)
from karras_jax.sharding import batch_sharding, make_sharded_sampler, sample_sharded
from karras_jax.solvers import SOLVERS, Levels, Solver, dpmpp_2m, euler, get_solver, heun
from karras_jax.state import KarrasVeState, set_timesteps
from karras_jax.steps import (
    KarrasVeOutput,
    add_noise_to_input,
    churn_gamma,
    scale_model_input,
    step,
    step_correct,
)
from karras_jax.training import (
    CHECKPOINT_FILE,
    LOSSES,
    Checkpoint,
    TrainingRun,
    TrainState,
    edm_loss,
    ema_decay,
    ema_gamma,
    ema_update,
    fit,
    load_checkpoint,
    loss_weight,
    make_train_step,
    save_checkpoint,
    training_sigmas,
)

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_FILE",
    "LOSSES",
    "PRECONDITIONINGS",
    "SCHEDULES",
    "SOLVERS",
    "Checkpoint",
    "FlaxKarrasVeOutput",
    "FlaxKarrasVeScheduler",
    "Guidance",
    "KarrasVeConfig",
    "KarrasVeOutput",
    "KarrasVeScheduler",
    "KarrasVeState",
    "Levels",
    "Solver",
    "TrainState",
    "TrainingRun",
    "Trajectory",
    "UNet",
    "__version__",
    "add_noise_to_input",
    "autoguidance",
    "batch_sharding",
    "churn_gamma",
    "classifier_free_guidance",
    "custom_sigmas",
    "diffusers_sigmas",
    "discrete_sigmas",
    "discrete_time_denoiser",
    "dpmpp_2m",
    "edm_loss",
    "ema_decay",
    "ema_gamma",
    "ema_update",
    "fit",
    "euler",
    "get_solver",
    "heun",
    "iddpm_levels",
    "iddpm_sigmas",
    "initial_noise",
    "karras_sigmas",
    "load_checkpoint",
    "load_config",
    "loss_weight",
    "make_sampler",
    "make_sharded_sampler",
    "make_train_step",
    "precondition",
    "precondition_coefficients",
    "sample",
    "sample_sharded",
    "save_checkpoint",
    "save_config",
    "scale_model_input",
    "set_timesteps",
    "step",
    "step_correct",
    "training_sigmas",
    "ve_sigmas",
    "vp_sigma",
    "vp_sigmas",
]
