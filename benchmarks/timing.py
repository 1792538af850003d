"""Wall-clock timing: warm-up, then repeats, each ended by ``block_until_ready``.

Figures are seconds per call, summarised as min / median / max over the repeats. The
repeat count adapts to the calls' duration (within a time budget), so sub-millisecond
calls get many repeats and multi-second calls few.

Variants that are compared are timed *interleaved* (:func:`compare`): round r calls
every variant once, in an order that rotates each round, so that load from other
processes on a shared machine lands on all of them alike and their ratio stays honest.
Short calls are re-warmed before each timed call, so that they are timed warm.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls (after ``warmup`` untimed ones).

    ``samples`` are the raw figures in call order (round r of :func:`compare` is index r).
    """

    min: float
    median: float
    max: float
    repeats: int
    warmup: int
    samples: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, float | int]:
        """The summary for the results file; the raw per-call figures stay in memory (thousands
        of numbers per case would make the file megabytes)."""
        out = asdict(self)
        del out["samples"]
        return out


def block(out: Any) -> Any:
    """Waits for every JAX array in ``out`` (other leaves, e.g. torch tensors, pass through)."""
    return jax.block_until_ready(out)


def once(fn: Callable[[], Any], sync: Callable[[Any], Any] = block) -> float:
    """Seconds for one call of ``fn`` (its result waited for with ``sync``)."""
    start = time.perf_counter()
    sync(fn())
    return time.perf_counter() - start


def compare(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 50,
    budget_s: float = 1.0,
    syncs: dict[str, Callable[[Any], Any]] | None = None,
    rewarm_below_s: float = 0.02,
) -> dict[str, Timing]:
    """Times several zero-argument calls, interleaved round by round.

    Args:
      fns: Name -> call (close over its arguments).
      warmup: Untimed calls of each first (compilation, caches, allocator), plus one more
        untimed call that calibrates the repeat count.
      min_repeats / max_repeats: Bounds on the timed calls of each.
      budget_s: Roughly how long all timed calls together may take; the repeat count is
        ``budget_s / (sum of the calibration calls' durations)``, clipped to the bounds.
      syncs: Per-name wait for the result; default ``jax.block_until_ready``. Torch calls
        on a GPU need ``torch.cuda.synchronize``.
      rewarm_below_s: A call shorter than this gets an untimed call right before each timed
        one: interleaving evicts a small call's weights from the CPU caches (another
        framework's run in between), which would time a cold start, not steady state.
    """
    syncs = syncs or {}
    sync = {name: syncs.get(name, block) for name in fns}
    warmup = max(warmup, 1)
    last = {name: 0.0 for name in fns}
    for _ in range(warmup + 1):  # the extra call calibrates the repeat count, past compilation
        for name, fn in fns.items():
            last[name] = once(fn, sync[name])
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(sum(last.values()), 1e-9))))
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if last[name] < rewarm_below_s:  # short call: its caches went cold under the others
                once(fns[name], sync[name])
            times[name].append(once(fns[name], sync[name]))
    return {name: summarise(ts, warmup + 1) for name, ts in times.items()}


def summarise(seconds: list[float], warmup: int = 0) -> Timing:
    """min / median / max of raw figures."""
    return Timing(
        min(seconds), statistics.median(seconds), max(seconds), len(seconds), warmup, tuple(seconds)
    )


def measure(fn: Callable[[], Any], **kwargs: Any) -> Timing:
    """:func:`compare` for a single call."""
    return compare({"fn": fn}, **kwargs)["fn"]


def timed_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Runs ``fn()`` once, returning its result and the seconds it took (compile timing)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
