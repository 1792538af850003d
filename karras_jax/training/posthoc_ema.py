r"""Post-hoc EMA (EDM2, Karras et al. 2024): choose the EMA's width after training.

Training tracks a few power-function EMAs of the weights (``TrainState.create(...,
ema_profiles=(0.05, 0.10))``) and :func:`karras_jax.fit` saves all of them every
``snapshot_every`` steps (:func:`save_ema_snapshot`). Afterwards the average of any width
sigma_rel, at any snapshot's step, is a linear combination of the snapshots.

The power-function EMA of exponent :math:`\gamma` at step :math:`t` weighs the weights of step
:math:`\tau` by the profile

.. math::

    p_{t,\gamma}(\tau) = \frac{(\gamma + 1)\, \tau^\gamma}{t^{\gamma + 1}}, \qquad 0 < \tau \le t

(zero after :math:`t`; :func:`karras_jax.ema_gamma` turns sigma_rel into :math:`\gamma`). The
inner product of two profiles (EDM2, eq. 151) is

.. math::

    \langle p_a, p_b \rangle = \int_0^\infty p_a p_b \, d\tau
    = \frac{(\gamma_a + 1)(\gamma_b + 1)}{(\gamma_a + \gamma_b + 1)\, \max(t_a, t_b)}
      \left(\frac{t_a}{t_b}\right)^{e}, \qquad
    e = \begin{cases} \gamma_b & t_a < t_b \\ -\gamma_a & \text{otherwise.} \end{cases}

With snapshots :math:`\hat\theta_i` of profiles :math:`p_i`, the combination
:math:`\sum_i x_i p_i` nearest (least squares) to the wanted profile :math:`p_o` solves the
normal equations :math:`A x = b`, :math:`A_{ij} = \langle p_i, p_j \rangle`,
:math:`b_i = \langle p_i, p_o \rangle`; the coefficients are then scaled to sum to 1
(EDM2's Algorithm 3 and ``solve_posthoc_coefficients``, float64) and
:math:`\hat\theta_o = \sum_i x_i \hat\theta_i`. The profiles are the continuous ones, so the
reconstruction is exact only up to the least-squares fit and the difference between the
discrete update and its continuous profile: with 40 snapshots of each of 0.05 and 0.10 over a
run, sigma_rel 0.07 comes back within about 1e-6 of the average tracked directly for a smooth
weight trajectory (tested to 1e-5), and a width that was snapshotted comes back as its snapshot.

Files: a snapshot is ``DIR/snapshots/snapshot-<step, 9 digits>.msgpack`` (``flax.serialization``
msgpack holding the step, every profile's width and weights), written atomically like the
checkpoint. :func:`write_posthoc_ema` writes each reconstruction as a folder that loads like a
checkpoint folder (:func:`karras_jax.load_params`, ``karras-jax generate --model``, and for the
digits example ``karras-jax sample-digits --checkpoint``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from karras_jax._files import atomic_write, check_writable_folder
from karras_jax._validation import check_count, concrete_value
from karras_jax.training.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    checkpoint_fields,
    load_model_recipe,
    read_msgpack,
    restore_tree,
    save_checkpoint,
    save_model_recipe,
    to_host,
)
from karras_jax.training.ema import check_sigma_rels, ema_gamma

__all__ = [
    "SNAPSHOT_FOLDER",
    "EmaSnapshot",
    "list_ema_snapshots",
    "load_ema_snapshots",
    "posthoc_ema_coefficients",
    "reconstruct_ema",
    "reconstruct_ema_from_folder",
    "save_ema_snapshot",
    "write_posthoc_ema",
]

#: The folder, inside a run's folder, that holds its EMA snapshots.
SNAPSHOT_FOLDER = "snapshots"
_SNAPSHOT_FORMAT = "karras_jax.ema_snapshot/1"
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d+)\.msgpack")
_MAX_SIGMA_REL = 12**-0.5


@dataclass(frozen=True)
class EmaSnapshot:
    """The EMA profiles of one step, as :func:`save_ema_snapshot` wrote them.

    Attributes:
      step: The number of updates the averages cover (the train state's ``step``), >= 1.
      sigma_rels: The width of each profile.
      profiles: The averaged weights of each profile, in the order of ``sigma_rels``.
    """

    step: int
    sigma_rels: tuple[float, ...]
    profiles: tuple[Any, ...]


# --- the coefficients -------------------------------------------------------------------------


def _real_vector(name: str, value: Any) -> np.ndarray:
    """``value`` as a 0-d or 1-d float64 array of concrete real numbers."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be concrete numbers (the coefficients are solved on the host with "
                        "numpy), got a traced value.")
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:  # ragged
            raise TypeError(f"{name} must be a number or a flat sequence of numbers, got "
                            f"{value!r}.") from None
        if value.dtype == object or value.dtype.kind in "USb":
            raise TypeError(f"{name} must hold real numbers, got {value.tolist()!r}.")
    concrete = concrete_value(name, value)
    if concrete is None:
        raise TypeError(f"{name} must be a real number or a sequence of them, got {type(value).__name__}.")
    if concrete.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-d sequence, got shape {concrete.shape}.")
    return concrete


def _profiles(prefix: str, steps: Any, sigma_rels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked, broadcast ``(steps, sigma_rels)`` of a set of profiles, each 1-d float64."""
    steps_name, sigma_name = f"{prefix}_steps", f"{prefix}_sigma_rels"
    t, s = _real_vector(steps_name, steps), _real_vector(sigma_name, sigma_rels)
    try:
        t, s = np.broadcast_arrays(np.atleast_1d(t), np.atleast_1d(s))
    except ValueError:
        raise ValueError(f"{steps_name} and {sigma_name} must have the same length (or one be a single "
                         f"number), got {t.size} and {s.size}.") from None
    if t.size == 0:
        raise ValueError(f"{steps_name} and {sigma_name} must describe at least one profile, got none.")
    bad = ~(np.isfinite(t) & (t > 0))
    if bad.any():
        raise ValueError(f"{steps_name} must be finite and > 0 (update counts t >= 1), got {t[bad][0]!r}.")
    bad = ~(np.isfinite(s) & (s > 0) & (s < _MAX_SIGMA_REL))
    if bad.any():
        raise ValueError(f"{sigma_name} must be in (0, 1/sqrt(12) = 0.2887), got {s[bad][0]!r}.")
    return t, s


def _exponents(sigma_rels: np.ndarray) -> np.ndarray:
    """:math:`\\gamma` of each width, solved once per distinct value."""
    unique, index = np.unique(sigma_rels, return_inverse=True)
    return np.asarray([ema_gamma(float(v)) for v in unique], np.float64)[index].reshape(sigma_rels.shape)


def _inner_products(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """:math:`\\langle p_a, p_b \\rangle` of the module docstring for every row a and column b."""
    t_a, g_a, t_b, g_b = t_a[:, None], g_a[:, None], t_b[None, :], g_b[None, :]
    exponent = np.where(t_a < t_b, g_b, -g_a)
    return ((g_a + 1) * (g_b + 1) * (t_a / t_b) ** exponent) / ((g_a + g_b + 1) * np.maximum(t_a, t_b))


def posthoc_ema_coefficients(in_steps: Any, in_sigma_rels: Any, out_steps: Any,
                             out_sigma_rels: Any) -> np.ndarray:
    r"""The ``(len(in), len(out))`` float64 weights of snapshots that give other EMA profiles.

    Column j holds the :math:`x` of the module docstring for output profile j: the solution of
    :math:`A x = b_j` (``numpy.linalg.solve`` on the Gram matrix of the input profiles, as
    EDM2's ``solve_posthoc_coefficients``), scaled to sum to 1. Steps are the update counts
    :math:`t` of the snapshots (EDM2 counts images: only ratios of steps matter).

    Args:
      in_steps: The step of each input snapshot profile (a number or a 1-d sequence), > 0.
      in_sigma_rels: The width of each input profile, in (0, 1/sqrt(12)); broadcast against
        ``in_steps``.
      out_steps: The step of each wanted profile, > 0.
      out_sigma_rels: The width of each wanted profile; broadcast against ``out_steps``.

    Returns:
      ``coefficients[i, j]``, the weight of input i in output j; each column sums to 1.

    Raises:
      TypeError: an argument is not real numbers (a string, a bool, None, ragged), or is traced.
      ValueError: an argument is 2-d or more, empty, or out of range; a steps / sigma_rels pair
        of different lengths; an input profile repeated or the inputs linearly dependent (the
        system is singular).

    >>> import numpy as np
    >>> x = posthoc_ema_coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, 0.1)
    >>> np.round(x[:, 0], 12) + 0.0  # a profile that was snapshotted is its own snapshot
    array([0., 0., 0., 1.])
    """
    t_in, s_in = _profiles("in", in_steps, in_sigma_rels)
    t_out, s_out = _profiles("out", out_steps, out_sigma_rels)
    seen: set[tuple[float, float]] = set()
    for pair in zip(t_in.tolist(), s_in.tolist(), strict=True):
        if pair in seen:
            raise ValueError(f"in_steps / in_sigma_rels repeat the profile (step {pair[0]:g}, sigma_rel "
                             f"{pair[1]:g}): each input profile must appear once (A would be singular).")
        seen.add(pair)
    g_in, g_out = _exponents(s_in), _exponents(s_out)
    gram = _inner_products(t_in, g_in, t_in, g_in)
    rhs = _inner_products(t_in, g_in, t_out, g_out)
    try:
        x = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        raise ValueError("the input profiles are linearly dependent (the Gram matrix is singular); use "
                         "fewer, more distinct snapshots.") from None
    return x / np.sum(x, axis=0, keepdims=True)


# --- snapshots --------------------------------------------------------------------------------


def _snapshot_path(folder: Path, step: int) -> Path:
    return folder / SNAPSHOT_FOLDER / f"snapshot-{step:09d}.msgpack"


def save_ema_snapshot(folder: str | os.PathLike, state: Any) -> Path:
    """Writes every EMA profile of ``state`` to ``folder/snapshots/snapshot-<step>.msgpack``, atomically.

    A snapshot of the same step is replaced (a resumed run rewrites the snapshots after its
    checkpoint, bitwise the same): a kill leaves the old file or the new one, never half of one.

    Args:
      folder: The run's folder (``snapshots/`` is created in it if missing).
      state: A :class:`karras_jax.TrainState` with ``ema_profiles``, at step >= 1.

    Returns:
      The snapshot's path.

    Raises:
      TypeError: ``state`` is not a train state with EMA profiles (``ema_sigma_rels``).
      ValueError: ``state`` tracks no profiles, or is at step 0 (no update averaged yet).
      OSError: the write failed; a previous snapshot of that step is intact.
    """
    sigma_rels = getattr(state, "ema_sigma_rels", None)
    if not isinstance(sigma_rels, tuple):
        raise TypeError(f"state must be a kj.TrainState with ema_profiles, got {type(state).__name__}.")
    if not sigma_rels:
        raise ValueError("state tracks no EMA profiles to snapshot: create it with "
                         "kj.TrainState.create(params, optimizer, ema_profiles=(0.05, 0.1)).")
    step = int(np.asarray(jax.device_get(state.step)))
    if step < 1:
        raise ValueError(f"state.step must be >= 1 to snapshot its averages (no update is averaged yet), "
                         f"got {step}.")
    payload = {
        "format": _SNAPSHOT_FORMAT,
        "step": step,
        "sigma_rels": np.asarray(sigma_rels, np.float64),
        "profiles": flax.serialization.to_state_dict(
            [jax.tree_util.tree_map(to_host, profile) for profile in state.ema_profiles]),
    }
    data = flax.serialization.msgpack_serialize(payload)
    path = _snapshot_path(Path(folder), step)
    path.parent.mkdir(exist_ok=True)
    return atomic_write(path, lambda f: f.write(data))


def list_ema_snapshots(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every snapshot file of the run in ``folder``, by step (no file is read).

    Raises:
      FileNotFoundError: ``folder`` has no ``snapshots/`` or no ``snapshot-<step>.msgpack`` in it.
    """
    where = Path(folder) / SNAPSHOT_FOLDER
    if not where.is_dir():
        raise FileNotFoundError(f"no EMA snapshots in {folder} (expected the folder {where}): train with "
                                "kj.TrainState.create(..., ema_profiles=(0.05, 0.1)) and "
                                "kj.fit(..., snapshot_every=N).")
    found = []
    for path in where.iterdir():
        match = _SNAPSHOT_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    if not found:
        raise FileNotFoundError(f"no EMA snapshots in {where} (no snapshot-<step>.msgpack file).")
    return sorted(found)


_DAMAGED = "Delete it (a resumed run rewrites the snapshots after its checkpoint) or restore a copy."


def _read_snapshot(path: Path, step: int, target: Any) -> EmaSnapshot:
    """One snapshot file, every field checked; profiles read into ``target``'s structure if given."""
    payload = read_msgpack(path, "EMA snapshot", _SNAPSHOT_FORMAT, _DAMAGED)
    if payload.get("step") != step:
        raise ValueError(f"{path} is a damaged EMA snapshot: it holds step {payload.get('step')!r}, its name "
                         f"says {step}. {_DAMAGED}")
    try:
        sigma_rels = check_sigma_rels("sigma_rels", np.asarray(payload["sigma_rels"], np.float64))
        profiles = payload["profiles"]
        if not isinstance(profiles, dict) or set(profiles) != {str(i) for i in range(len(sigma_rels))}:
            raise ValueError(f"{len(sigma_rels)} profiles expected")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged EMA snapshot ({err}). {_DAMAGED}") from None
    weights = [profiles[str(i)] for i in range(len(sigma_rels))]
    if target is not None:
        weights = [restore_tree(path, target, w, f"the weights being restored (profile {i})")
                   for i, w in enumerate(weights)]
    return EmaSnapshot(step=step, sigma_rels=sigma_rels, profiles=tuple(weights))


def load_ema_snapshots(folder: str | os.PathLike, target: Any = None) -> list[EmaSnapshot]:
    """Every EMA snapshot of the run in ``folder``, by step.

    Args:
      folder: The run's folder (the one given to :func:`karras_jax.fit`).
      target: The weights' pytree (real arrays or ``jax.eval_shape`` structs): each profile is
        read into its structure, every entry, shape and dtype checked. None gives the weights
        as ``flax.serialization`` state dicts (nested dicts of NumPy arrays: a linen model's
        params as they are).

    Raises:
      FileNotFoundError: ``folder`` has no ``snapshots/`` or no snapshot in it.
      OSError: a snapshot cannot be read (named).
      ValueError: a snapshot is truncated, corrupt or not one (named), or does not match ``target``.
    """
    return [_read_snapshot(path, step, target) for step, path in list_ema_snapshots(folder)]


# --- reconstruction ---------------------------------------------------------------------------


class _Sum:
    """Float64 running sums of weighted pytrees, one per output profile."""

    def __init__(self, count: int) -> None:
        self.sums: list[Any] = [None] * count
        self.structure: Any = None
        self.dtypes: list[Any] = []
        self.shapes: list[tuple[int, ...]] = []

    def add(self, weights: Any, coefficients: np.ndarray, where: str) -> None:
        leaves, structure = jax.tree_util.tree_flatten(weights)
        if self.structure is None:
            self.structure, self.dtypes = structure, [np.asarray(leaf).dtype for leaf in leaves]
            self.shapes = [np.shape(leaf) for leaf in leaves]
        elif structure != self.structure or [np.shape(leaf) for leaf in leaves] != self.shapes:
            raise ValueError(f"{where} has other weights (entries or shapes) than the first snapshot's; "
                             "every snapshot of a run holds the same network.")
        host = [np.asarray(leaf, np.float64) for leaf in leaves]
        for j, c in enumerate(coefficients):
            if self.sums[j] is None:
                self.sums[j] = [np.zeros(np.shape(leaf), np.float64) for leaf in host]
            for total, leaf in zip(self.sums[j], host, strict=True):
                np.add(total, c * leaf, out=total)  # in place, 0-d arrays too

    def results(self) -> list[Any]:
        return [jax.tree_util.tree_unflatten(self.structure, [leaf.astype(dtype) for leaf, dtype
                                                              in zip(sums, self.dtypes, strict=True)])
                for sums in self.sums]


def _out_step(step: Any, steps: Sequence[int]) -> int:
    """The step to reconstruct at: the last snapshot's, or a given one that a snapshot has."""
    if step is None:
        return max(steps)
    step = check_count("step", step)
    if step not in steps:
        shown = sorted(set(steps))
        listed = ", ".join(map(str, shown[:3])) + (f", ..., {shown[-1]}" if len(shown) > 3 else "")
        raise ValueError(f"step must be the step of a snapshot ({listed}), got {step}.")
    return step


def reconstruct_ema(snapshots: Sequence[EmaSnapshot], sigma_rel: float, *, step: int | None = None) -> Any:
    r"""The EMA of width ``sigma_rel`` at ``step``, from EMA snapshots (EDM2's post-hoc EMA).

    :math:`\sum_i x_i \hat\theta_i` over every profile of every snapshot up to ``step``, with
    :func:`posthoc_ema_coefficients`; summed in float64 on the host, each leaf returned as a
    NumPy array of the snapshots' dtype.

    Args:
      snapshots: :class:`EmaSnapshot` records (e.g. :func:`load_ema_snapshots`), any order.
      sigma_rel: The width wanted, in (0, 1/sqrt(12)).
      step: The step to reconstruct at, the step of one of the snapshots (later ones are not
        used); default the last.

    Returns:
      The averaged weights, with the snapshots' structure.

    Raises:
      TypeError: ``snapshots`` is not a sequence of :class:`EmaSnapshot`, ``sigma_rel`` not a
        real number.
      ValueError: no snapshots, ``sigma_rel`` out of range, ``step`` not a snapshot's, snapshots
        of different weights, or a profile repeated (as :func:`posthoc_ema_coefficients`).
    """
    if not isinstance(snapshots, Sequence) or not all(isinstance(s, EmaSnapshot) for s in snapshots):
        raise TypeError(f"snapshots must be a sequence of kj.EmaSnapshot (kj.load_ema_snapshots), got "
                        f"{type(snapshots).__name__}.")
    if not snapshots:
        raise ValueError("snapshots must hold at least one kj.EmaSnapshot, got none.")
    ema_gamma(sigma_rel)  # the range check, naming sigma_rel
    sigma_rel = float(np.asarray(sigma_rel))
    out_step = _out_step(step, [s.step for s in snapshots])
    used = [(s, i) for s in sorted(snapshots, key=lambda s: s.step) if s.step <= out_step
            for i in range(len(s.sigma_rels))]
    coefficients = posthoc_ema_coefficients([s.step for s, _ in used], [s.sigma_rels[i] for s, i in used],
                                            out_step, sigma_rel)
    total = _Sum(1)
    for (snapshot, i), row in zip(used, coefficients, strict=True):
        total.add(snapshot.profiles[i], row, f"the snapshot of step {snapshot.step}")
    return total.results()[0]


def reconstruct_ema_from_folder(folder: str | os.PathLike, sigma_rels: Sequence[float], *,
                                step: int | None = None, target: Any = None) -> dict[float, Any]:
    """``{sigma_rel: weights}``: :func:`reconstruct_ema` of each width from a run's snapshot files.

    Reads each snapshot file once and keeps only the running sums (float64, one per width) in
    memory, not every snapshot. Every snapshot must hold the profiles of the first.

    Args:
      folder: The run's folder (holding ``snapshots/``).
      sigma_rels: The widths wanted (distinct), each in (0, 1/sqrt(12)).
      step: The step to reconstruct at, one a snapshot has; default the last snapshot's.
      target: As :func:`load_ema_snapshots`: the weights' structure, or None for state dicts.

    Raises:
      FileNotFoundError: no snapshots in ``folder``.
      OSError: a snapshot cannot be read.
      TypeError: ``sigma_rels`` is not a tuple or list of real numbers.
      ValueError: ``sigma_rels`` out of range or repeated, ``step`` not a snapshot's, a damaged
        snapshot or one of other profiles or weights (named).
    """
    sigma_rels = check_sigma_rels("sigma_rels", sigma_rels)
    if not sigma_rels:
        raise ValueError("sigma_rels must name at least one width, got ().")
    files = list_ema_snapshots(folder)
    out_step = _out_step(step, [s for s, _ in files])
    files = [(s, path) for s, path in files if s <= out_step]
    total, coefficients, widths = _Sum(len(sigma_rels)), None, None
    for k, (snapshot_step, path) in enumerate(files):
        snapshot = _read_snapshot(path, snapshot_step, target)
        if widths is None:
            widths = snapshot.sigma_rels
            steps = np.repeat([s for s, _ in files], len(widths))
            coefficients = posthoc_ema_coefficients(steps, np.tile(widths, len(files)), out_step, sigma_rels)
        elif snapshot.sigma_rels != widths:
            raise ValueError(f"{path} holds profiles of widths {snapshot.sigma_rels}, the first snapshot "
                             f"({files[0][1].name}) {widths}: the snapshots are not of one run.")
        for i, weights in enumerate(snapshot.profiles):
            total.add(weights, coefficients[k * len(widths) + i], str(path))
    return dict(zip(sigma_rels, total.results(), strict=True))


def write_posthoc_ema(folder: str | os.PathLike, out: str | os.PathLike, sigma_rels: Sequence[float], *,
                      step: int | None = None) -> list[Path]:
    """Reconstructs each width from the run in ``folder`` and writes it as a loadable model folder.

    ``out/ema-<sigma_rel, 3 decimals>/`` gets a ``checkpoint.msgpack`` whose EMA weights are
    the reconstruction (:func:`karras_jax.load_params` reads it; its position is the step, its
    key and metadata the run's checkpoint's, without the losses (``key(0)`` and no metadata if
    the run has no checkpoint), plus ``posthoc_ema``: width, step, number of snapshots,
    source) and a copy of the run's ``model.json`` if it has one, so ``karras-jax generate
    --model out/ema-0.100`` (and ``sample-digits --checkpoint`` for a digits run) samples
    from it. Each file is written atomically, the checkpoint last: a kill
    leaves a folder without a checkpoint or a complete one. The folders are not train states:
    :func:`karras_jax.fit` cannot resume from them.

    Args:
      folder: The run's folder (its ``snapshots/``, and its checkpoint and ``model.json`` if any).
      out: Where to write; created if missing.
      sigma_rels: The widths (distinct at 3 decimals), each in (0, 1/sqrt(12)).
      step: As :func:`reconstruct_ema_from_folder`.

    Returns:
      The folders written, in the order of ``sigma_rels``.

    Raises:
      As :func:`reconstruct_ema_from_folder`; also ``ValueError`` for widths equal at 3
      decimals, for a damaged checkpoint or ``model.json`` in ``folder``, and ``OSError`` if
      ``out`` cannot be written. ``out`` is created (and checked) once the arguments, the
      snapshots' names and the run's checkpoint and ``model.json`` have passed their checks,
      before any snapshot is read.
    """
    sigma_rels = check_sigma_rels("sigma_rels", sigma_rels)
    names = [f"ema-{s:.3f}" for s in sigma_rels]
    if len(set(names)) != len(names):
        raise ValueError(f"sigma_rels must differ at 3 decimals (each names a folder ema-<sigma_rel>), got "
                         f"{sigma_rels}.")
    folder = Path(folder)
    files = list_ema_snapshots(folder)
    out_step = _out_step(step, [s for s, _ in files])
    count = sum(s <= out_step for s, _ in files)
    key, metadata = jax.random.key(0), {}
    if (folder / CHECKPOINT_FILE).exists():
        _, key, metadata = checkpoint_fields(folder)
        metadata.pop("losses", None)
    recipe = load_model_recipe(folder) if (folder / MODEL_FILE).exists() else None
    out = check_writable_folder(out)
    written = []
    for name, (sigma_rel, weights) in zip(names, reconstruct_ema_from_folder(folder, sigma_rels,
                                                                             step=out_step).items(),
                                          strict=True):
        target = out / name
        target.mkdir(exist_ok=True)
        for stale in (*target.glob(f".{CHECKPOINT_FILE}.*.tmp"), *target.glob(f".{MODEL_FILE}.*.tmp")):
            stale.unlink(missing_ok=True)  # left by a kill mid-write
        if recipe is not None:
            save_model_recipe(target, *recipe)
        info = {"sigma_rel": sigma_rel, "step": out_step, "snapshots": count, "source": str(folder)}
        save_checkpoint(target, {"ema": weights}, position=out_step, key=key,
                        metadata={**metadata, "posthoc_ema": info})
        written.append(target)
    return written
