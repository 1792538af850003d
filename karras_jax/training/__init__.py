"""Training with optax: Table 1's losses, a pure train step, the weights' EMA, checkpoints, post-hoc EMA."""

from karras_jax.training.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    Checkpoint,
    load_checkpoint,
    load_model_recipe,
    load_params,
    save_checkpoint,
    save_model_recipe,
)
from karras_jax.training.ema import ema_decay, ema_gamma, ema_update
from karras_jax.training.loop import TrainingRun, fit
from karras_jax.training.loss import LOSSES, edm_loss, loss_weight, training_sigmas
from karras_jax.training.posthoc_ema import (
    SNAPSHOT_FOLDER,
    EmaSnapshot,
    list_ema_snapshots,
    load_ema_snapshots,
    posthoc_ema_coefficients,
    reconstruct_ema,
    reconstruct_ema_from_folder,
    save_ema_snapshot,
    write_posthoc_ema,
)
from karras_jax.training.train_step import TrainState, make_train_step

__all__ = [
    "CHECKPOINT_FILE",
    "LOSSES",
    "MODEL_FILE",
    "SNAPSHOT_FOLDER",
    "Checkpoint",
    "EmaSnapshot",
    "TrainState",
    "TrainingRun",
    "edm_loss",
    "ema_decay",
    "ema_gamma",
    "ema_update",
    "fit",
    "list_ema_snapshots",
    "load_checkpoint",
    "load_ema_snapshots",
    "load_model_recipe",
    "load_params",
    "make_train_step",
    "posthoc_ema_coefficients",
    "reconstruct_ema",
    "reconstruct_ema_from_folder",
    "save_checkpoint",
    "save_ema_snapshot",
    "save_model_recipe",
    "loss_weight",
    "training_sigmas",
    "write_posthoc_ema",
]
