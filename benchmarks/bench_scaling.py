"""Measurement 3: compile time, compiled temporary memory and run time per step against N.

Each compile uses a fresh ``jax.jit`` of a fresh closure so that no cache is hit: the
figure is what a user pays on the first call (trace + lower, then XLA compile).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

import karras_jax as kj
from benchmarks.suite import Suite, batch_keys, row
from benchmarks.timing import summarise, timed_once

COMPILE_REPEATS = 5


def _fresh(apply_fn: Any, shape: tuple[int, ...], config: kj.KarrasVeConfig) -> Any:
    def run(params: Any, keys: jax.Array, state: kj.KarrasVeState) -> jax.Array:
        return kj.sample(lambda x, s, c: apply_fn(params, x, s, c), keys, state, config, shape)

    return jax.jit(run)


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 3: one per N in ``scaling_steps``, MLP at ``scaling_batch``."""
    apply_fn, params, shape = suite.model("mlp")
    batch = suite.preset.scaling_batch
    keys = batch_keys(batch)
    steps = suite.preset.scaling_steps
    states = {n: suite.state(n) for n in steps}
    lower_s: dict[int, list[float]] = {n: [] for n in steps}
    compile_s: dict[int, list[float]] = {n: [] for n in steps}
    compiled: dict[int, Any] = {}
    # Rounds over N, so that load from other processes lands on every N alike.
    for _ in range(COMPILE_REPEATS):
        for n in steps:
            jitted = _fresh(apply_fn, shape, suite.config)
            lowered, t_lower = timed_once(partial(jitted.lower, params, keys, states[n]))
            compiled[n], t_compile = timed_once(lowered.compile)
            lower_s[n].append(t_lower)
            compile_s[n].append(t_compile)
    times = suite.compare({f"N={n}": partial(compiled[n], params, keys, states[n]) for n in steps})
    rows = []
    for n in steps:
        memory = compiled[n].memory_analysis()
        total = [a + b for a, b in zip(lower_s[n], compile_s[n], strict=True)]
        run_time = times[f"N={n}"]
        rows.append(
            row(
                "3_scaling_with_n",
                {"model": "mlp", "B": batch, "N": n},
                {
                    "trace_and_lower": summarise(lower_s[n]),
                    "xla_compile": summarise(compile_s[n]),
                    "lower_plus_compile": summarise(total),
                    "kj.sample": run_time,
                },
                temp_bytes=int(memory.temp_size_in_bytes),
                argument_bytes=int(memory.argument_size_in_bytes),
                output_bytes=int(memory.output_size_in_bytes),
                seconds_per_step=run_time.median / n,
                network_evals=2 * n - 1,
            )
        )
    return rows
