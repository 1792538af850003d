"""``kj.generate``: many seeds to sharded files, resumable after a kill, on many devices and hosts.

Layout of ``DIR``:

- ``manifest.json``: what the job is (model identity, seeds, sampler config, levels,
  schedule, solver, guidance, sample shape, shard size and the shard table), the package
  versions of the run that created it, and, once every shard is written, the SHA-256 of
  each shard file.
- ``shard-XXXXXX.npz``: shard i holds the i-th run of ``shard_size`` seeds (in ascending
  order): arrays ``seeds`` (int64) and ``samples`` (float32, ``(n, *sample_shape)``, the
  shape after the model's ``postprocess``, as the manifest records it).
- with ``png=True``, one PNG per sample in ``DIR/{seed - seed % 1000:06d}/{seed:06d}.png``.
- with a feature function (``features=``), each shard holds ``features`` (float32, (n, dim))
  instead of ``samples`` (or beside them, ``keep_samples=True``), and once every shard is
  complete ``stats.npz`` holds their :class:`~karras_jax.FeatureStats`
  (:mod:`karras_jax.generation.features`).
- while a job runs, ``progress-pN.json`` (process N's finished shards and checksums).

Every file is written atomically (temporary file in the same folder, fsync, rename).

What a resume trusts: the folder only through a manifest that parses and matches the schema
(:func:`_manifest_problem`: the keys, their types, and seeds, shard size and shard count that
agree); a damaged or foreign manifest, or shards without a manifest, are refused with one
message naming the file, what is wrong and how to start over. A folder holding another job is
refused, naming what differs. A shard is kept only if its bytes match the SHA-256 recorded
when it was written (in the manifest, or in a ``progress-pN.json`` of an unfinished run), it
loads (each ``.npz`` member carries a CRC-32), holds exactly its seeds with the right shapes
and is finite; anything else is generated again. A damaged progress record vouches for
nothing: its shards are generated again. A killed run, resumed, leaves exactly the files of
an uninterrupted run.

Non-finite samples: a NaN or inf sample stops the job with a ``FloatingPointError`` naming
the seeds; its shard is not written, so ``verify`` and a resume agree that it is missing.

Memory does not grow with the number of seeds: seeds are held as runs
(:class:`~karras_jax.generation.seeds.SeedRuns`) and each shard's seeds are taken by position.
What does grow is per shard: the checksum table (about 100 bytes a shard).

Multi-host: every process runs the same call; shard i is written by process
``i % process_count``; process 0 writes the final manifest once all processes are done.
Sample s depends only on seed s (:func:`seed_keys` and the noise-stream contract), so the
union of the shards equals a single-process run.

Where the sampler runs (:func:`_placement`): weights placed with ``NamedSharding`` on a mesh
(:func:`~karras_jax.generation.models.weights_mesh`) are sampled on that mesh as placed, the
batch split over the model's ``batch_axis``; unplaced weights are replicated over this
process's devices (the batch split over all of them). A mesh of this process's devices (or
unplaced weights) runs each process on its own shards, with no collectives between
processes. A mesh that spans every process runs one global program: every process plans the
same shards (a resume checks that they agree), takes part in sampling every one of them, and
writes its own.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from karras_jax._chunks import padded_chunks
from karras_jax._files import check_folder_path, check_writable_folder, write_json
from karras_jax._progress import progress_bar
from karras_jax._validation import check_count
from karras_jax.config import KarrasVeConfig
from karras_jax.generation._init_images import init_identity, init_images
from karras_jax.generation._writer import PNG_HINT, ShardWriter
from karras_jax.generation.features import STATS, feature_function, features_of, job_stats
from karras_jax.generation.models import GenerateModel, gather, load_generate_model, weights_mesh
from karras_jax.generation.seeds import SeedRuns, seed_keys, seed_runs
from karras_jax.generation.stats import FeatureStats
from karras_jax.models import Guidance, classifier_free_guidance
from karras_jax.sampler import check_start_step, make_sampler
from karras_jax.sharding import make_sharded_sampler
from karras_jax.solvers import get_solver
from karras_jax.state import set_timesteps

__all__ = ["GenerateResult", "MANIFEST", "generate", "verify"]

MANIFEST = "manifest.json"
_FORMAT = "karras_jax.generation/1"
# job fields that a resume must match (the rest: versions, checksums)
_JOB_FIELDS = ("format", "model", "seeds", "num_seeds", "sample_shape", "dtype", "config", "steps",
               "schedule", "sigmas", "solver", "eta", "guidance", "shard_size", "num_shards", "init",
               "strength", "features")


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` did in this process.

    Attributes:
      folder: The output folder.
      shards: Number of shards of the job.
      written: Shards this process generated and wrote now.
      skipped: Shards this process found complete and kept.
      seconds: Wall time of the call.
      samples_per_s: Samples generated per second by this process (0 if none).
    """

    folder: Path
    shards: int
    written: int
    skipped: int
    seconds: float
    samples_per_s: float


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {}
    for name in ("karras-jax", "jax", "jaxlib", "flax", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}.npz"


_SHARD = re.compile(r"shard-(\d{6,})\.npz")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUMBER = (int, float)


def _positive(value: int) -> bool | str:
    return value >= 1 or "is below 1"


def _shape(value: list) -> bool | str:
    return all(_is(x, int) and x >= 1 for x in value) or "is not a list of ints >= 1"


def _levels(value: list) -> bool | str:
    """The levels: numbers, the flow schedule's infinite sigma_0 written as "inf"."""
    return _numbers([x for x in value if x != "inf"])


def _numbers(value: list | dict) -> bool | str:
    values = value.values() if isinstance(value, dict) else value
    return all(_is(x, *_NUMBER) for x in values) or "holds a value that is not a number"


def _checksum_table(value: dict) -> bool | str:
    return (all(_SHARD.fullmatch(k) and isinstance(x, str) and _SHA256.fullmatch(x) for k, x in value.items())
            or "is not a table of shard names to SHA-256s")


# manifest.json's schema: each key, the types its value may have, and what else must hold of it
_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "format": ((str,), None), "model": ((str,), None), "seeds": ((str,), None),
    "num_seeds": ((int,), _positive), "sample_shape": ((list,), _shape),
    "dtype": ((str,), lambda v: v == "float32" or "is not 'float32'"),
    "config": ((dict,), _numbers), "steps": ((int,), _positive), "schedule": ((str,), None),
    "sigmas": ((list,), _levels), "solver": ((str,), None), "guidance": ((int, float, type(None)), None),
    "shard_size": ((int,), _positive), "num_shards": ((int,), _positive), "versions": ((dict,), None),
    "checksums": ((dict,), _checksum_table),
}


def _is(value: Any, *types: type) -> bool:
    """``isinstance`` for JSON values: a bool is not a number."""
    return isinstance(value, types) and not isinstance(value, bool)


def _manifest_problem(manifest: Any) -> str | None:
    """None if ``manifest`` (parsed JSON) is a manifest this version reads, else what is wrong with it."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    found = manifest.get("format")
    if found != _FORMAT:
        return (f"its format is {found!r}, not {_FORMAT!r}" if isinstance(found, str) and
                found.startswith(_FORMAT.split("/")[0]) else "it is not a karras_jax generation manifest")
    for key, (types, check) in _SCHEMA.items():
        if key not in manifest:
            return f"it has no {key!r}"
        value = manifest[key]
        if not _is(value, *types):
            return f"{key!r} is {type(value).__name__}, not {' or '.join(t.__name__ for t in types)}"
        verdict = True if check is None else check(value)
        if verdict is not True:
            return f"{key!r} {verdict}"
    optional = _optional_problem(manifest)
    if optional is not None:
        return optional
    try:
        seeds = seed_runs(manifest["seeds"])
    except ValueError as err:
        return f"'seeds': {err}"
    shards = -(-len(seeds) // manifest["shard_size"])
    if len(seeds) != manifest["num_seeds"] or shards != manifest["num_shards"]:
        return "'seeds', 'num_seeds', 'shard_size' and 'num_shards' disagree"
    checksums = manifest["checksums"]
    indices = {int(_SHARD.fullmatch(name)[1]) for name in checksums}
    if checksums and (len(indices) != manifest["num_shards"] or max(indices) >= manifest["num_shards"]):
        return "'checksums' does not list exactly the job's shards"
    return None


def _optional_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the keys only some jobs have (eta, init, strength, features), or None."""
    eta, init, strength, features = (manifest.get(k) for k in ("eta", "init", "strength", "features"))
    if "eta" in manifest and not (_is(eta, int, float) and eta >= 0):
        return "'eta' is not a number >= 0"
    if ("init" in manifest) != ("strength" in manifest):
        return "'init' and 'strength' come together"
    if "init" in manifest and not (
            isinstance(init, dict) and _is(init.get("count"), int) and init["count"] >= 1
            and isinstance(init.get("sha256"), str) and _SHA256.fullmatch(init["sha256"])):
        return "'init' is not {count: int >= 1, sha256: hex digest}"
    if "strength" in manifest and not (_is(strength, int, float) and 0 <= strength <= 1):
        return "'strength' is not a number in [0, 1]"
    if "features" in manifest and not (
            isinstance(features, dict) and isinstance(features.get("function"), str)
            and _is(features.get("dim"), int) and features["dim"] >= 1
            and isinstance(features.get("samples"), bool)):
        return "'features' is not {function: str, dim: int >= 1, samples: bool}"
    return None


def _start_over(folder: Path) -> str:
    return (f"nothing in {folder} can be trusted; to start over, delete {folder} (or move it away) "
            "or write to another folder")


def _load_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, checked against the schema; None if the folder has none.

    Raises:
      ValueError: the manifest is not valid JSON or not of the schema, or the folder holds
        shards or progress records but no manifest (nothing vouches for them). The message
        names the file, what is wrong and how to start over.
      OSError: the manifest exists but cannot be read (the message names it).
    """
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if folder.is_dir():
            ours = sorted(p.name for p in folder.iterdir() if _SHARD.fullmatch(p.name)
                          or p.name.startswith("progress-p"))
            if ours:
                raise ValueError(f"{folder} holds {ours[0]}{' and more' if len(ours) > 1 else ''} but no "
                                 f"{MANIFEST}, so no job vouches for them; {_start_over(folder)}.") from None
        return None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not text ({err.reason}); {_start_over(folder)}.") from None
    except OSError as err:
        raise OSError(err.errno, f"cannot read {path}: {err.strerror}") from None
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {_start_over(folder)}.") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{path} is damaged or foreign: {problem}; {_start_over(folder)}.")
    return manifest


def _progress_records(folder: Path) -> dict[str, str]:
    """The checksums in the ``progress-pN.json`` files; a damaged file counts as empty.

    They are this job's own notes (the manifest was checked first): a damaged one only means
    its shards are generated again, never that they are kept unchecked.
    """
    known: dict[str, str] = {}
    for record in sorted(folder.glob("progress-p*.json")):
        try:
            values = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(values, dict) and all(isinstance(k, str) and _SHARD.fullmatch(k) and isinstance(v, str)
                                            and _SHA256.fullmatch(v) for k, v in values.items()):
            known.update(values)
    return known


def _check_shard(path: Path, seeds: np.ndarray, shape: tuple[int, ...], checksum: str | None,
                 features: dict[str, Any] | None = None) -> str | None:
    """None if the shard at ``path`` is complete and right, else what is wrong with it.

    ``features``: the manifest's record of a feature function (the shard then holds
    ``features`` (n, dim), and ``samples`` only if it keeps them).

    A shard is right only when its bytes match ``checksum``, the SHA-256 recorded when it was
    written (by the manifest or a progress record): a shard nothing vouches for is never kept.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if checksum is None:
        return "no checksum recorded for it"
    if hashlib.sha256(data).hexdigest() != checksum:
        return "checksum differs from the one recorded when it was written"
    try:
        import io

        expected = {"seeds": None}
        if features is None or features["samples"]:
            expected["samples"] = (len(seeds), *shape)
        if features is not None:
            expected["features"] = (len(seeds), features["dim"])
        with np.load(io.BytesIO(data)) as npz:
            if sorted(npz.files) != sorted(expected):
                return f"holds {sorted(npz.files)}, not {' and '.join(sorted(expected))}"
            arrays = {name: npz[name] for name in expected}  # reading checks each member's CRC-32
    except Exception as err:  # noqa: BLE001 - a corrupt zip raises many unrelated types
        return f"corrupt ({type(err).__name__}: {err})"
    saved = arrays.pop("seeds")
    if saved.dtype != np.int64 or not np.array_equal(saved, seeds):
        return "holds other seeds"
    for name, values in arrays.items():
        if values.dtype != np.float32 or values.shape != expected[name]:
            return f"{name} are {values.dtype}{list(values.shape)}, expected float32{list(expected[name])}"
        if not np.all(np.isfinite(values)):
            return f"{name} are not all finite"
    return None


def _written_shape(model: GenerateModel) -> tuple[int, ...]:
    """One written sample's shape: the sampler's, after the model's ``postprocess``."""
    if model.postprocess is None:
        return tuple(model.sample_shape)
    return tuple(np.shape(model.postprocess(np.zeros((1, *model.sample_shape), np.float32)))[1:])


def _job(model: GenerateModel, seeds: SeedRuns, config: KarrasVeConfig, state: Any, steps: int,
         schedule: str, solver: str, eta: float | None, guidance: float | None,
         shard_size: int, init: np.ndarray | None, strength: float | None,
         features: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "model": model.identity,
        "seeds": str(seeds),
        "num_seeds": len(seeds),
        "sample_shape": list(_written_shape(model)),
        "dtype": "float32",
        "config": {f.name: float(getattr(config, f.name)) for f in dataclasses.fields(config)},
        "steps": int(steps),
        "schedule": schedule,
        # JSON has no infinity: the flow schedule's sigma_0 = inf is written as the string "inf"
        "sigmas": [float(s) if np.isfinite(s) else "inf" for s in np.asarray(state.sigmas)],
        "solver": solver,
        **({} if eta is None else {"eta": eta}),  # absent: the solver's default (older manifests too)
        "guidance": guidance,
        "shard_size": int(shard_size),
        "num_shards": -(-len(seeds) // shard_size),
        # image-to-image only (absent: from noise; older manifests too)
        **({} if init is None else {"init": init_identity(init), "strength": strength}),
        **({} if features is None else {"features": features}),  # with a feature function only
    }


def _differences(saved: dict[str, Any], job: dict[str, Any]) -> list[str]:
    out = []
    for key in _JOB_FIELDS:
        if saved.get(key) != job.get(key):
            if key == "config" and isinstance(saved.get(key), dict):
                out += [f"config.{k} (folder {saved[key].get(k)!r}, now {job[key].get(k)!r})"
                        for k in sorted(set(saved[key]) | set(job[key]))
                        if saved[key].get(k) != job[key].get(k)]
            elif key == "sigmas":
                out.append("sigmas (the noise levels)")
            else:
                out.append(f"{key} (folder {saved.get(key)!r}, now {job.get(key)!r})")
    return out


class _Keyed:
    """A value that hashes and compares by ``key``: lets ``lru_cache`` key on configs, levels, arrays."""

    __slots__ = ("key", "value")

    def __init__(self, value: Any, key: Hashable) -> None:
        self.value, self.key = value, key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keyed) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


# A second job in the same process (another seed range, a resume) reuses the compiled sampler.
# The cache holds the network itself, so two networks never share an entry.
@functools.lru_cache(maxsize=8)
def _compiled_sampler(apply_fn: Any, sample_shape: tuple[int, ...], config: _Keyed, state: _Keyed,
                      solver: str, eta: float | None, null_cond: _Keyed | None, mesh: Mesh | None,
                      axis: str | tuple[str, ...], strength: float | None = None) -> Any:
    solver = get_solver(solver, **({} if eta is None else {"eta": eta}))
    if null_cond is not None:
        apply_fn = classifier_free_guidance(apply_fn, null_cond.value)
    if mesh is None:
        return make_sampler(apply_fn, state.value, config.value, sample_shape, solver=solver,
                            strength=strength)
    return make_sharded_sampler(apply_fn, state.value, config.value, sample_shape, mesh, axis_name=axis,
                                solver=solver, strength=strength)


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where the sampler runs.

    Attributes:
      mesh: The mesh (None: one local device, unsharded).
      axis: The mesh axis (or axes) the batch is split over.
      size: The devices along ``axis``: each sampler call's batch is a multiple of it.
      spans_processes: Whether ``mesh`` holds other processes' devices: then every process
        takes part in every sampler call, with the batch as a global array.
    """

    mesh: Mesh | None
    axis: str | tuple[str, ...]
    size: int
    spans_processes: bool


def _placement(model: GenerateModel) -> _Placement:
    """The weights' mesh and ``batch_axis``, or (unplaced weights) this process's devices over ``"data"``.

    Raises:
      ValueError: the weights are placed on several meshes, on a mesh without ``batch_axis``,
        or on a mesh that spans some processes but not all (the message names what).
    """
    mesh = weights_mesh(model.params, model.batch_axis)
    if mesh is None:
        devices = jax.local_devices()
        if len(devices) == 1:
            return _Placement(mesh=None, axis="data", size=1, spans_processes=False)
        return _Placement(mesh=Mesh(np.asarray(devices), ("data",)), axis="data", size=len(devices),
                          spans_processes=False)
    axes = (model.batch_axis,) if isinstance(model.batch_axis, str) else tuple(model.batch_axis)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    processes = {d.process_index for d in mesh.devices.flat}
    spans = processes != {jax.process_index()}
    if spans and processes != set(range(jax.process_count())):
        raise ValueError(f"model params are placed on a mesh holding the devices of processes "
                         f"{sorted(processes)} of {jax.process_count()}; a mesh must hold this process's "
                         "devices only, or devices of every process.")
    return _Placement(mesh=mesh, axis=model.batch_axis, size=size, spans_processes=spans)


def _local_sampler(model: GenerateModel, state: Any, config: KarrasVeConfig, solver: str, eta: float | None,
                   guidance: float | None, placement: _Placement, strength: float | None = None,
                   ) -> tuple[Any, Any]:
    """``(sampler, weights)`` on ``placement``'s mesh: weights as placed, the batch split over its axis."""
    weights = model.params if guidance is None else (model.params, Guidance(scale=guidance))
    null_cond = None if guidance is None else _Keyed(model.null_cond, repr(model.null_cond))
    sampler = _compiled_sampler(model.apply_fn, tuple(model.sample_shape), _Keyed(config, repr(config)),
                                _Keyed(state, tuple(np.asarray(state.sigmas).tolist())), solver, eta,
                                null_cond, placement.mesh, placement.axis, strength)
    return sampler, weights


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a :func:`generate` call will do, decided before anything is written.

    Attributes:
      folder: The output folder.
      model: The model (loaded from its MODEL string).
      seeds: The sorted seeds, as runs (each shard's seeds are taken from it by position).
      config: The model's config with the overrides applied.
      state: The noise levels.
      solver: The solver's name.
      batch: Samples per sampler call (before rounding to the devices).
      png: Whether PNGs are written.
      manifest: The folder's manifest (as saved, on a resume) or the new one.
      resumed: Whether the folder already held this job's manifest.
      placement: Where the sampler runs (the weights' mesh, or this process's devices).
      init: Image-to-image: the clean images (M, *sample_shape), seed s starting from image
        ``s % M`` (None: from noise).
      strength: Image-to-image: how far up the levels the images are noised (None: from noise).
      features: The feature function (None: none).
    """

    folder: Path
    model: GenerateModel
    seeds: SeedRuns
    config: KarrasVeConfig
    state: Any
    solver: str
    eta: float | None
    batch: int
    png: bool
    manifest: dict[str, Any]
    resumed: bool
    placement: _Placement
    init: np.ndarray | None = None
    strength: float | None = None
    features: Any = None


_PNG_SHAPES = "(H, W), (H, W, 1) or (H, W, 3)"


def _plan(model: GenerateModel | str, seeds: str | Sequence[int] | np.ndarray | SeedRuns,
          out: str | os.PathLike, *, batch: int = 512, steps: int | None = None,
          schedule: str | None = None, solver: str = "heun", eta: float | None = None,
          s_churn: float | None = None, s_noise: float | None = None, s_min: float | None = None,
          s_max: float | None = None, guidance: float | None = None, png: bool = False,
          shard_size: int | None = None, init: Any = None, strength: float | None = None,
          features: Any = None, keep_samples: bool = False) -> _Plan:
    """Planning: checks the arguments, applies the overrides, builds (or reads and compares) the manifest.

    Reads ``out``'s manifest if there is one (checked against the schema); writes nothing.
    Memory does not grow with the number of seeds.

    Raises:
      TypeError, ValueError, OSError: as :func:`generate`.
      ImportError: ``png`` without Pillow.
    """
    if isinstance(model, str):
        model = load_generate_model(model)
    if not isinstance(model, GenerateModel):
        raise TypeError(f"model must be a GenerateModel or a MODEL string, got {type(model).__name__}.")
    runs = seed_runs(seeds)
    batch = check_count("batch", batch)
    if shard_size is not None:
        shard_size = check_count("shard_size", shard_size)
    placement = _placement(model)  # the weights' mesh: refused now if it cannot split the batch
    get_solver(solver, **({} if eta is None else {"eta": eta}))  # an unknown name or a bad eta: refused now
    eta = None if eta is None else float(eta)
    if guidance is not None and model.cond_fn is None:
        raise ValueError("guidance needs a conditional model (its cond_fn gives each seed's condition).")
    if guidance is not None and not (np.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be finite and >= 0, got {guidance!r}.")
    shape = _written_shape(model)
    if (init is None) != (strength is None):
        raise ValueError("image-to-image needs both init (--init, the clean images) and strength "
                         "(--strength, in [0, 1]).")
    if init is not None:
        check_start_step(None, strength)
        strength, init = float(strength), init_images(init, model, shape)
    record = None
    if features is not None:  # its dim, from one zero sample: a function that does not fit fails now
        features, name = feature_function(features)
        dim = features_of(features, np.zeros((1, *shape), np.float32)).shape[1]
        record = {"function": name, "dim": int(dim), "samples": bool(keep_samples)}
    elif keep_samples:
        raise ValueError("keep_samples (--keep-samples) applies to a job with a feature function only.")
    image = len(shape) == 2 or len(shape) == 3 and shape[-1] in (1, 3)
    if png and (model.image_range is None or not image):
        raise ValueError(f"png (--png) needs an image model: an image_range and written samples of shape "
                         f"{_PNG_SHAPES}; this model's samples are {shape} with image_range "
                         f"{model.image_range}.")
    if png and importlib.util.find_spec("PIL") is None:  # refused now, not after the first shard
        raise ImportError(PNG_HINT)
    overrides = {k: v for k, v in (("s_churn", s_churn), ("s_noise", s_noise), ("s_min", s_min),
                                   ("s_max", s_max)) if v is not None}
    config = model.config.replace(**overrides) if overrides else model.config
    steps = model.steps if steps is None else steps
    schedule = model.schedule if schedule is None else schedule
    state = set_timesteps(config, steps, schedule)

    folder = Path(out)
    check_folder_path(folder)  # a file, below a file, a dangling symlink: refused before any work
    saved = _load_manifest(folder) if folder.is_dir() else None
    if shard_size is None:  # a resumed job keeps the size it was made with
        shard_size = saved["shard_size"] if saved is not None else batch
    job = _job(model, runs, config, state, steps, schedule, solver, eta,
               None if guidance is None else float(guidance), shard_size, init, strength, record)
    if saved is not None:
        differ = _differences(saved, job)
        if differ:
            raise ValueError(f"{folder} holds another generation job; what differs: {'; '.join(differ)}.")
    manifest = saved if saved is not None else {**job, "versions": _versions(), "checksums": {}}
    return _Plan(folder=folder, model=model, seeds=runs, config=config, state=state, solver=solver, eta=eta,
                 batch=batch, png=bool(png), manifest=manifest, resumed=saved is not None,
                 placement=placement, init=init, strength=strength, features=features)


def _open(plan: _Plan, process: int, processes: int) -> None:
    """Creates the folder, clears what a kill left and writes a new job's manifest (process 0)."""
    check_writable_folder(plan.folder)
    # Process 0 touches the folder only once every process has read it (_plan) and proved it
    # writable: a process still planning would take the new manifest for a resume and go down
    # the other path (with a mesh over every process, into other collectives than process 0:
    # a Gloo "collective mismatch" on CPU), and the sweep below would delete its write probe.
    _same_everywhere(np.uint32(plan.resumed), processes,
                     "karras_jax.generation: some processes found the job's manifest in the output folder "
                     "and some did not; the output folder must be one folder shared by every host")
    if process == 0:
        for stale in plan.folder.glob(".*.tmp"):  # left by a kill mid-write
            stale.unlink(missing_ok=True)
        if not plan.resumed:
            write_json(plan.folder / MANIFEST, plan.manifest)
    _barrier(processes, "karras_jax.generation: folder ready")


@struct.dataclass
class _Scan:
    """What :func:`_scan` found among one process's shards.

    Attributes:
      done: ``{name: sha256}`` of the shards that are complete and right.
      todo: The indices of the shards to generate (ascending; a ``range`` for a new job).
      problems: ``{name: why}`` for each shard in ``todo`` (``"missing"``, a checksum mismatch, ...).
    """

    done: dict[str, str]
    todo: Sequence[int]
    problems: dict[str, str]


def _known_checksums(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Checksums of the shards written so far: the manifest's and the unfinished runs' progress records."""
    return {**manifest["checksums"], **_progress_records(folder)}


def _shard_seeds(seeds: SeedRuns, manifest: dict[str, Any], index: int) -> np.ndarray:
    """The seeds of shard ``index``: the ``index``-th run of ``shard_size`` seeds in ascending order."""
    size = manifest["shard_size"]
    return seeds.take(index * size, (index + 1) * size)


def _scan(folder: Path, manifest: dict[str, Any], known: dict[str, str], *, process: int = 0,
          processes: int = 1) -> _Scan:
    """Shard scanning: which of process ``process``'s shards (``i % processes``) are complete.

    A shard is complete when its bytes match its checksum in ``known`` (a shard with none is
    not), it loads, holds exactly its seeds with the manifest's sample shape and is finite.
    """
    seeds, shape = seed_runs(manifest["seeds"]), tuple(manifest["sample_shape"])
    done, todo, problems = {}, [], {}
    for i in range(process, manifest["num_shards"], processes):
        name = _shard_name(i)
        problem = _check_shard(folder / name, _shard_seeds(seeds, manifest, i), shape, known.get(name),
                               manifest.get("features"))
        if problem is None:
            done[name] = known[name]
        else:
            todo.append(i)
            problems[name] = problem
    return _Scan(done=done, todo=todo, problems=problems)


def _write(plan: _Plan, scan: _Scan, *, process: int = 0, processes: int = 1, progress: bool = False,
           together: Sequence[int] | None = None) -> int:
    """Writing: samples ``scan.todo`` into shard files and records each one; returns the samples written.

    The writer's lifecycle: shards go to a background :class:`ShardWriter`; each one written
    is recorded (with its checksum, next to those of ``scan.done``) in ``progress-pN.json``,
    so a kill loses at most the shards in flight. The writer is closed (everything queued
    written, or its error raised) whatever happens.

    With a mesh that spans every process, ``together`` lists the shards of every process
    still to do: all of them are sampled here (every process takes part in each call), and
    this process writes its own (``i % processes == process``, i.e. ``scan.todo``).

    Raises:
      FloatingPointError: a sample is NaN or inf (naming the seeds); its shard is not written.
      OSError: a write failed.
    """
    done = dict(scan.done)
    own_record = plan.folder / f"progress-p{process}.json"
    todo = scan.todo if together is None else together
    if not todo:
        if done:
            write_json(own_record, dict(sorted(done.items())))
        return 0
    lock = threading.Lock()

    def record(name: str, checksum: str) -> None:  # on the writer's thread
        with lock:
            done[name] = checksum
            write_json(own_record, dict(sorted(done.items())))

    model = plan.model
    placement = plan.placement
    sampler, weights = _local_sampler(model, plan.state, plan.config, plan.solver, plan.eta,
                                      plan.manifest["guidance"], placement, plan.strength)
    chunk = -(-min(plan.batch, plan.manifest["shard_size"]) // placement.size) * placement.size
    writer = ShardWriter(plan.folder, record, model.image_range if plan.png else None)
    shards = ((i, _shard_seeds(plan.seeds, plan.manifest, i)) for i in todo)
    bar = None
    if progress:  # every shard is full but the last one (todo may be a range of millions: no loop)
        size, last = plan.manifest["shard_size"], plan.manifest["num_shards"] - 1
        short = size * (last + 1) - len(plan.seeds) if last in todo else 0
        bar = progress_bar(len(todo) * size - short, unit="samples", label="generate")
    inputs = _global_inputs(placement) if placement.spans_processes else None
    try:
        return _sample_shards(shards, sampler, weights, model, chunk, writer, bar, inputs=inputs,
                              keep=lambda i: i % processes == process, init=plan.init,
                              features=plan.features, record=plan.manifest.get("features"))
    finally:
        try:
            writer.close()
        finally:
            if bar is not None:
                bar.close()


def _non_finite(seeds: np.ndarray, samples: np.ndarray, name: str,
                what: str = "the model") -> FloatingPointError:
    bad = seeds[~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)].tolist()
    shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    made, hint = ("features", "")
    if what == "the model":
        made, hint = "samples", "; find the cause with kj.sample(..., check_finite=True)"
    return FloatingPointError(
        f"{what} gave non-finite {made} (NaN or inf) for seed{'s' if len(bad) > 1 else ''} {shown}; "
        f"{name} was not written (shards written before it are complete){hint}.")


class _GlobalInputs:
    """Keys and conditioning as global arrays split over a mesh that spans every process.

    Every process plans the same chunk of seeds, so each builds the same global array from
    its own devices' slices of the same host values; the output, split over every process,
    is gathered on each (samples are small next to the weights).
    """

    def __init__(self, sharding: NamedSharding) -> None:
        self.sharding = sharding

    def put(self, value: Any) -> jax.Array:
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, self.sharding, lambda index: value[index])

    def keys(self, keys: jax.Array) -> jax.Array:
        return jax.random.wrap_key_data(self.put(jax.random.key_data(keys)), impl=jax.random.key_impl(keys))

    def cond(self, cond: Any) -> Any:
        return None if cond is None else jax.tree_util.tree_map(self.put, cond)

    @staticmethod
    def fetch(out: jax.Array) -> np.ndarray:
        return gather(out)


def _global_inputs(placement: _Placement) -> _GlobalInputs:
    return _GlobalInputs(NamedSharding(placement.mesh, PartitionSpec(placement.axis)))


def _sample_shards(todo: Iterable[tuple[int, np.ndarray]], sampler: Any, weights: Any, model: GenerateModel,
                   chunk: int, writer: ShardWriter, bar: Any, *, inputs: _GlobalInputs | None = None,
                   keep: Any = None, init: np.ndarray | None = None, features: Any = None,
                   record: dict[str, Any] | None = None) -> int:
    """Samples the shards chunk by chunk; the next chunk is dispatched before the last one is fetched.

    ``inputs``: with a mesh over every process, how keys and conditioning become global
    arrays and the output is gathered (None: this process's own arrays). ``keep(i)``: whether
    this process writes shard ``i`` (None: every shard); the samples of the others are only
    computed (every process takes part in every call of a global program). ``init``: the
    clean images of an image-to-image job (seed s starts from ``init[s % M]``). ``features``:
    the feature function, applied to each chunk's written samples (``record``: the manifest's
    record of it: its dim, whether samples are kept). Returns the number
    of samples written. Over every process the chunks run one at a time: the gather is a
    collective too, and the collectives of two programs in flight may pair up differently on
    different processes.

    Raises:
      FloatingPointError: a chunk holds a non-finite sample; nothing of its shard is written.
    """
    parts: dict[int, list[np.ndarray]] = {}
    generated = 0
    pending: tuple[int, np.ndarray, int, int, Any] | None = None

    def collect(i: int, shard_seeds: np.ndarray, lo: int, count: int, out: Any) -> None:
        nonlocal generated
        samples = (np.asarray(out) if inputs is None else inputs.fetch(out))[:count].astype(np.float32)
        if model.postprocess is not None:
            samples = np.asarray(model.postprocess(samples), np.float32)
        if not np.isfinite(samples).all():
            raise _non_finite(shard_seeds[lo:lo + count], samples, _shard_name(i))
        if bar is not None:
            bar.update(count)
        if keep is not None and not keep(i):
            return
        values = None
        if features is not None:
            values = features_of(features, samples, record["dim"])
            if not np.isfinite(values).all():
                raise _non_finite(shard_seeds[lo:lo + count], values, _shard_name(i), "the feature function")
        parts.setdefault(i, []).append((samples, values))
        generated += count
        if lo + count == len(shard_seeds):
            done_samples, done_values = zip(*parts.pop(i), strict=True)
            writer.put(_shard_name(i), shard_seeds, np.concatenate(done_samples),
                       None if features is None else np.concatenate(done_values),
                       keep_samples=record is None or record["samples"])

    for i, shard_seeds in todo:
        for index, count in padded_chunks(len(shard_seeds), chunk):
            padded = shard_seeds[index]
            cond = None if model.cond_fn is None else model.cond_fn(padded)
            keys = seed_keys(padded)
            x_init = None if init is None else init[np.asarray(padded, np.int64) % len(init)]
            if inputs is not None:
                keys, cond = inputs.keys(keys), inputs.cond(cond)
                x_init = None if x_init is None else inputs.put(x_init)
            if inputs is not None and pending is not None:  # one global program at a time (below)
                collect(*pending)
                pending = None
            out = sampler(weights, keys, cond, x_init)  # dispatched: runs while we fetch the last one
            if pending is not None:
                collect(*pending)
            pending = (i, shard_seeds, int(index[0]), count, out)
    if pending is not None:
        collect(*pending)
    return generated


def generate(model: GenerateModel | str, seeds: str | Sequence[int] | np.ndarray | SeedRuns,
             out: str | os.PathLike, *, batch: int = 512, steps: int | None = None,
             schedule: str | None = None, solver: str = "heun", eta: float | None = None,
             s_churn: float | None = None,
             s_noise: float | None = None, s_min: float | None = None, s_max: float | None = None,
             guidance: float | None = None, png: bool = False, shard_size: int | None = None,
             progress: bool = True, dry_run: bool = False, init: Any = None,
             strength: float | None = None, features: Any = None,
             keep_samples: bool = False) -> GenerateResult:
    """Generates one sample per seed into sharded files in ``out``, resuming what is there.

    Args:
      model: A :class:`GenerateModel`, or a MODEL string (``"mixture"``, a ``kj.fit`` folder
        such as a train-digits one, ``"package.module:function"``).
      seeds: EDM's syntax (``"0-49999"``, ``"0,5,10-20"``), the seeds themselves (distinct,
        in 0 .. 2**32 - 1) or :class:`SeedRuns`; generated and sharded in ascending order.
        A range is never held in memory whole: ``"0-4294967295"`` plans in constant memory.
      out: The output folder (created).
      batch: Samples per sampler call, rounded up to a multiple of the devices it is split
        over (the local devices, or for weights placed on a mesh the model's ``batch_axis``);
        does not change any sample.
      steps, schedule: Override the model's defaults.
      solver: A name in ``kj.SOLVERS``.
      eta: The stochasticity of a solver that has one (``kj.takes_eta()``); None: its default.
      s_churn, s_noise, s_min, s_max: Override the model's sampler config.
      guidance: Classifier-free guidance scale for a conditional model (None: unguided).
      png: Also write one PNG per sample (image models: an ``image_range`` and written
        samples of shape (H, W), (H, W, 1) or (H, W, 3); needs Pillow).
      shard_size: Seeds per shard for a new job (default ``batch``); a resumed job keeps
        the size it was created with.
      progress: Show a progress bar (samples/s, ETA) on stderr.
      dry_run: Plan and check the folder only: nothing is created or written, and
        ``written`` counts the shards a real run would write.
      init: Image-to-image (SDEdit): the clean images, as the job writes its samples (after
        the model's ``postprocess``; its ``preprocess`` takes them back): an ``.npz`` (its
        ``samples`` array or its only array, e.g. a shard of another job), a folder of
        PNG/JPEG images (file-name order, 0..255 scaled to the model's ``image_range``) or an
        array (M, *shape). Seed s edits image ``s % M``, noised to the start level with its
        own start noise (docs/editing.md). The manifest records the images' SHA-256 and a
        resume with other images is refused.
      strength: With ``init``: as :func:`karras_jax.sample`'s, in [0, 1]; the run starts at
        step ``N - int(strength * N)``.
      features: A feature function ``features(samples) -> (n, dim)`` of the written samples
        (numpy, after ``postprocess``), or its ``package.module:function`` name: each shard
        then holds the features instead of the samples, and ``DIR/stats.npz`` their
        :class:`~karras_jax.FeatureStats` once the job is complete (reduced in shard order:
        the same bytes after any kill and resume). Called once on a zero sample when the job
        is planned, to learn ``dim``. The manifest records its name (``module:qualname`` for a
        function) and dim.
      keep_samples: With ``features``, write the samples into the shards too.

    Returns:
      A :class:`GenerateResult`.

    Raises:
      ValueError: bad arguments; the weights are placed on several meshes, on a mesh without
        the model's ``batch_axis`` or on one spanning some processes but not all; ``out``
        holds another job (the message names what differs), a damaged or foreign manifest,
        or shards without a manifest (the message says how to start over).
      ImportError: ``png`` without Pillow installed.
      FloatingPointError: the model gave a NaN or inf sample (the message names the seeds);
        that shard is not written, the shards before it are complete.
      OSError: ``out`` is a file, below a file or a dangling symlink, or a write failed (disk
        full, permissions); the message names the path. Shards written before are intact and
        a re-run continues from them.
    """
    began = time.perf_counter()
    plan = _plan(model, seeds, out, batch=batch, steps=steps, schedule=schedule, solver=solver, eta=eta,
                 s_churn=s_churn, s_noise=s_noise, s_min=s_min, s_max=s_max, guidance=guidance, png=png,
                 shard_size=shard_size, init=init, strength=strength, features=features,
                 keep_samples=keep_samples)
    process, processes = jax.process_index(), jax.process_count()
    if not dry_run:
        _open(plan, process, processes)
    together = None
    if plan.resumed and plan.placement.spans_processes:  # one global program: every process plans every shard
        known = _known_checksums(plan.folder, plan.manifest)
        every = _scan(plan.folder, plan.manifest, known)
        together = _agreed(every.todo, processes)
        scan = _own(every, process, processes)
    elif plan.resumed:
        known = _known_checksums(plan.folder, plan.manifest)
        scan = _scan(plan.folder, plan.manifest, known, process=process, processes=processes)
    else:  # a new job: a folder without a manifest holds no shards (_plan refuses it otherwise)
        scan = _Scan(done={}, todo=range(process, plan.manifest["num_shards"], processes), problems={})
        if plan.placement.spans_processes:
            together = range(plan.manifest["num_shards"])
    generated = 0 if dry_run else _write(plan, scan, process=process, processes=processes,
                                         progress=progress, together=together)
    if not dry_run:
        _finish(plan.folder, plan.manifest, processes, process)
    seconds = time.perf_counter() - began
    return GenerateResult(folder=plan.folder, shards=plan.manifest["num_shards"], written=len(scan.todo),
                          skipped=len(scan.done), seconds=seconds,
                          samples_per_s=generated / seconds if generated else 0.0)


def _own(every: _Scan, process: int, processes: int) -> _Scan:
    """The part of a scan of every shard that process ``process`` writes (``i % processes``)."""
    def own(name: str) -> bool:
        return int(_SHARD.fullmatch(name)[1]) % processes == process

    return _Scan(done={k: v for k, v in every.done.items() if own(k)},
                 todo=[i for i in every.todo if i % processes == process],
                 problems={k: v for k, v in every.problems.items() if own(k)})


def _agreed(todo: Sequence[int], processes: int) -> Sequence[int]:
    """``todo``, once every process has found the same shards to do (they sample them together).

    Raises:
      RuntimeError: the processes see different files (``DIR`` is not one shared folder).
    """
    digest = hashlib.sha256(np.asarray(todo, np.int64).tobytes()).digest()
    _same_everywhere(np.frombuffer(digest, np.uint32), processes,
                     "karras_jax.generation: the processes found different shards to do; "
                     "the output folder must be one folder shared by every host")
    return todo


def _same_everywhere(value: np.ndarray, processes: int, message: str) -> None:
    """Waits for every process and checks that each has the same ``value`` (nothing to do in one process).

    Raises:
      RuntimeError: ``message``, when the values differ.
    """
    if processes > 1:
        from jax.experimental import multihost_utils

        try:
            multihost_utils.assert_equal(value, message)
        except AssertionError:
            raise RuntimeError(message) from None


def _finish(folder: Path, manifest: dict[str, Any], processes: int, process: int) -> None:
    """Once every process is done: process 0 writes the checksums into the manifest."""
    _barrier(processes, "karras_jax.generation: shards written")
    if process == 0:
        checksums = _known_checksums(folder, manifest)
        expected = [_shard_name(i) for i in range(manifest["num_shards"])]
        if all(name in checksums for name in expected):
            if "features" in manifest:  # before the manifest: a kill in between recomputes it
                stats = job_stats(folder, expected, manifest["features"]["dim"])
                if _stats_problem(folder / STATS, stats) is not None:  # a matching file stays as it is
                    stats.save(folder / STATS)
            final = {**manifest, "checksums": {name: checksums[name] for name in expected}}
            write_json(folder / MANIFEST, final)
            for record in folder.glob("progress-p*.json"):
                record.unlink(missing_ok=True)
    _barrier(processes, "karras_jax.generation: manifest written")


def _barrier(processes: int, name: str) -> None:
    """Waits for every process of a multi-process run (nothing to wait for in one process)."""
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def verify(out: str | os.PathLike) -> dict[str, Any]:
    """Checks a generation folder against its manifest without generating anything.

    The manifest must parse and match the schema (else ``ValueError``, as for a resume);
    each shard is then checked as a resume checks it.

    Returns:
      ``{"ok": bool, "shards": n, "complete": [...], "written": [...], "unrecorded": [...],
      "missing": [...], "corrupt": {name: why}, "seed_ranges": {state: [(first, last), ...]}}``:
      a shard is ``complete`` when it matches the manifest's checksum, loads, holds its seeds,
      has the manifest's shapes and is finite; ``written`` when it passes the same checks
      against the checksum an unfinished run recorded in ``progress-pN.json`` (the manifest
      lists it when the job finishes); ``unrecorded`` when it exists but no checksum vouches
      for it (a resume generates it again). ``seed_ranges`` gives, for each of these five
      states, the first and last seed of each run of consecutive shards in it. ``ok``: every
      shard complete. Rerunning the job's command finishes any other folder.

    Raises:
      FileNotFoundError: ``out`` has no manifest.
      ValueError: the manifest is damaged or foreign (the message names the file and what is wrong).
    """
    folder = Path(out)
    manifest = _load_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise FileNotFoundError(errno.ENOENT, f"no {MANIFEST} in {folder}: not a generation folder")
    scan = _scan(folder, manifest, _known_checksums(folder, manifest))
    unrecorded = [name for name, why in scan.problems.items() if why == "no checksum recorded for it"]
    report = {
        "ok": len(scan.done) == manifest["num_shards"] and set(scan.done) <= set(manifest["checksums"]),
        "shards": manifest["num_shards"],
        "complete": [name for name in scan.done if name in manifest["checksums"]],
        "written": [name for name in scan.done if name not in manifest["checksums"]],
        "unrecorded": unrecorded,
        "missing": [name for name, why in scan.problems.items() if why == "missing"],
        "corrupt": {name: why for name, why in scan.problems.items()
                    if why != "missing" and name not in unrecorded},
    }
    seeds = seed_runs(manifest["seeds"])
    report["seed_ranges"] = {state: _seed_ranges(seeds, manifest, report[state]) for state in _STATES}
    if "features" in manifest and report["ok"]:  # the statistics must be those of the shards
        problem = _stats_problem(folder / STATS, job_stats(folder, report["complete"],
                                                           manifest["features"]["dim"]))
        if problem is not None:
            report["stats"], report["ok"] = problem, False
    return report


def _stats_problem(path: Path, want: FeatureStats) -> str | None:
    """None if ``path`` holds the statistics ``want``, else what is wrong.

    The same count; mean and covariance within 1e-5 of the features' standard deviations (so
    statistics reduced on another backend, or under x64, still match).
    """
    try:
        have = FeatureStats.load(path)
    except (OSError, ValueError) as err:
        return f"{STATS}: {err}"
    if have.dim != want.dim or int(have.count) != int(want.count):
        return f"{STATS} is not the statistics of the shards' features (another count or dim)"
    if int(want.count) < 2:
        return None
    std = np.sqrt(np.maximum(np.diag(want.covariance), 0.0)) + 1e-30
    close = (np.abs(have.mean - want.mean) <= 1e-5 * std).all() and (
        np.abs(have.covariance - want.covariance) <= 1e-5 * np.outer(std, std) + 1e-12).all()
    return None if close else f"{STATS} is not the statistics of the shards' features"


_STATES = ("complete", "written", "unrecorded", "missing", "corrupt")


def _seed_ranges(seeds: SeedRuns, manifest: dict[str, Any], names: Iterable[str]) -> list[tuple[int, int]]:
    """(first seed, last seed) of each run of consecutive seeds in the shards ``names``.

    A run ends where the shards do (a shard not in ``names``) or where the job's seeds skip.
    """
    runs: list[list[int]] = []
    for i in sorted(int(_SHARD.fullmatch(name)[1]) for name in names):
        shard = _shard_seeds(seeds, manifest, i)
        cuts = np.flatnonzero(np.diff(shard) != 1)  # the seed set's own gaps inside the shard
        starts = np.concatenate([[0], cuts + 1])
        ends = np.concatenate([cuts, [len(shard) - 1]])
        for a, b in zip(shard[starts].tolist(), shard[ends].tolist(), strict=True):
            if runs and a == runs[-1][1] + 1:
                runs[-1][1] = b
            else:
                runs.append([a, b])
    return [(a, b) for a, b in runs]
