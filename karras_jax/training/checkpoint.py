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

Beside the checkpoint, ``model.json`` (:data:`MODEL_FILE`, written by :func:`save_model_recipe`,
e.g. through ``kj.fit(..., model=...)``) records how to rebuild the network: a
``package.module:function`` and its JSON keyword arguments. With it the folder is a model on its
own: ``karras-jax generate --model DIR`` calls the function and fills in the checkpoint's EMA
weights (:func:`load_params`), the same way for every folder.
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

from karras_jax._files import atomic_write, write_json
from karras_jax._validation import check_count

__all__ = [
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "Checkpoint",
    "load_checkpoint",
    "load_model_recipe",
    "load_params",
    "save_checkpoint",
    "save_model_recipe",
]

CHECKPOINT_FILE = "checkpoint.msgpack"
#: The file beside a checkpoint naming the function that rebuilds its network.
MODEL_FILE = "model.json"
_FORMAT = "karras_jax.checkpoint/1"
_MODEL_FORMAT = "karras_jax.model/1"


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
    position = check_count("position", position, minimum=0)
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
    path, payload = _read(folder)
    state = _restore(path, target, payload["state"], "the state being restored")
    key = jax.random.wrap_key_data(np.asarray(payload["key"]), impl=payload["key_impl"])
    return Checkpoint(state=state, position=int(payload["position"]), key=key,
                      metadata=json.loads(payload["metadata"]))


def _read(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(path, payload)`` of the checkpoint in ``folder``, its format checked."""
    path = Path(folder) / CHECKPOINT_FILE
    try:
        payload = flax.serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint in {folder} (expected {path}).") from None
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a karras_jax checkpoint (format {_FORMAT}).")
    return path, payload


def _restore(path: Path, target: Any, saved_tree: Any, what: str) -> Any:
    """``saved_tree`` (a state dict) read into ``target``'s structure once every leaf matches it."""
    expected, saved = _leaves(flax.serialization.to_state_dict(target)), _leaves(saved_tree)
    if expected.keys() != saved.keys():
        missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        raise ValueError(f"{path} does not match {what}: missing {missing[:5]}, unexpected {extra[:5]}.")
    for name, (shape, dtype) in expected.items():
        if saved[name] != (shape, dtype):
            raise ValueError(f"{path} does not match {what}: {name} is saved as "
                             f"{saved[name][1]}{list(saved[name][0])}, expected {dtype}{list(shape)}.")
    try:
        return flax.serialization.from_state_dict(target, saved_tree)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} does not match {what}: {err}") from None


def load_params(folder: str | os.PathLike, target: Any, *, ema: bool = True) -> Any:
    """The network weights of the checkpoint in ``folder``, read into the structure of ``target``.

    Unlike :func:`load_checkpoint` this needs no optimizer: ``target`` is only the weights'
    structure (real arrays, or ``jax.eval_shape`` of the network's ``init``).

    Args:
      folder: A folder holding a checkpoint of a :class:`karras_jax.TrainState`.
      target: The weights' pytree; its entries, shapes and dtypes must match the checkpoint's.
      ema: The EMA of the weights (what to sample with) if True, else the raw weights.

    Raises:
      FileNotFoundError: there is no checkpoint in ``folder``.
      ValueError: not a checkpoint of a train state, or its weights do not match ``target``.
    """
    path, payload = _read(folder)
    part = "ema" if ema else "params"
    state = payload["state"]
    if not isinstance(state, dict) or part not in state:
        raise ValueError(f"{path} holds no {part!r} weights (not a checkpoint of a kj.TrainState).")
    return _restore(path, target, state[part], f"the weights being restored ({part})")


def _check_function(name: str, function: Any) -> str:
    module, sep, attr = function.partition(":") if isinstance(function, str) else ("", "", "")
    if not (sep and module and attr and all(p.isidentifier() for p in module.split("."))
            and attr.isidentifier()):
        raise ValueError(f"{name} must be 'package.module:function', got {function!r}.")
    return function


def save_model_recipe(folder: str | os.PathLike, function: str,
                      arguments: dict[str, Any] | None = None) -> Path:
    """Writes ``folder/model.json``: the function that rebuilds this folder's network, and its arguments.

    ``function(**arguments)`` must return a :class:`karras_jax.GenerateModel` (or a dict of its
    fields) whose ``params`` give the weights' structure; the checkpoint supplies their values.

    Args:
      folder: An existing folder (the checkpoint's).
      function: ``"package.module:function"``, importable where the folder will be loaded.
      arguments: JSON keyword arguments of ``function`` (e.g. the network's hyperparameters).

    Returns:
      The file's path.

    Raises:
      ValueError: ``function`` is not ``"package.module:function"``.
      TypeError: ``arguments`` is not a dict with string keys, or not JSON-serialisable.
      OSError: the write failed; a previous file is intact.
    """
    _check_function("function", function)
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
        raise TypeError(f"arguments must be a dict with string keys, got {type(arguments).__name__}.")
    record = {"format": _MODEL_FORMAT, "function": function, "arguments": arguments}
    return write_json(Path(folder) / MODEL_FILE, record)


def load_model_recipe(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(function, arguments)`` recorded by :func:`save_model_recipe` in ``folder``.

    Raises:
      FileNotFoundError: ``folder`` has no ``model.json``.
      ValueError: the file is not a model recipe.
    """
    path = Path(folder) / MODEL_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MODEL_FILE} in {folder}: the folder does not say how to rebuild its "
                                "model (kj.fit(..., model='package.module:function') records it).") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from None
    if (not isinstance(record, dict) or record.get("format") != _MODEL_FORMAT
            or not isinstance(record.get("arguments"), dict)):
        raise ValueError(f"{path} is not a karras_jax model recipe (format {_MODEL_FORMAT}).")
    return _check_function(f"{path}'s function", record.get("function")), record["arguments"]
