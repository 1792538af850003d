"""Measurement 13: a DiT of about 50M parameters sampled with its weights split 4-way over a
``model`` mesh axis against the same weights replicated, on 8 CPU devices, side by side.

Mesh ``(data=2, model=4)`` of host-platform CPU devices (a child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, as measurement 4c). Both samplers are
``kj.make_sharded_sampler`` of the same ``kj.DiT`` under ``kj.precondition(kind="edm")``, the
seeds split over ``data``; one gets the weights placed by ``kj.dit_shardings`` (kernels split
over ``model``), the other the weights replicated. Recorded per variant: seconds per call and
per sample (interleaved timing, :func:`benchmarks.timing.compare`), the compiled program's
per-device argument and temporary bytes (``sampler.lower(...).compile().memory_analysis()``),
and the weight bytes each device actually holds (its addressable shards), with the ratios
replicated / split. Eight CPU "devices" share this machine's cores, so the time ratio says
what the collectives cost on CPU, not what a pod gains; the memory ratios carry over.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from typing import Any

from benchmarks.suite import child_rows

# About 50M parameters: width 512, depth 11 (18 width^2 per block with adaLN), 16x16x3 images.
DIT = dict(patch_size=2, width=512, depth=11, num_heads=8, num_classes=10)
IMAGE, BATCH, STEPS = (16, 16, 3), 8, 4


def run(suite: Any) -> list[dict[str, Any]]:
    """Parent side: the child's row."""
    return child_rows("bench_pod", suite.preset.name, 8)


def _child(preset_name: str) -> dict[str, Any]:
    """Child side: the row, on this process's 8 CPU devices."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    import karras_jax as kj
    from benchmarks.presets import PRESETS
    from benchmarks.suite import Suite, batch_keys, ratio, row

    suite = Suite(PRESETS[preset_name])
    if jax.device_count() < 8:
        raise RuntimeError(f"expected 8 CPU devices, got {jax.devices()}")
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    net = kj.DiT(**DIT)
    x = jnp.zeros((1, *IMAGE))
    variables = net.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    weights = nn.unbox(variables)
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(weights))
    placed = {"split": jax.device_put(weights, kj.dit_shardings(variables, mesh)),
              "replicated": jax.device_put(weights, NamedSharding(mesh, PartitionSpec()))}
    apply_fn = kj.precondition(lambda p, x, c, y: net.apply(p, x, c, y), kind="edm")
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=10.0, s_noise=1.0),
                             STEPS, "karras")
    keys = batch_keys(BATCH)
    labels = jnp.arange(BATCH, dtype=jnp.int32) % 10
    device = mesh.devices.flat[0]
    fns, memory = {}, {}
    for name, params in placed.items():
        sampler = kj.make_sharded_sampler(apply_fn, state, None, IMAGE, mesh)
        analysis = sampler.lower(params, keys, labels).compile().memory_analysis()
        held = sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(params)
                   for s in leaf.addressable_shards if s.device == device)
        memory[name] = {"argument_bytes": analysis.argument_size_in_bytes,
                        "temp_bytes": analysis.temp_size_in_bytes, "weight_bytes_on_device_0": held}
        fns[name] = partial(sampler, params, keys, labels)
    times = suite.compare(fns, budget_s=max(suite.preset.budget_s, 1.0) * 2, min_repeats=3)
    return row(
        "13_pod",
        {"model": "DiT", "parameters": count, **DIT, "image": list(IMAGE), "B": BATCH, "N": STEPS,
         "mesh": dict(mesh.shape), "platform": jax.devices()[0].platform, "host_cores": os.cpu_count()},
        times,
        memory=memory,
        seconds_per_sample={name: t.median / BATCH for name, t in times.items()},
        time_ratio=ratio(times["split"], times["replicated"]),
        weight_memory_ratio=memory["replicated"]["weight_bytes_on_device_0"]
        / memory["split"]["weight_bytes_on_device_0"],
        argument_memory_ratio=memory["replicated"]["argument_bytes"] / memory["split"]["argument_bytes"],
    )


def main() -> None:
    """``python -m benchmarks.bench_pod --preset quick``: print the row as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    print(json.dumps(_child(args.preset)))


if __name__ == "__main__":
    main()
