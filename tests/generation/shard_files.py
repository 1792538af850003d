"""What the generation tests read back from a job's folder (not a test module)."""

from pathlib import Path

import numpy as np


def read_shards(folder):
    """``(seeds, samples)`` of every shard in ``folder``, concatenated in shard order."""
    seeds, samples = [], []
    for path in sorted(Path(folder).glob("shard-*.npz")):
        with np.load(path) as shard:
            seeds.append(shard["seeds"])
            samples.append(shard["samples"])
    return np.concatenate(seeds), np.concatenate(samples)
