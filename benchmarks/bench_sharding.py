"""Measurement 4c: the batch sharded over 8 CPU devices against 1 device, total throughput.

The 8 devices are host-platform CPU devices, which exist only if
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is set before JAX starts, so the
measurement runs in a child process (``python -m benchmarks.bench_sharding``) with that
flag and ``JAX_PLATFORMS=cpu``; the child prints its row as JSON. On a GPU machine this
still measures CPU devices (the parent's backend is irrelevant to it).
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from typing import Any

from benchmarks.suite import child_rows


def run(suite: Any) -> list[dict[str, Any]]:
    """Parent side: the child's row."""
    return child_rows("bench_sharding", suite.preset.name, suite.preset.shard_devices)


def _child(preset_name: str) -> dict[str, Any]:
    """Child side: the row, timed on this process's 8 CPU devices (and on 1 of them)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import karras_jax as kj
    from benchmarks.presets import PRESETS
    from benchmarks.suite import Suite, batch_keys, ratio, row

    suite = Suite(PRESETS[preset_name])
    devices = suite.preset.shard_devices
    if jax.device_count() < devices:
        raise RuntimeError(f"expected {devices} CPU devices, got {jax.devices()}")
    apply_fn, params, shape = suite.model("mlp")
    n, batch = suite.preset.steps[0], suite.preset.shard_batch
    state = suite.state(n)
    keys = batch_keys(batch)
    fns = {}
    for count in (devices, 1):
        mesh = Mesh(np.asarray(jax.devices()[:count]), ("data",))
        sampler = kj.make_sharded_sampler(apply_fn, state, suite.config, shape, mesh)
        fns[f"{count}_devices"] = partial(sampler, params, jax.device_put(keys, kj.batch_sharding(mesh)))
    fns["kj.sample_unsharded"] = partial(suite.sampler("mlp", n), params, keys)
    times = suite.compare(fns)
    return row(
        "4c_sharding",
        {
            "model": "mlp",
            "B": batch,
            "N": n,
            "devices": devices,
            "platform": jax.devices()[0].platform,
            "host_cores": os.cpu_count(),
        },
        times,
        throughput_ratio=ratio(times["1_devices"], times[f"{devices}_devices"]),
    )


def main() -> None:
    """``python -m benchmarks.bench_sharding --preset quick``: print the row as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    print(json.dumps(_child(args.preset)))


if __name__ == "__main__":
    main()
