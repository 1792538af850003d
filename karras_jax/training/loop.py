"""A resumable training loop: deterministic data order and keys, atomic checkpoints, progress bar.

Everything a step uses is a pure function of the step number: its batch is
``batch_at(step)`` and its key ``jax.random.fold_in(key, step)``. A checkpoint therefore
only needs the train state, the step reached (the data-order position) and the run's key;
a run killed at any moment and started again from its folder repeats nothing and skips
nothing, and ends with bitwise the parameters of an uninterrupted run (same machine and
software: the same compiled program). EMA snapshots for post-hoc EMA are written before the
checkpoint of their step, so the resumed run rewrites exactly those after its checkpoint,
bitwise the same: the snapshot sequence is whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from karras_jax._files import check_writable_folder
from karras_jax._progress import progress_bar
from karras_jax._validation import as_typed_keys, check_arity, check_count
from karras_jax.training.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    json_value,
    load_checkpoint,
    load_model_recipe,
    save_checkpoint,
    save_model_recipe,
)
from karras_jax.training.posthoc_ema import SNAPSHOT_FOLDER, save_ema_snapshot
from karras_jax.training.train_step import TrainState

__all__ = ["TrainingRun", "fit"]


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`fit` returns.

    Attributes:
      state: The train state after the last step.
      losses: ``(num_steps,)`` float32 batch loss of every step of the run (resumed parts
        included; NaN before the step a state without a checkpoint started at).
      resumed_from: The step the run started at: its checkpoint's, else the state's (0 for a
        fresh run).
    """

    state: TrainState
    losses: np.ndarray
    resumed_from: int


def fit(train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]], state: TrainState,
        batch_at: Callable[[int], Any], key: jax.Array, num_steps: int, *,
        folder: str | os.PathLike | None = None, checkpoint_every: int = 100,
        metadata: dict[str, Any] | None = None, batch_size: int | None = None,
        progress: bool = True, label: str = "train ", model: str | None = None,
        model_args: dict[str, Any] | None = None, snapshot_every: int | None = None) -> TrainingRun:
    """Runs ``train_step`` from the state's step to ``num_steps``, resuming from ``folder``.

    Everything is checked before the first step: the arguments, the folder (created like
    ``mkdir -p`` and proven writable), and a checkpoint already in it (readable, the same
    settings, key and model, not past ``num_steps``). No checkpoint or ``model.json`` is
    written or replaced before these checks pass.

    Args:
      train_step: From :func:`karras_jax.make_train_step`.
      state: The initial state (also the structure a checkpoint is read into). Without a
        checkpoint the run starts at ``state.step`` (0 for a fresh ``TrainState``).
      batch_at: ``batch_at(step)`` -> the batch of that step; must be a pure function of
        ``step`` for resumed runs to equal uninterrupted ones.
      key: The run's PRNG key (one key; a raw ``jax.random.PRNGKey`` is wrapped); step ``s``
        uses ``fold_in(key, s)``.
      num_steps: Total number of steps of the run (resumed steps included).
      folder: Where the checkpoint lives, created if missing. If it holds one, the run resumes
        from it (its metadata must equal ``metadata``); a checkpoint is written every
        ``checkpoint_every`` steps and at the end.
      checkpoint_every: Steps between checkpoints.
      metadata: JSON settings stored with the checkpoint and compared on resume (as JSON
        holds them: a tuple equals the list it is read back as). No NaN, and not the key
        ``"losses"`` (the run's own).
      batch_size: For the progress bar's images/s (steps/s without it).
      progress: Show a progress bar (loss, rate, ETA) on stderr.
      label: The progress bar's prefix.
      model: ``"package.module:function"`` that rebuilds the network, recorded with its
        ``model_args`` in ``folder/model.json`` (:func:`karras_jax.save_model_recipe`), so the
        folder loads as a model: ``karras-jax generate --model FOLDER``. ``function(**model_args)``
        returns a :class:`karras_jax.GenerateModel` whose ``params`` give the weights' structure;
        the checkpoint's EMA fills them in.
      model_args: JSON keyword arguments of ``model``.
      snapshot_every: Write the state's EMA profiles (``TrainState.create(...,
        ema_profiles=(0.05, 0.1))``) to ``folder/snapshots/`` after every step that is a
        multiple of it (:func:`karras_jax.save_ema_snapshot`), for post-hoc EMA
        (:func:`karras_jax.reconstruct_ema_from_folder`). A snapshot is written before the
        checkpoint of its step, so a resumed run rewrites (bitwise the same) those after its
        checkpoint: the sequence has every multiple up to ``num_steps`` once. None writes none.

    Returns:
      A :class:`TrainingRun`.

    Raises:
      ValueError: the folder's checkpoint was made with other settings or another model
        (what differs is named) or is already past ``num_steps``, so is the state; the
        checkpoint is truncated or corrupt (named); ``num_steps`` / ``checkpoint_every`` /
        ``batch_size`` / ``snapshot_every`` are not positive ints; ``model`` or
        ``snapshot_every`` is given without ``folder``, ``snapshot_every`` for a state without
        EMA profiles; ``metadata`` holds NaN or ``"losses"``.
      TypeError: ``train_step`` / ``batch_at`` are not callable as used, ``key`` is not one
        PRNG key, ``metadata`` / ``model_args`` are not JSON-serialisable.
      OSError: ``folder`` is a file, lies below one, or cannot be written (named).
    """
    check_arity("train_step", train_step, "train_step(state, batch, key)", 3)
    check_arity("batch_at", batch_at, "batch_at(step)", 1)
    num_steps, checkpoint_every = check_count("num_steps", num_steps), check_count("checkpoint_every",
                                                                                   checkpoint_every)
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size)
    key = _run_key(key)
    metadata = _metadata(metadata)
    if model is not None and folder is None:
        raise ValueError("model is recorded in the checkpoint folder: give folder too.")
    if snapshot_every is not None:
        snapshot_every = check_count("snapshot_every", snapshot_every)
        if folder is None:
            raise ValueError("snapshot_every writes EMA snapshots into the checkpoint folder: give folder "
                             "too.")
        if not getattr(state, "ema_sigma_rels", ()):
            raise ValueError("snapshot_every needs a state that tracks EMA profiles: create it with "
                             "kj.TrainState.create(params, optimizer, ema_profiles=(0.05, 0.1)).")
    if folder is not None:
        folder = check_writable_folder(folder)
        for name in (CHECKPOINT_FILE, MODEL_FILE):
            for stale in folder.glob(f".{name}.*.tmp"):  # left by a kill mid-write
                stale.unlink(missing_ok=True)
        if snapshot_every is not None:
            check_writable_folder(folder / SNAPSHOT_FOLDER)
            for stale in (folder / SNAPSHOT_FOLDER).glob(".snapshot-*.tmp"):
                stale.unlink(missing_ok=True)
    losses = np.full((num_steps,), np.nan, np.float32)
    resuming = folder is not None and (folder / CHECKPOINT_FILE).exists()
    start = 0 if resuming else _state_step(state)
    if start > num_steps:
        raise ValueError(f"num_steps={num_steps} but the state is already at step {start}; pass num_steps "
                         f">= {start} to continue it.")
    if resuming:
        saved = load_checkpoint(folder, state)
        differ = sorted(k for k in set(saved.metadata) | set(metadata)
                        if k != "losses" and saved.metadata.get(k) != metadata.get(k))
        if differ:
            raise ValueError(f"{folder} holds a checkpoint of another run; settings that differ: "
                             + ", ".join(f"{k} (saved {saved.metadata.get(k)!r}, now {metadata.get(k)!r})"
                                         for k in differ))
        if not np.array_equal(jax.random.key_data(saved.key), jax.random.key_data(key)):
            raise ValueError(f"{folder} holds a checkpoint made with another key (seed).")
        state, start = saved.state, saved.position
        if start > num_steps:
            raise ValueError(f"num_steps={num_steps} but the checkpoint in {folder} is at step {start}: "
                             f"pass num_steps >= {start} to continue that run (= {start} returns it as "
                             "saved), or use another folder for a new run.")
        history = np.asarray(saved.metadata.get("losses", []), np.float32)[:num_steps]
        losses[: history.size] = history
    if model is not None:
        _record_model(folder, model, model_args, resuming=resuming)
    unit, scale = ("img", batch_size) if batch_size else ("steps", 1)
    bar = progress_bar(num_steps * scale, unit=unit, initial=start * scale, label=label) if progress else None
    pending: list[tuple[int, jax.Array]] = []

    def drain() -> None:
        for step, loss in pending:
            losses[step] = float(loss)
        pending.clear()

    def save(step: int) -> None:
        drain()
        save_checkpoint(folder, state, position=step, key=key,
                        metadata={**metadata, "losses": [float(v) for v in losses[:step]]})

    for step in range(start, num_steps):
        state, metrics = train_step(state, batch_at(step), jax.random.fold_in(key, step))
        pending.append((step, metrics["loss"]))
        done = step + 1
        if snapshot_every is not None and done % snapshot_every == 0:
            save_ema_snapshot(folder, state)  # before the checkpoint of its step: none is ever skipped
        if folder is not None and (done % checkpoint_every == 0 or done == num_steps):
            save(done)
        if bar is not None and (done % 10 == 0 or done == num_steps):
            drain()  # reading the loss waits for the step: only every 10 steps
            bar.set_postfix(loss=f"{losses[step]:.4g}", refresh=False)
            bar.update(done * scale - bar.n)
    drain()
    if bar is not None:
        bar.close()
    return TrainingRun(state=state, losses=losses, resumed_from=start)


def _metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """``metadata`` as the checkpoint will hold it, checked before any step is run."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"metadata must be a dict with string keys, got {type(metadata).__name__}.")
    if "losses" in metadata:
        raise ValueError("metadata must not hold the key 'losses': the checkpoint stores the run's losses "
                         "under it.")
    return json_value("metadata", metadata, allow_nan=False)


def _run_key(key: Any) -> jax.Array:
    """The run's key as a typed key; a raw ``jax.random.PRNGKey`` is wrapped."""
    try:
        typed = as_typed_keys("key", key, batch=False)
    except (TypeError, ValueError):
        typed = None
    if typed is None or typed.shape != ():
        got = f"shape {key.shape} dtype {key.dtype}" if hasattr(key, "dtype") else type(key).__name__
        raise TypeError(f"key must be one PRNG key, e.g. jax.random.key(seed) (a raw jax.random.PRNGKey is "
                        f"wrapped), got {got}.")
    return typed


def _state_step(state: Any) -> int:
    """The step a run without a checkpoint starts at: ``state.step`` (0 without one)."""
    step = getattr(state, "step", 0)
    if isinstance(step, jax.ShapeDtypeStruct):
        raise ValueError("state is abstract (jax.eval_shape) and the folder holds no checkpoint to fill it "
                         "in: pass a real state, e.g. TrainState.create(params, optimizer).")
    return check_count("state.step", int(np.asarray(step)), minimum=0)


def _record_model(folder: Path, model: str, model_args: dict[str, Any] | None, *, resuming: bool) -> None:
    """Writes the folder's model recipe; a resumed run must name the model its checkpoint holds."""
    args = json_value("model_args", model_args or {})  # as the file will hold them (tuples become lists)
    if resuming and (folder / MODEL_FILE).exists():
        saved = load_model_recipe(folder)
        if saved != (model, args):
            raise ValueError(f"{folder} holds a checkpoint of another model: {MODEL_FILE} records "
                             f"{saved[0]}({saved[1]!r}), now {model}({args!r}).")
        return
    save_model_recipe(folder, model, args)
