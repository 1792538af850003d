"""Progress bars for long jobs, drawn by tqdm on stderr (what EDM, k-diffusion and most JAX code use).

:func:`progress_bar` is the bar of the host loops (``kj.fit``, ``kj.generate``);
:func:`step_bar` is the bar of a compiled sampler, fed one step index at a time from a host
callback.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from karras_jax._validation import check_count

__all__ = ["progress_bar", "step_bar"]


def progress_bar(total: int, *, unit: str, initial: int = 0, label: str = "") -> tqdm:
    """A tqdm bar on stderr counting ``total`` ``unit``s, starting at ``initial`` (a resumed job).

    tqdm's rate counts only the work done after ``initial``, so a resumed job shows its own
    speed, and its ETA is for the part that is left.
    """
    return tqdm(total=total, initial=initial, unit=unit, desc=label.strip() or None, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def step_bar(total: int, *, label: str = "sampling") -> Callable[[Any], None]:
    """``show(i)`` for a sampler's host callback: step ``i`` (0-based) of ``total`` is done.

    The bar opens at step 0 on stderr and closes (its last line left on screen) after step
    ``total - 1``; a compiled sampler called again draws a new bar. The same step reported twice
    in a row (a callback run once per vmapped sample) moves the bar once. Safe to call from the
    runtime's callback threads.

    Raises:
      ValueError: ``total`` is not an int >= 1.

    Example: ``jax.debug.callback(step_bar(n), i, ordered=True)`` inside the loop body.
    """
    total = check_count("total", total)
    lock = threading.Lock()
    current: dict[str, Any] = {"bar": None, "last": None}

    def show(i: Any) -> None:
        i = int(i)
        with lock:
            if i == current["last"] and total > 1:
                return  # the same step again (one call per vmapped sample): already drawn
            current["last"] = i
            bar = current["bar"]
            if bar is None or i < bar.n:  # a new call of the sampler
                if bar is not None:
                    bar.close()
                bar = current["bar"] = tqdm(total=total, unit="step", desc=label, file=sys.stderr,
                                            dynamic_ncols=True)
            bar.update(i + 1 - bar.n)
            if i + 1 >= total:
                bar.close()
                current["bar"] = None

    return show
