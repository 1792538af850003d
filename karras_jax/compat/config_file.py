"""Reading and writing ``scheduler_config.json`` in diffusers' format.

The file is plain JSON: ``_class_name``, ``_diffusers_version`` and the six
hyperparameters. Nothing in it is ever evaluated. Files written by diffusers'
``KarrasVeScheduler`` or ``FlaxKarrasVeScheduler`` load here, and files written here load
in diffusers' own ``KarrasVeScheduler.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from karras_jax._files import atomic_write
from karras_jax.config import FIELDS, KarrasVeConfig

__all__ = ["load_config", "save_config"]

CONFIG_NAME = "scheduler_config.json"
CLASS_NAMES = ("KarrasVeScheduler", "FlaxKarrasVeScheduler")
# The diffusers release whose KarrasVeScheduler we mirror; diffusers parses this field.
DIFFUSERS_VERSION = "0.42.1"


def config_from_dict(
    values: dict[str, Any], source: str = "config", stacklevel: int = 2
) -> KarrasVeConfig:
    """Builds a config from a diffusers-style dict.

    Args:
      values: The six keys (any missing one takes its default); ``_``-prefixed
        bookkeeping keys such as ``_class_name`` are checked or ignored.
      source: Where the dict came from, for error messages (a file path).

    Raises:
      TypeError: values is not a dict, or a value is not a real number.
      ValueError: a wrong ``_class_name`` or a value out of range.
    """
    if not isinstance(values, dict):
        raise TypeError(
            f"{source}: expected a JSON object of scheduler settings, got {type(values).__name__}."
        )
    class_name = values.get("_class_name")
    if class_name is not None and class_name not in CLASS_NAMES:
        raise ValueError(
            f"{source}: _class_name is {class_name!r}; expected one of {CLASS_NAMES}. "
            "This file belongs to another scheduler."
        )
    unknown = sorted(k for k in values if k not in FIELDS and not str(k).startswith("_"))
    if unknown:
        warnings.warn(f"{source}: ignoring unknown keys {unknown}.", UserWarning, stacklevel=stacklevel)
    kwargs = {}
    for key in FIELDS:
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"{source}: {key} must be a number, got {type(value).__name__} {value!r}."
            )
        try:
            number = float(value)
        except OverflowError:  # a JSON integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{source}: {key} must be finite, got {value!r}.")
        kwargs[key] = number
    try:
        return KarrasVeConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{source}: {err}") from None


def _config_file(path: str | os.PathLike, subfolder: str | None) -> Path:
    base = Path(path)
    if subfolder:
        base = base / subfolder
    if base.is_dir():
        base = base / CONFIG_NAME
    if not base.is_file():
        hint = ""
        if not subfolder and (Path(path) / "scheduler" / CONFIG_NAME).is_file():
            hint = ' This looks like a pipeline folder: pass subfolder="scheduler".'
        elif not Path(path).exists() and "/" in str(path) and not str(path).startswith((".", "/")):
            hint = " karras_jax reads local files only; download the Hub repo first."
        raise FileNotFoundError(f"{base}: no {CONFIG_NAME} found there.{hint}")
    return base


def load_config(
    path: str | os.PathLike, subfolder: str | None = None, stacklevel: int = 2
) -> KarrasVeConfig:
    """Reads a config from a directory holding ``scheduler_config.json`` (or the file itself).

    Raises:
      FileNotFoundError: the path (or a Hub id, which is not downloaded) does not exist.
      ValueError: malformed JSON, a wrong ``_class_name``, or a value out of range.
      TypeError: a value of the wrong type.
    """
    file = _config_file(path, subfolder)
    try:
        text = file.read_text(encoding="utf-8")
        values = json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise ValueError(f"{file}: not valid JSON ({err}).") from None
    except RecursionError:
        raise ValueError(f"{file}: not a scheduler config (JSON nested too deeply).") from None
    return config_from_dict(values, source=str(file), stacklevel=stacklevel + 1)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def save_config(config: KarrasVeConfig, directory: str | os.PathLike) -> Path:
    """Writes ``scheduler_config.json`` into ``directory`` (created if needed); returns its path.

    The write is atomic: a failure leaves any previous file unchanged.

    Raises:
      OSError: the folder cannot be created or the file cannot be written (naming it).
    """
    values = config.to_dict()
    payload = {"_class_name": "KarrasVeScheduler", "_diffusers_version": DIFFUSERS_VERSION, **values}
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return atomic_write(folder / CONFIG_NAME, lambda f: f.write(text.encode("utf-8")))
