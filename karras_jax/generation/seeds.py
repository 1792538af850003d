"""Seed sets in EDM's syntax, and the one rule that maps a seed to its PRNG key.

A seed set is held as runs of consecutive seeds (:class:`SeedRuns`), so ``0-4294967295`` costs
two integers, not 32 GiB: a generation job takes each shard's seeds from it by position, one
shard at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["MAX_SEED", "SeedRuns", "parse_seeds", "seed_keys", "seed_runs"]

#: Seeds are in [0, MAX_SEED]: one uint32 each.
MAX_SEED = 2**32 - 1

_SYNTAX = "a non-empty list like '0-49999' or '0,5,10-20'"


@dataclasses.dataclass(frozen=True, eq=False)
class SeedRuns:
    """A sorted set of distinct seeds as runs of consecutive ones; memory grows with the runs only.

    Build one with :func:`seed_runs`. ``len(runs)`` is the number of seeds; ``runs.take(lo, hi)``
    the seeds at positions ``lo .. hi - 1`` (ascending); ``str(runs)`` the set in EDM's syntax
    with runs collapsed (``"0-9,20"``), the same text for the same set however it was written.

    Attributes:
      starts: The first seed of each run (int64, ascending).
      offsets: ``offsets[r]`` is the position of run r's first seed; the last entry is the
        number of seeds (int64, one longer than ``starts``).
    """

    starts: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SeedRuns) and np.array_equal(self.starts, other.starts)
                and np.array_equal(self.offsets, other.offsets))

    def __hash__(self) -> int:
        return hash((self.starts.tobytes(), self.offsets.tobytes()))

    def __str__(self) -> str:
        stops = self.starts + np.diff(self.offsets) - 1
        return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(self.starts.tolist(), stops.tolist(),
                                                                          strict=True))

    def take(self, lo: int, hi: int) -> np.ndarray:
        """The seeds at positions ``lo .. hi - 1`` (clipped to the set) as an int64 array."""
        positions = np.arange(max(lo, 0), min(hi, len(self)), dtype=np.int64)
        run = np.searchsorted(self.offsets, positions, side="right") - 1
        return self.starts[run] + (positions - self.offsets[run])


def _runs(starts: np.ndarray, stops: np.ndarray, text: Any) -> SeedRuns:
    """Inclusive ``[start, stop]`` items (any order) to merged runs; refuses a seed given twice."""
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], stops[order]
    if starts.size > 1:
        reach = np.maximum.accumulate(stops)[:-1]  # the highest seed of all items before each one
        overlap = np.flatnonzero(starts[1:] <= reach)
        if overlap.size:
            raise ValueError(f"seeds: {int(starts[1:][overlap[0]])} is given more than once (in {text}).")
    new_run = np.concatenate([[True], starts[1:] != stops[:-1] + 1])
    first = starts[new_run]
    counts = np.add.reduceat(stops - starts + 1, np.flatnonzero(new_run))
    return SeedRuns(starts=first, offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def _parse_text(text: str) -> SeedRuns:
    if not text.strip():
        raise ValueError(f"seeds must be {_SYNTAX}.")
    starts, stops = [], []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(item), int(item))
        except ValueError:
            raise ValueError(f"seeds: {item!r} is not a seed or a range a-b (in {text!r}).") from None
        if a > b:
            raise ValueError(f"seeds: the range {item!r} is reversed.")
        if a < 0 or b > MAX_SEED:
            raise ValueError(f"seeds must lie in 0 .. {MAX_SEED}, got {item!r}.")
        starts.append(a)
        stops.append(b)
    return _runs(np.asarray(starts, np.int64), np.asarray(stops, np.int64), repr(text))


def seed_runs(seeds: str | ArrayLike | SeedRuns) -> SeedRuns:
    """A seed set as :class:`SeedRuns`: from EDM's syntax (``"0-49999"``, ``"0,5,10-20"``) or the seeds.

    Ranges are inclusive. Nothing proportional to a range's length is allocated, so
    ``seed_runs("0-4294967295")`` is two integers.

    Raises:
      ValueError: empty input, a malformed item, a reversed range, a seed outside
        [0, 2**32 - 1], a seed given twice, or an array that is not 1-D integers.

    >>> runs = seed_runs("10-12, 0,5")
    >>> len(runs), str(runs), runs.take(1, 3).tolist()
    (5, '0,5,10-12', [5, 10])
    """
    if isinstance(seeds, SeedRuns):
        return seeds
    if isinstance(seeds, str):
        return _parse_text(seeds)
    array = np.asarray(seeds)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"seeds must be {_SYNTAX}, or a non-empty 1-D list of integers.")
    if array.min() < 0 or array.max() > MAX_SEED:
        bad = array[(array < 0) | (array > MAX_SEED)][0]
        raise ValueError(f"seeds must lie in 0 .. {MAX_SEED}, got {int(bad)}.")
    array = array.astype(np.int64)
    return _runs(array, array, "the list")


def parse_seeds(text: str) -> np.ndarray:
    """``"0-49999"``, ``"0,5,10-20"`` (EDM's ``generate.py`` syntax) to a sorted int64 array.

    Ranges are inclusive. The result is sorted ascending; it is the order samples are
    generated and sharded in. This holds every seed in memory (8 bytes each); use
    :func:`seed_runs` for a large range.

    Raises:
      ValueError: empty text, a malformed item, a reversed range, a seed outside
        [0, 2**32 - 1], or a seed given twice.

    >>> parse_seeds("0,5,10-12").tolist()
    [0, 5, 10, 11, 12]
    """
    if not isinstance(text, str):
        raise ValueError(f"seeds must be {_SYNTAX}.")
    runs = _parse_text(text)
    return runs.take(0, len(runs))


def seed_keys(seeds: ArrayLike) -> jax.Array:
    """The keys of seeds: seed s is sampled from ``jax.random.key(s)`` (a contract).

    With the noise-stream contract this makes sample s the same whatever the batch, the
    device count or the process count it is generated in.
    """
    return jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.int64).astype(np.uint32)))
