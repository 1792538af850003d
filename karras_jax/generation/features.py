"""Feature statistics of a generation job: ``generate(features=...)``, ``karras-jax fd``.

A feature function maps a batch of samples, as the job writes them (after the model's
``postprocess``), to one feature vector each: ``features(samples (n, *shape)) -> (n, dim)``
(a classifier's hidden layer, :func:`karras_jax.inception_features`, ...). A job with one
writes each shard's ``features`` (float32) instead of its samples, unless it keeps them too,
and once every shard is complete reduces them, in shard order, into ``DIR/stats.npz``
(:class:`~karras_jax.generation.stats.FeatureStats`): the same bytes however often the job
was killed and resumed, on however many processes.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from karras_jax.generation.stats import FeatureStats

__all__ = ["STATS", "stats_of"]

#: The statistics file a job with a feature function writes next to its manifest.
STATS = "stats.npz"

FeatureFn = Callable[[np.ndarray], Any]


def feature_function(features: str | FeatureFn) -> tuple[FeatureFn, str]:
    """``(function, identity)`` of a feature function or its ``package.module:function`` name.

    The identity is what a manifest records: the name (``module:qualname`` for a function).

    Raises:
      ValueError: the name does not load.
      TypeError: ``features`` is neither a name nor callable.
    """
    if isinstance(features, str):
        module_name, _, name = features.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), name) if name else None
        except (ImportError, AttributeError) as err:
            raise ValueError(f"features {features!r}: cannot load {name!r} from {module_name!r}: "
                             f"{err}") from None
        if not callable(function):
            raise ValueError(f"features must name a function as package.module:function, got {features!r}.")
        return function, features
    if not callable(features):
        raise TypeError(f"features must be a function or a package.module:function name, got "
                        f"{type(features).__name__}.")
    name = f"{getattr(features, '__module__', None)}:{getattr(features, '__qualname__', None)}"
    module_name, _, qualname = name.partition(":")
    try:  # the name is what a manifest records: it must lead back to this very function
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not features:
        raise ValueError(f"features must be a module-level function (its package.module:function name is "
                         f"what the job records and a resume compares), got {features!r}; a lambda, a "
                         "closure or a functools.partial has no such name: define a function in a module.")
    return features, name


def features_of(function: FeatureFn, samples: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``function(samples)`` as (n, dim) float32, checked (``dim`` None: any dim >= 1).

    Raises:
      ValueError: the result is not (n, dim) real numbers.
    """
    view = samples.view()
    view.flags.writeable = False  # the samples are written after it: it must not change them
    values = np.asarray(function(view))
    if np.iscomplexobj(values):
        raise ValueError(f"the feature function must return real numbers, got {values.dtype}.")
    if values.ndim != 2 or values.shape[0] != len(samples) or (dim is not None and values.shape[1] != dim) \
            or values.shape[1] < 1 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"the feature function must return ({len(samples)}, {dim or 'dim'}) numbers for "
                         f"{len(samples)} samples, got {values.dtype}{list(values.shape)}.")
    return values.astype(np.float32)


def job_stats(folder: Path, names: Iterable[str], dim: int) -> FeatureStats:
    """The statistics of the ``features`` of the shards ``names``, merged in that order."""
    total = FeatureStats.empty(dim)
    for name in names:
        with np.load(folder / name) as shard:
            total = total.merge(FeatureStats.empty(dim).update(shard["features"]))
    return total


def stats_of(source: str | os.PathLike, features: str | FeatureFn | None = None) -> FeatureStats:
    """The statistics a path holds or implies (what ``karras-jax fd`` compares).

    Args:
      source: A :class:`FeatureStats` file (``.npz``, e.g. a job's ``stats.npz``, or a
        reference set's); a generation folder with a ``stats.npz`` (with ``features`` too: it
        must be the function its manifest names); or, with ``features``, a generation folder
        without one, whose shards hold samples (their features are computed here, shard
        by shard, in shard order) or an ``.npz`` of samples (its ``samples`` array or its only
        array).
      features: A feature function (or its ``package.module:function`` name) for samples.

    Raises:
      ValueError: ``source`` holds neither statistics nor (with ``features``) samples.
      OSError: it cannot be read.
    """
    path = Path(source)
    if path.is_dir():
        if (path / STATS).is_file():
            _check_same_function(path, features)
            return FeatureStats.load(path / STATS)
        if (path / "manifest.json").is_file():  # a job: only when it is complete
            from karras_jax.generation.job import verify

            report = verify(path)
            if not report["ok"]:
                raise ValueError(f"{path} is an unfinished generation job ({len(report['complete'])} of "
                                 f"{report['shards']} shards complete): rerun its generate command first.")
        shards = sorted(path.glob("shard-*.npz"))
        if features is None or not shards:
            raise ValueError(f"{path} holds no {STATS}" + ("" if features is None else " and no shards")
                             + ("; pass a feature function to compute it from the samples"
                                if features is None and shards else "") + ".")
        function, _ = feature_function(features)
        return _stats_from_samples(function, (_samples(shard) for shard in shards))
    if features is None:
        return FeatureStats.load(path)
    function, _ = feature_function(features)
    return _stats_from_samples(function, [_samples(path)])


def _check_same_function(folder: Path, features: str | FeatureFn | None) -> None:
    """Refuses a folder whose statistics come from another feature function than ``features``."""
    if features is None:
        return
    try:
        recorded = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["features"]["function"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record to compare with: a stats file put there by hand
    name = feature_function(features)[1]
    if recorded != name:
        raise ValueError(f"{folder}/{STATS} holds the statistics of features {recorded!r}, not {name!r}.")


def _samples(path: Path) -> np.ndarray:
    return np.asarray(read_array(path, "samples"), np.float32)


def read_array(path: Path, what: str) -> np.ndarray:
    """The ``samples`` array of an ``.npz`` (or its only array), or a ``.npy`` array.

    Raises:
      ValueError: the file is neither, or is damaged (the message names it and ``what``).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as npz:
            names = list(npz.files)
            name = "samples" if "samples" in names else names[0] if len(names) == 1 else None
            if name is None:
                raise ValueError(f"{what} file {path} holds {names}: give it a 'samples' array or one array.")
            return np.asarray(npz[name])
    except ValueError as err:
        if str(err).startswith(what):
            raise
        raise ValueError(f"{what} file {path} is not an .npz or .npy array ({err}).") from None
    except Exception as err:  # noqa: BLE001 - a damaged zip raises many unrelated types
        raise ValueError(f"{what} file {path} cannot be read as an .npz or .npy array "
                         f"({type(err).__name__}: {err}).") from None


def _stats_from_samples(function: FeatureFn, batches: Iterable[np.ndarray]) -> FeatureStats:
    total = None
    for samples in batches:
        values = features_of(function, samples, None if total is None else total.dim)
        part = FeatureStats.empty(values.shape[1]).update(values)
        total = part if total is None else total.merge(part)
    if total is None:
        raise ValueError("no samples to compute statistics from.")
    return total
