"""Checkpoints that survive a kill: one file, written atomically, holding everything a run needs.

A checkpoint is ``flax.serialization`` msgpack of a dict with the train state (params,
optimizer state, EMA, step), the data-order position, the run's PRNG key (as raw key data)
and free-form metadata (JSON: the model's hyperparameters, the run's settings). It is
written to a temporary file in the same folder, fsynced and renamed over the previous
checkpoint, so a kill at any moment leaves either the old or the new checkpoint, never a
half-written one.

Why not orbax-checkpoint: it would be one more dependency (with its own async machinery,
tensorstore and a folder per step) to save a few megabytes that fit in one file; what a
resumable run needs is exactly "all or nothing, then rename", which ``flax.serialization``
plus an atomic rename gives with nothing new installed. Sharded multi-host weights too big
for one host are where orbax would earn its place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from karras_jax._files import atomic_write

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.msgpack"
_FORMAT = "karras_jax.checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
      state: The train state (the type of the ``target`` given to :func:`load_checkpoint`).
      position: The data-order position saved with it (e.g. the number of batches consumed).
      key: The run's PRNG key (typed).
      metadata: The JSON metadata saved with it.
    """

    state: Any
    position: int
    key: jax.Array
    metadata: dict[str, Any]


def save_checkpoint(folder: str | os.PathLike, state: Any, *, position: int, key: jax.Array,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``folder/checkpoint.msgpack`` atomically (replacing the previous one).

    Args:
      folder: An existing folder.
      state: The train state (any pytree ``flax.serialization`` handles).
      position: The data-order position (an int >= 0).
      key: The run's typed PRNG key.
      metadata: JSON-serialisable settings stored with the checkpoint.

    Returns:
      The checkpoint's path.

    Raises:
      OSError: the write failed; the previous checkpoint is intact.
      TypeError: metadata is not JSON-serialisable, or key is not a typed key.
      ValueError: position is not an int >= 0.
    """
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position < 0:
        raise ValueError(f"position must be an int >= 0, got {position!r}.")
    if not jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        raise TypeError("key must be a typed PRNG key (jax.random.key).")
    payload = {
        "format": _FORMAT,
        "state": flax.serialization.to_state_dict(jax.device_get(state)),
        "position": int(position),
        "key_impl": str(jax.random.key_impl(key)),
        "key": np.asarray(jax.random.key_data(key)),
        "metadata": json.dumps(metadata or {}),
    }
    data = flax.serialization.msgpack_serialize(payload)
    return atomic_write(Path(folder) / CHECKPOINT_FILE, lambda f: f.write(data))


def _leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/conv/kernel": (shape, dtype name)}`` of a state dict (any array-like leaf)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        flat[name] = (tuple(np.shape(leaf)), str(getattr(leaf, "dtype", np.asarray(leaf).dtype)))
    return flat


def load_checkpoint(folder: str | os.PathLike, target: Any) -> Checkpoint:
    """Reads ``folder/checkpoint.msgpack`` into the structure of ``target`` (a freshly created state).

    Raises:
      FileNotFoundError: there is no checkpoint in ``folder``.
      ValueError: the file is not a karras_jax checkpoint, or its entries, shapes or dtypes
        differ from ``target``'s (which may be abstract: ``jax.eval_shape`` of the creation).
    """
    path = Path(folder) / CHECKPOINT_FILE
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint in {folder} (expected {path}).") from None
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a karras_jax checkpoint (format {_FORMAT}).")
    expected, saved = _leaves(flax.serialization.to_state_dict(target)), _leaves(payload["state"])
    if expected.keys() != saved.keys():
        missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        raise ValueError(f"{path} does not match the state being restored: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}.")
    for name, (shape, dtype) in expected.items():
        if saved[name] != (shape, dtype):
            raise ValueError(f"{path} does not match the state being restored: {name} is saved as "
                             f"{saved[name][1]}{list(saved[name][0])}, expected {dtype}{list(shape)}.")
    try:
        state = flax.serialization.from_state_dict(target, payload["state"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} does not match the state being restored: {err}") from None
    key = jax.random.wrap_key_data(np.asarray(payload["key"]), impl=payload["key_impl"])
    return Checkpoint(state=state, position=int(payload["position"]), key=key,
                      metadata=json.loads(payload["metadata"]))
