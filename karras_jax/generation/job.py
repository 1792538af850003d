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
- while a job runs, ``progress-pN.json`` (process N's finished shards and checksums).

Every file is written atomically (temporary file in the same folder, fsync, rename).
Re-running the same job finishes it: a shard is kept if it loads (each ``.npz`` member
carries a CRC-32), holds exactly its seeds and the right shapes, and matches its recorded
checksum; anything else is generated again. A killed run, resumed, leaves exactly the
files of an uninterrupted run. A folder holding another job is refused, naming what differs.

Multi-host: every process runs the same call; shard i is generated and written by process
``i % process_count`` on its local devices; process 0 writes the final manifest once all
processes are done. Sample s depends only on seed s (:func:`seed_keys` and the noise-stream
contract), so the union of the shards equals a single-process run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import struct
from jax.sharding import Mesh

from karras_jax._chunks import padded_chunks
from karras_jax._files import write_json
from karras_jax._progress import progress_bar
from karras_jax._validation import check_count
from karras_jax.config import KarrasVeConfig
from karras_jax.generation._writer import PNG_HINT, ShardWriter
from karras_jax.generation.models import GenerateModel, load_generate_model
from karras_jax.generation.seeds import parse_seeds, seed_keys
from karras_jax.models import Guidance, classifier_free_guidance
from karras_jax.sampler import make_sampler
from karras_jax.sharding import make_sharded_sampler
from karras_jax.state import set_timesteps

__all__ = ["GenerateResult", "MANIFEST", "generate", "verify"]

MANIFEST = "manifest.json"
_FORMAT = "karras_jax.generation/1"
# job fields that a resume must match (the rest: versions, checksums)
_JOB_FIELDS = ("format", "model", "seeds", "num_seeds", "sample_shape", "dtype", "config", "steps",
               "schedule", "sigmas", "solver", "guidance", "shard_size", "num_shards")


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


def _ranges(seeds: np.ndarray) -> str:
    """Seeds as EDM's syntax, runs of consecutive seeds collapsed (``0-9,20``)."""
    if seeds.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(seeds) != 1) + 1
    runs = np.split(seeds, breaks)
    return ",".join(f"{r[0]}" if r.size == 1 else f"{r[0]}-{r[-1]}" for r in runs)


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_shard(path: Path, seeds: np.ndarray, shape: tuple[int, ...], checksum: str | None) -> str | None:
    """None if the shard at ``path`` is complete and right, else what is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        return "checksum differs from the manifest"
    try:
        import io

        with np.load(io.BytesIO(data)) as npz:
            if sorted(npz.files) != ["samples", "seeds"]:
                return f"holds {sorted(npz.files)}, not seeds and samples"
            saved, samples = npz["seeds"], npz["samples"]  # reading checks each member's CRC-32
    except Exception as err:  # noqa: BLE001 - a corrupt zip raises many unrelated types
        return f"corrupt ({type(err).__name__}: {err})"
    if saved.dtype != np.int64 or not np.array_equal(saved, seeds):
        return "holds other seeds"
    if samples.dtype != np.float32 or samples.shape != (len(seeds), *shape):
        return f"samples are {samples.dtype}{list(samples.shape)}, expected float32{[len(seeds), *shape]}"
    if not np.all(np.isfinite(samples)):
        return "samples are not all finite"
    return None


def _written_shape(model: GenerateModel) -> tuple[int, ...]:
    """One written sample's shape: the sampler's, after the model's ``postprocess``."""
    if model.postprocess is None:
        return tuple(model.sample_shape)
    return tuple(np.shape(model.postprocess(np.zeros((1, *model.sample_shape), np.float32)))[1:])


def _job(model: GenerateModel, seeds: np.ndarray, config: KarrasVeConfig, state: Any, steps: int,
         schedule: str, solver: str, guidance: float | None, shard_size: int) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "model": model.identity,
        "seeds": _ranges(seeds),
        "num_seeds": int(seeds.size),
        "sample_shape": list(_written_shape(model)),
        "dtype": "float32",
        "config": {f.name: float(getattr(config, f.name)) for f in dataclasses.fields(config)},
        "steps": int(steps),
        "schedule": schedule,
        "sigmas": [float(s) for s in np.asarray(state.sigmas)],
        "solver": solver,
        "guidance": guidance,
        "shard_size": int(shard_size),
        "num_shards": int(-(-seeds.size // shard_size)),
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
                      solver: str, null_cond: _Keyed | None, devices: tuple[Any, ...]) -> Any:
    if null_cond is not None:
        apply_fn = classifier_free_guidance(apply_fn, null_cond.value)
    if len(devices) == 1:
        return make_sampler(apply_fn, state.value, config.value, sample_shape, solver=solver)
    mesh = Mesh(np.asarray(devices), ("data",))
    return make_sharded_sampler(apply_fn, state.value, config.value, sample_shape, mesh, solver=solver)


def _local_sampler(model: GenerateModel, state: Any, config: KarrasVeConfig, solver: str,
                   guidance: float | None) -> tuple[Any, Any, int]:
    """``(sampler, weights, devices)``: over this process's devices, sharded when there are several."""
    devices = tuple(jax.local_devices())
    weights = model.params if guidance is None else (model.params, Guidance(scale=guidance))
    null_cond = None if guidance is None else _Keyed(model.null_cond, repr(model.null_cond))
    sampler = _compiled_sampler(model.apply_fn, tuple(model.sample_shape), _Keyed(config, repr(config)),
                                _Keyed(state, tuple(np.asarray(state.sigmas).tolist())), solver, null_cond,
                                devices)
    return sampler, weights, len(devices)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a :func:`generate` call will do, decided before anything is written.

    Attributes:
      folder: The output folder.
      model: The model (loaded from its MODEL string).
      seeds: The sorted seeds.
      config: The model's config with the overrides applied.
      state: The noise levels.
      solver: The solver's name.
      batch: Samples per sampler call (before rounding to the devices).
      png: Whether PNGs are written.
      manifest: The folder's manifest (as saved, on a resume) or the new one.
      resumed: Whether the folder already held this job's manifest.
    """

    folder: Path
    model: GenerateModel
    seeds: np.ndarray
    config: KarrasVeConfig
    state: Any
    solver: str
    batch: int
    png: bool
    manifest: dict[str, Any]
    resumed: bool


def _plan(model: GenerateModel | str, seeds: str | Sequence[int] | np.ndarray, out: str | os.PathLike, *,
          batch: int = 512, steps: int | None = None, schedule: str | None = None, solver: str = "heun",
          s_churn: float | None = None, s_noise: float | None = None, s_min: float | None = None,
          s_max: float | None = None, guidance: float | None = None, png: bool = False,
          shard_size: int | None = None) -> _Plan:
    """Planning: checks the arguments, applies the overrides, builds (or reads and compares) the manifest.

    Reads ``out``'s manifest if there is one; writes nothing.

    Raises:
      TypeError, ValueError: as :func:`generate`.
      ImportError: ``png`` without Pillow.
    """
    if isinstance(model, str):
        model = load_generate_model(model)
    if not isinstance(model, GenerateModel):
        raise TypeError(f"model must be a GenerateModel or a MODEL string, got {type(model).__name__}.")
    if isinstance(seeds, str):
        seed_array = parse_seeds(seeds)
    else:
        seed_array = np.asarray(seeds)
        if seed_array.ndim != 1 or seed_array.size == 0 or not np.issubdtype(seed_array.dtype, np.integer):
            raise ValueError("seeds must be a non-empty 1-D list of integers.")
        seed_array = parse_seeds(",".join(map(str, seed_array.tolist())))  # sorted, range and repeats checked
    batch = check_count("batch", batch)
    if shard_size is not None:
        shard_size = check_count("shard_size", shard_size)
    if guidance is not None and model.cond_fn is None:
        raise ValueError("guidance needs a conditional model (its cond_fn gives each seed's condition).")
    if guidance is not None and not (np.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be finite and >= 0, got {guidance!r}.")
    if png and model.image_range is None:
        raise ValueError("png needs an image model (one with an image_range).")
    if png and importlib.util.find_spec("PIL") is None:  # refused now, not after the first shard
        raise ImportError(PNG_HINT)
    overrides = {k: v for k, v in (("s_churn", s_churn), ("s_noise", s_noise), ("s_min", s_min),
                                   ("s_max", s_max)) if v is not None}
    config = model.config.replace(**overrides) if overrides else model.config
    steps = model.steps if steps is None else steps
    schedule = model.schedule if schedule is None else schedule
    state = set_timesteps(config, steps, schedule)

    folder = Path(out)
    saved = _read_json(folder / MANIFEST)
    if shard_size is None:  # a resumed job keeps the size it was made with
        shard_size = int(saved["shard_size"]) if saved and "shard_size" in saved else batch
    job = _job(model, seed_array, config, state, steps, schedule, solver,
               None if guidance is None else float(guidance), shard_size)
    if saved is not None:
        differ = _differences(saved, job)
        if differ:
            raise ValueError(f"{folder} holds another generation job; what differs: {'; '.join(differ)}.")
    manifest = saved if saved is not None else {**job, "versions": _versions(), "checksums": {}}
    return _Plan(folder=folder, model=model, seeds=seed_array, config=config, state=state, solver=solver,
                 batch=batch, png=bool(png), manifest=manifest, resumed=saved is not None)


def _open(plan: _Plan, process: int, processes: int) -> None:
    """Creates the folder, clears what a kill left and writes a new job's manifest (process 0)."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    if process == 0:  # the others wait: a temporary file being cleaned might be theirs
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
      todo: ``(index, seeds)`` of the shards to generate.
      problems: ``{name: why}`` for each shard in ``todo`` (``"missing"``, a checksum mismatch, ...).
    """

    done: dict[str, str]
    todo: list[tuple[int, np.ndarray]]
    problems: dict[str, str]


def _known_checksums(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Checksums of the shards written so far: the manifest's and the unfinished runs' progress records."""
    known = dict(manifest.get("checksums", {}))
    for record in sorted(folder.glob("progress-p*.json")):
        known.update(_read_json(record) or {})
    return known


def _scan(folder: Path, manifest: dict[str, Any], known: dict[str, str], *, process: int = 0,
          processes: int = 1) -> _Scan:
    """Shard scanning: which of process ``process``'s shards (``i % processes``) are complete.

    A shard is complete when it loads, holds exactly its seeds with the manifest's sample
    shape, is finite, and matches its checksum in ``known`` (when it has one).
    """
    seeds = parse_seeds(manifest["seeds"])
    size, shape = int(manifest["shard_size"]), tuple(manifest["sample_shape"])
    done, todo, problems = {}, [], {}
    for i in range(process, int(manifest["num_shards"]), processes):
        name, shard_seeds = _shard_name(i), seeds[i * size:(i + 1) * size]
        problem = _check_shard(folder / name, shard_seeds, shape, known.get(name))
        if problem is None:
            done[name] = known.get(name) or hashlib.sha256((folder / name).read_bytes()).hexdigest()
        else:
            todo.append((i, shard_seeds))
            problems[name] = problem
    return _Scan(done=done, todo=todo, problems=problems)


def _write(plan: _Plan, scan: _Scan, *, process: int = 0, progress: bool = False) -> int:
    """Writing: samples ``scan.todo`` into shard files and records each one; returns the samples made.

    The writer's lifecycle: shards go to a background :class:`ShardWriter`; each one written
    is recorded (with its checksum, next to those of ``scan.done``) in ``progress-pN.json``,
    so a kill loses at most the shards in flight. The writer is closed (everything queued
    written, or its error raised) whatever happens.
    """
    done = dict(scan.done)
    own_record = plan.folder / f"progress-p{process}.json"
    if not scan.todo:
        if done:
            write_json(own_record, dict(sorted(done.items())))
        return 0
    lock = threading.Lock()

    def record(name: str, checksum: str) -> None:  # on the writer's thread
        with lock:
            done[name] = checksum
            write_json(own_record, dict(sorted(done.items())))

    model = plan.model
    sampler, weights, devices = _local_sampler(model, plan.state, plan.config, plan.solver,
                                               plan.manifest["guidance"])
    chunk = -(-min(plan.batch, int(plan.manifest["shard_size"])) // devices) * devices
    writer = ShardWriter(plan.folder, record, model.image_range if plan.png else None)
    total = sum(len(s) for _, s in scan.todo)
    bar = progress_bar(total, unit="samples", label="generate") if progress else None
    try:
        return _sample_shards(scan.todo, sampler, weights, model, chunk, writer, bar)
    finally:
        try:
            writer.close()
        finally:
            if bar is not None:
                bar.close()


def _sample_shards(todo: list[tuple[int, np.ndarray]], sampler: Any, weights: Any, model: GenerateModel,
                   chunk: int, writer: ShardWriter, bar: Any) -> int:
    """Samples the shards chunk by chunk; the next chunk is dispatched before the last one is fetched."""
    parts: dict[int, list[np.ndarray]] = {}
    generated = 0
    pending: tuple[int, np.ndarray, int, int, Any] | None = None

    def collect(i: int, shard_seeds: np.ndarray, lo: int, count: int, out: Any) -> None:
        nonlocal generated
        samples = np.asarray(out)[:count].astype(np.float32)
        if model.postprocess is not None:
            samples = np.asarray(model.postprocess(samples), np.float32)
        parts.setdefault(i, []).append(samples)
        generated += count
        if lo + count == len(shard_seeds):
            writer.put(_shard_name(i), shard_seeds, np.concatenate(parts.pop(i)))
        if bar is not None:
            bar.update(count)

    for i, shard_seeds in todo:
        for index, count in padded_chunks(len(shard_seeds), chunk):
            padded = shard_seeds[index]
            cond = None if model.cond_fn is None else model.cond_fn(padded)
            out = sampler(weights, seed_keys(padded), cond)  # dispatched: runs while we fetch the last one
            if pending is not None:
                collect(*pending)
            pending = (i, shard_seeds, int(index[0]), count, out)
    if pending is not None:
        collect(*pending)
    return generated


def generate(model: GenerateModel | str, seeds: str | Sequence[int] | np.ndarray, out: str | os.PathLike, *,
             batch: int = 512, steps: int | None = None, schedule: str | None = None, solver: str = "heun",
             s_churn: float | None = None, s_noise: float | None = None, s_min: float | None = None,
             s_max: float | None = None, guidance: float | None = None, png: bool = False,
             shard_size: int | None = None, progress: bool = True) -> GenerateResult:
    """Generates one sample per seed into sharded files in ``out``, resuming what is there.

    Args:
      model: A :class:`GenerateModel`, or a MODEL string (``"mixture"``, a ``kj.fit`` folder
        such as a train-digits one, ``"package.module:function"``).
      seeds: EDM's syntax (``"0-49999"``, ``"0,5,10-20"``) or the seeds themselves
        (distinct, in 0 .. 2**32 - 1); generated and sharded in ascending order.
      out: The output folder (created).
      batch: Samples per sampler call (rounded up to a multiple of the local devices);
        does not change any sample.
      steps, schedule: Override the model's defaults.
      solver: A name in ``kj.SOLVERS``.
      s_churn, s_noise, s_min, s_max: Override the model's sampler config.
      guidance: Classifier-free guidance scale for a conditional model (None: unguided).
      png: Also write one PNG per sample (image models only; needs Pillow).
      shard_size: Seeds per shard for a new job (default ``batch``); a resumed job keeps
        the size it was created with.
      progress: Show a progress bar (samples/s, ETA) on stderr.

    Returns:
      A :class:`GenerateResult`.

    Raises:
      ValueError: bad arguments, or ``out`` holds another job (the message names what differs).
      ImportError: ``png`` without Pillow installed.
      OSError: a write failed (disk full, permissions): shards written before are intact
        and a re-run continues from them.
    """
    began = time.perf_counter()
    plan = _plan(model, seeds, out, batch=batch, steps=steps, schedule=schedule, solver=solver,
                 s_churn=s_churn, s_noise=s_noise, s_min=s_min, s_max=s_max, guidance=guidance, png=png,
                 shard_size=shard_size)
    process, processes = jax.process_index(), jax.process_count()
    _open(plan, process, processes)
    scan = _scan(plan.folder, plan.manifest, _known_checksums(plan.folder, plan.manifest), process=process,
                 processes=processes)
    generated = _write(plan, scan, process=process, progress=progress)
    _finish(plan.folder, plan.manifest, processes, process)
    seconds = time.perf_counter() - began
    return GenerateResult(folder=plan.folder, shards=int(plan.manifest["num_shards"]), written=len(scan.todo),
                          skipped=len(scan.done), seconds=seconds,
                          samples_per_s=generated / seconds if generated else 0.0)


def _finish(folder: Path, manifest: dict[str, Any], processes: int, process: int) -> None:
    """Once every process is done: process 0 writes the checksums into the manifest."""
    _barrier(processes, "karras_jax.generation: shards written")
    if process == 0:
        checksums = _known_checksums(folder, manifest)
        expected = {_shard_name(i) for i in range(manifest["num_shards"])}
        if set(checksums) >= expected:
            final = {**manifest, "checksums": {k: checksums[k] for k in sorted(expected)}}
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

    Returns:
      ``{"ok": bool, "shards": n, "complete": [...], "missing": [...], "corrupt": {name: why},
      "unrecorded": [...]}``: a shard is complete when it loads, holds its seeds, has the
      manifest's shapes and matches the manifest's checksum; ``unrecorded`` shards look
      right but the manifest has no checksum for them yet (an unfinished job).

    Raises:
      FileNotFoundError: ``out`` has no manifest.
      ValueError: the manifest is unreadable.
    """
    folder = Path(out)
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a generation folder.")
    manifest = _read_json(path)
    if manifest is None or manifest.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a karras_jax generation manifest.")
    checksums = manifest.get("checksums", {})
    scan = _scan(folder, manifest, checksums)
    complete = [name for name in scan.done if name in checksums]
    return {
        "ok": len(complete) == int(manifest["num_shards"]),
        "shards": int(manifest["num_shards"]),
        "complete": complete,
        "missing": [name for name, why in scan.problems.items() if why == "missing"],
        "corrupt": {name: why for name, why in scan.problems.items() if why != "missing"},
        "unrecorded": [name for name in scan.done if name not in checksums],
    }
