"""Measurement 3: compile time, compiled temporary memory and run time per step against N.

Each compile uses a fresh ``jax.jit`` of a fresh closure so that no cache is hit: the
figure is what a user pays on the first call (trace + lower, then XLA compile).

Temporary memory per step: ``(temp(N_max) - temp(N_min)) / (N_max - N_min)`` bytes of
``memory_analysis().temp_size_in_bytes``, compiled only (not run), for every solver in
``kj.SOLVERS`` and two sizes: the MLP at ``scaling_batch`` and an elementwise denoiser on a
larger sample (``temp_elementwise`` = (B, floats per sample)). The per-step scalars that
``kj.sample`` tabulates before its loop (about 7 floats a step) are what may grow with N.
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
        return kj.sample(lambda x, s, c: apply_fn(params, x, s, c), keys, state, None, shape)

    return jax.jit(run)


def shrink(params: Any, x: jax.Array, sigma: jax.Array, cond: Any = None) -> jax.Array:
    """An elementwise denoiser, ``x / (1 + sigma^2)`` (no weights)."""
    del params, cond
    return x / (1.0 + sigma * sigma)


def _temp_bytes(
    apply_fn: Any,
    params: Any,
    keys: jax.Array,
    shape: tuple[int, ...],
    solver: str,
    config: kj.KarrasVeConfig,
    state: kj.KarrasVeState,
) -> int:
    def run(params: Any, keys: jax.Array, state: kj.KarrasVeState) -> jax.Array:
        denoise = lambda x, s, c: apply_fn(params, x, s, c)  # noqa: E731
        return kj.sample(denoise, keys, state, None, shape, solver=solver)

    compiled = jax.jit(run).lower(params, keys, state).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def temp_memory_rows(suite: Suite) -> list[dict[str, Any]]:
    """One row per (size, solver): compiled temp bytes at the smallest and largest N, bytes/step."""
    low, high = min(suite.preset.scaling_steps), max(suite.preset.scaling_steps)
    apply_mlp, params, mlp_shape = suite.model("mlp")
    batch, floats = suite.preset.temp_elementwise
    sizes = [
        ("mlp", apply_mlp, params, suite.preset.scaling_batch, mlp_shape),
        ("elementwise", shrink, None, batch, (floats,)),
    ]
    rows = []
    for model, apply_fn, weights, b, shape in sizes:
        keys = batch_keys(b)
        for solver in kj.SOLVERS:
            temp = {
                n: _temp_bytes(apply_fn, weights, keys, shape, solver, suite.config, suite.state(n))
                for n in (low, high)
            }
            rows.append(
                row(
                    "3_temp_memory_per_step",
                    {"model": model, "B": b, "sample_shape": list(shape), "solver": solver, "N": [low, high]},
                    {},
                    temp_bytes={str(n): t for n, t in temp.items()},
                    bytes_per_step=(temp[high] - temp[low]) / (high - low),
                )
            )
    return rows


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 3: one per N in ``scaling_steps``, MLP at ``scaling_batch``, then
    the temporary memory per step (:func:`temp_memory_rows`)."""
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
    return rows + temp_memory_rows(suite)
