"""Measurement 8: what the samplers' Python wrappers add to each call.

``kj.make_sampler`` and ``kj.make_sharded_sampler`` return ``sampler(params, keys, cond=None,
x_init=None, *, config=, state=)``, a Python function around its jitted program
``sampler.jitted(params, keys, cond, x_init, state, draws)``. Both are timed at the MLP, B=1,
N=18 (where the program is fast, so that the wrapper's share is largest), against their
jitted programs called with the very state (holding its config) the wrapper passes (read
from the wrapper's closure; ``karras_jax._compiled.prepare`` of it if it cannot be found).
The sharded sampler runs on a 1-device mesh with its keys placed on
``kj.batch_sharding(mesh)`` beforehand (its fast path).

Method: ``call_repeats`` calls of each, alternating call by call (wrapper, jitted,
jitted, wrapper, ...). Each call is timed from the call until it returns, and then waited
for with ``block_until_ready`` outside the timed span, before the next call. The program
runs asynchronously, so the timed span is the host's work for the call (the wrapper, then
the dispatch of the program): what a wrapper adds lands there in full, while the run
time's jitter (hundreds of microseconds at this size on a shared CPU) stays out of it.
(Timing call plus wait was tried; its medians differ by 0-8 us between identical runs.)
The figure is the median over pairs of ``t(wrapper) - t(jitted)`` of the two calls of a
pair, in microseconds; the median time of each is kept too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import karras_jax as kj
from benchmarks.suite import Suite, batch_keys, row
from benchmarks.timing import Timing
from karras_jax._compiled import prepare

WARMUP = 50


def wrapper_arguments(
    sampler: Callable[..., Any], config: kj.KarrasVeConfig, state: kj.KarrasVeState
) -> tuple[Any, Any, str]:
    """``(state, draws, where from)``: what ``sampler`` passes to its jitted program."""
    closure = sampler.__closure__ or ()
    cells = dict(zip(sampler.__code__.co_freevars, (c.cell_contents for c in closure), strict=True))
    if "default" in cells:
        return cells["default"].state, cells["default"].draws, "wrapper closure"
    prepared = prepare(state, config, np.dtype(np.float32))
    return prepared.state, prepared.draws, "karras_jax._compiled.prepare"


def alternate(fns: dict[str, Callable[[], Any]], calls: int) -> dict[str, list[float]]:
    """Seconds of each of ``calls`` calls per variant until it returns (then waited for, untimed),
    alternating (order reversed every call)."""
    names = list(fns)
    for _ in range(WARMUP):
        for name in names:
            jax.block_until_ready(fns[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for j in range(calls):
        for name in names if j % 2 == 0 else names[::-1]:
            fn = fns[name]
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            jax.block_until_ready(out)
    return times


def _timing(seconds: list[float]) -> Timing:
    # the raw per-call figures are many; keep the summary only
    return Timing(min(seconds), statistics.median(seconds), max(seconds), len(seconds), WARMUP)


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 8: ``make_sampler`` and ``make_sharded_sampler`` (1-device mesh)."""
    apply_fn, params, shape = suite.model("mlp")
    n, batch = 18, 1
    state = suite.state(n)
    keys = batch_keys(batch)
    calls = suite.preset.call_repeats
    rows = []

    plain = suite.sampler("mlp", n)
    state_arg, draws, source = wrapper_arguments(plain, suite.config, state)
    variants = {
        "make_sampler": (
            partial(plain, params, keys),
            partial(plain.jitted, params, keys, None, None, state_arg, draws),
            source,
        )
    }
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    sharded = kj.make_sharded_sampler(apply_fn, state, suite.config, shape, mesh)
    placed = jax.device_put(keys, kj.batch_sharding(mesh))
    state_s, draws_s, source_s = wrapper_arguments(sharded, suite.config, state)
    variants["make_sharded_sampler"] = (
        partial(sharded, params, placed),
        partial(sharded.jitted, params, placed, None, None, state_s, draws_s),
        source_s,
    )
    for name, (wrapper, jitted, source) in variants.items():
        np.testing.assert_array_equal(np.asarray(wrapper()), np.asarray(jitted()))
        times = alternate({"wrapper": wrapper, "jitted": jitted}, calls)
        paired = [w - j for w, j in zip(times["wrapper"], times["jitted"], strict=True)]
        rows.append(
            row(
                "8_call_overhead",
                {
                    "model": "mlp",
                    "B": batch,
                    "N": n,
                    "sampler": name,
                    "calls": calls,
                    "arguments_from": source,
                    "devices": 1 if name == "make_sharded_sampler" else None,
                },
                {k: _timing(v) for k, v in times.items()},
                overhead_us=statistics.median(paired) * 1e6,
                overhead_of_medians_us=(
                    statistics.median(times["wrapper"]) - statistics.median(times["jitted"])
                )
                * 1e6,
            )
        )
    return rows
