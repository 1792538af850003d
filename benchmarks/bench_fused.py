"""Measurement 1: ``kj.sample`` (one XLA program) against a Python loop of jitted steps."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

import karras_jax as kj
from benchmarks.cases import model_cases
from benchmarks.loops import make_python_loop
from benchmarks.suite import Suite, batch_keys, ratio, row


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 1: every (model, B, N) of the preset, both timed interleaved."""
    rows = []
    for name, batch, n in model_cases(suite.preset):
        apply_fn, params, shape = suite.model(name)
        state = suite.state(n)
        keys = batch_keys(batch)
        sampler = suite.sampler(name, n)
        loop = make_python_loop(apply_fn, state, suite.config)
        x0 = kj.initial_noise(keys, state, shape)
        key = jax.random.key(1)
        times = suite.compare(
            {
                "kj.sample": partial(sampler, params, keys),
                "python_loop": partial(loop, params, x0, key),
            }
        )
        rows.append(
            row(
                "1_fused_vs_loop",
                {"model": name, "B": batch, "N": n},
                times,
                speedup=ratio(times["python_loop"], times["kj.sample"]),
            )
        )
    return rows
