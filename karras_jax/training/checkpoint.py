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
from jax.experimental import multihost_utils

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
      metadata: JSON-serialisable settings stored with the checkpoint (tuples are read back
        as lists).

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
        "state": flax.serialization.to_state_dict(jax.tree_util.tree_map(to_host, state)),
        "position": int(position),
        "key_impl": str(jax.random.key_impl(key)),
        "key": np.asarray(jax.random.key_data(key)),
        "metadata": json.dumps(json_value("metadata", metadata or {})),
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
      OSError: the file cannot be read (a folder in its place, no permission); the path is named.
      ValueError: the file is truncated, corrupt or not a karras_jax checkpoint (the message
        names it and what is wrong), or its entries, shapes or dtypes differ from ``target``'s
        (which may be abstract: ``jax.eval_shape`` of the creation).

    A leaf of ``target`` placed with a ``NamedSharding`` (or a ``jax.ShapeDtypeStruct``
    carrying one) is loaded onto that sharding, so a state trained sharded resumes sharded;
    ``jax.eval_shape`` of a sharded state gives such structs on explicit mesh axes (their
    abstract mesh is filled in from ``jax.set_mesh``), but none on automatic axes, where the
    leaves then load as host arrays (which a sharded train step replicates).
    """
    path, payload = _read(folder)
    position, key, metadata = _fields(path, payload)
    state = restore_tree(path, target, payload["state"], "the state being restored")
    return Checkpoint(state=state, position=position, key=key, metadata=metadata)


_DAMAGED = "Restore a copy, or delete it to start over."


def read_msgpack(path: Path, what: str, file_format: str, damaged: str) -> dict[str, Any]:
    """The payload of one of this package's msgpack files (a checkpoint, an EMA snapshot).

    Raises:
      OSError: ``path`` cannot be read (``FileNotFoundError`` if it is missing), naming it.
      ValueError: it is truncated or corrupt (``damaged`` says what to do), or of another
        ``format`` than ``file_format``.
    """
    try:
        data = path.read_bytes()
    except OSError as err:  # missing, a folder of that name, no permission, ...
        raise OSError(err.errno, f"cannot read the {what} {path}: {err.strerror or err}") from None
    try:
        payload = flax.serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"{path} is not a readable {what}: the file is truncated or corrupt "
                         f"({len(data)} bytes; msgpack: {err}). {damaged}") from None
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ValueError(f"{path} is not a karras_jax {what} (format {file_format}).")
    return payload


def _read(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(path, payload)`` of the checkpoint in ``folder``, its format checked."""
    path = Path(folder) / CHECKPOINT_FILE
    try:
        payload = read_msgpack(path, "checkpoint", _FORMAT, _DAMAGED)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint in {folder} (expected {path}).") from None
    missing = [k for k in ("state", "position", "key_impl", "key", "metadata") if k not in payload]
    if missing:
        raise ValueError(f"{path} is a damaged checkpoint: it lacks {', '.join(missing)}. {_DAMAGED}")
    return path, payload


def _fields(path: Path, payload: dict[str, Any]) -> tuple[int, jax.Array, dict[str, Any]]:
    """``(position, key, metadata)`` of a checkpoint's payload, each checked."""
    position = payload["position"]
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"{path} is a damaged checkpoint: its position is {position!r}, not an int >= 0. "
                         + _DAMAGED)
    try:
        key = jax.random.wrap_key_data(np.asarray(payload["key"]), impl=str(payload["key_impl"]))
        if key.shape != ():
            raise ValueError(f"one key expected, got shape {key.shape}")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged checkpoint: its PRNG key cannot be read ({err}). "
                         + _DAMAGED) from None
    try:
        metadata = json.loads(payload["metadata"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged checkpoint: its metadata is not JSON ({err}). "
                         + _DAMAGED) from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is a damaged checkpoint: its metadata is a {type(metadata).__name__}, "
                         f"not a JSON object. {_DAMAGED}")
    return position, key, metadata


def checkpoint_fields(folder: str | os.PathLike) -> tuple[int, jax.Array, dict[str, Any]]:
    """``(position, key, metadata)`` of the checkpoint in ``folder``, checked (as by ``load_checkpoint``)."""
    return _fields(*_read(folder))


def restore_tree(path: Path, target: Any, saved_tree: Any, what: str) -> Any:
    """``saved_tree`` (a state dict) read into ``target``'s structure once every leaf matches it.

    Raises:
      ValueError: an entry is missing or unexpected, or has another shape or dtype (the message
        names ``path`` and ``what``).
    """
    expected, saved = _leaves(flax.serialization.to_state_dict(target)), _leaves(saved_tree)
    if expected.keys() != saved.keys():
        missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        raise ValueError(f"{path} does not match {what}: missing {missing[:5]}, unexpected {extra[:5]}.")
    for name, (shape, dtype) in expected.items():
        if saved[name] != (shape, dtype):
            raise ValueError(f"{path} does not match {what}: {name} is saved as "
                             f"{saved[name][1]}{list(saved[name][0])}, expected {dtype}{list(shape)}.")
    try:
        restored = flax.serialization.from_state_dict(target, saved_tree)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} does not match {what}: {err}") from None
    return jax.tree_util.tree_map(_placed_like, target, restored)


def to_host(leaf: Any) -> Any:
    """A leaf as a host array: a sharded one gathered (from every process, on a pod)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return multihost_utils.process_allgather(leaf, tiled=True)
    return jax.device_get(leaf)


def _placed_like(template: Any, value: Any) -> Any:
    """``value`` on ``template``'s ``NamedSharding``, if it has one: a sharded state loads sharded.

    The template may be an array or a ``jax.ShapeDtypeStruct`` with ``sharding=``; each
    device (each process, on a pod) receives only its own pieces.
    """
    sharding = getattr(template, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or not hasattr(value, "shape"):
        return value
    if isinstance(sharding.mesh, jax.sharding.AbstractMesh):  # jax.eval_shape on explicit axes
        mesh = jax.sharding.get_mesh()  # the devices come from `with jax.set_mesh(mesh)`, if any
        if mesh.empty or mesh.abstract_mesh != sharding.mesh:
            raise ValueError(
                f"the template's leaf of shape {tuple(template.shape)} is placed on an abstract mesh "
                f"({dict(sharding.mesh.shape)}, as jax.eval_shape gives on explicit axes), which names "
                "no devices: load inside `with jax.set_mesh(mesh):`, or pass the state itself or "
                "jax.ShapeDtypeStructs with sharding=NamedSharding(mesh, spec).")
        sharding = jax.sharding.NamedSharding(mesh, sharding.spec)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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
      OSError: the file cannot be read.
      ValueError: a truncated or corrupt file, not a checkpoint of a train state, or its
        weights do not match ``target``.
    """
    path, payload = _read(folder)
    _fields(path, payload)
    part = "ema" if ema else "params"
    state = payload["state"]
    if not isinstance(state, dict) or part not in state:
        raise ValueError(f"{path} holds no {part!r} weights (not a checkpoint of a kj.TrainState).")
    return restore_tree(path, target, state[part], f"the weights being restored ({part})")


def json_value(name: str, value: Any, *, allow_nan: bool = True) -> Any:
    """``value`` as a JSON file will hold it (tuples become lists), refused before anything is written.

    Raises:
      TypeError: ``value`` is not JSON-serialisable (the message names ``name``).
      ValueError: ``value`` holds NaN or inf and ``allow_nan`` is False.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=allow_nan))
    except TypeError as err:
        raise TypeError(f"{name} must be JSON-serialisable: {err}.") from None
    except ValueError:  # only allow_nan=False raises it
        raise ValueError(f"{name} must not hold NaN or inf (it is compared on resume, and NaN never "
                         f"equals itself), got {value!r}.") from None


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
    record = {"format": _MODEL_FORMAT, "function": function, "arguments": json_value("arguments", arguments)}
    return write_json(Path(folder) / MODEL_FILE, record)


def load_model_recipe(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(function, arguments)`` recorded by :func:`save_model_recipe` in ``folder``.

    Raises:
      FileNotFoundError: ``folder`` has no ``model.json``.
      OSError: the file cannot be read.
      ValueError: the file is not valid JSON (truncated, corrupt) or not a model recipe; the
        message names it and what is wrong.
    """
    path = Path(folder) / MODEL_FILE
    rewrite = "Rewrite it with kj.save_model_recipe."
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MODEL_FILE} in {folder}: the folder does not say how to rebuild its "
                                "model (kj.fit(..., model='package.module:function') records it).") from None
    except OSError as err:
        raise OSError(err.errno, f"cannot read the model recipe {path}: {err.strerror or err}") from None
    try:
        record = json.loads(text)
    except ValueError as err:  # invalid JSON or UTF-8
        raise ValueError(f"{path} is not readable JSON (truncated or corrupt: {err}). {rewrite}") from None
    if not isinstance(record, dict) or record.get("format") != _MODEL_FORMAT:
        raise ValueError(f"{path} is not a karras_jax model recipe (a JSON object with format "
                         f"{_MODEL_FORMAT!r}). {rewrite}")
    if not isinstance(record.get("arguments"), dict):
        raise ValueError(f"{path} is a damaged model recipe: its arguments are "
                         f"{type(record.get('arguments')).__name__}, not a JSON object. {rewrite}")
    return _check_function(f"{path}'s function", record.get("function")), record["arguments"]
