"""Seed sets in EDM's syntax, and the one rule that maps a seed to its PRNG key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["MAX_SEED", "parse_seeds", "seed_keys"]

#: Seeds are in [0, MAX_SEED]: one uint32 each.
MAX_SEED = 2**32 - 1


def parse_seeds(text: str) -> np.ndarray:
    """``"0-49999"``, ``"0,5,10-20"`` (EDM's ``generate.py`` syntax) to a sorted int64 array.

    Ranges are inclusive. The result is sorted ascending; it is the order samples are
    generated and sharded in.

    Raises:
      ValueError: empty text, a malformed item, a reversed range, a seed outside
        [0, 2**32 - 1], or a seed given twice.

    >>> parse_seeds("0,5,10-12").tolist()
    [0, 5, 10, 11, 12]
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("seeds must be a non-empty list like '0-49999' or '0,5,10-20'.")
    parts = []
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
        parts.append(np.arange(a, b + 1, dtype=np.int64))
    seeds = np.sort(np.concatenate(parts))
    repeated = seeds[1:][seeds[1:] == seeds[:-1]]
    if repeated.size:
        raise ValueError(f"seeds: {int(repeated[0])} is given more than once.")
    return seeds


def seed_keys(seeds: ArrayLike) -> jax.Array:
    """The keys of seeds: seed s is sampled from ``jax.random.key(s)`` (a contract).

    With the noise-stream contract this makes sample s the same whatever the batch, the
    device count or the process count it is generated in.
    """
    return jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.int64).astype(np.uint32)))
