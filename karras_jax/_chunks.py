"""Fixed-size chunks of a long run of rows, padded so that one compiled program serves them all."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from karras_jax._validation import check_count

__all__ = ["padded_chunks"]


def padded_chunks(n: int, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(index, count)`` for each run of ``size`` rows out of ``n``, the last one padded.

    ``index`` is a ``(size,)`` int64 array: the chunk's ``count`` row numbers, then its first
    row repeated up to ``size`` (a short last chunk). Index the inputs with it, run the jitted
    function and keep the first ``count`` outputs: every call has the same shape, so nothing
    is compiled twice, and with per-row keys the padding rows change no real row's result.

    Raises:
      ValueError: ``n`` or ``size`` is not an int >= 1.

    >>> [(index.tolist(), count) for index, count in padded_chunks(5, 2)]
    [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]
    """
    n, size = check_count("n", n), check_count("size", size)
    for lo in range(0, n, size):
        count = min(size, n - lo)
        index = np.full((size,), lo, np.int64)
        index[:count] = np.arange(lo, lo + count)
        yield index, count
