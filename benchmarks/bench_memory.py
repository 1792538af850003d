"""Measurement 6: the memory-bound limit. A near-free elementwise denoiser on a large sample
(preset: ``memory_batch`` x ``memory_dim`` floats), churn on at every step.

Every figure is a steady-state cost per loop iteration, ``(t(N2) - t(N1)) / (N2 - N1)`` for
two iteration counts: this cancels the start noise, the final Euler step, and the
allocation (page faults) of fresh output and scratch buffers that a one-shot call pays.
The difference is taken within each round of the interleaved timing (the variants of a
round run back to back, under the same load from other processes), and every figure and
ratio is the median over rounds of its per-round value.

- time per Heun step: ``kj.sample`` with N1 and N2 steps;
- CPU floor per step: one ``jax.random.normal`` draw of the sample's size (a loop whose
  body is ``x = normal(fold_in(key, i), shape)``, or the same with one key per sample as
  ``kj.sample`` draws it: the faster of the two) plus one read-write pass over the sample
  (a loop whose body is ``x = 0.5 x + 0.25``); the draw dominates;
- GPU floor per step: the same normal draw alone. On an H200 a normal draw of the sample
  costs more than a read-write pass over it (the draw, not memory, bounds a churned step),
  and a fused step writes the noise into its single pass, so the floor is the draw.

Also timed: ``kj.sample`` with s_churn = 0 (no noise: the Heun step alone, in read-write
passes; on a GPU its target is 1.2 passes), and ``kj.sample`` traced under
:func:`benchmarks.switches.always_draw`, i.e. with the churn draw made at every step and fused
into the Euler/Heun update (no ``lax.cond``: the form it takes below
``karras_jax._compiled.SKIP_IDLE_DRAW_FROM``), to show what the cond costs at this size.

Repeated with ``rbg`` keys (``jax.random.key(0, impl='rbg')``) for sampler and floor, and
the preset's other key implementations (``philox4x32``). Note: under ``vmap`` an ``rbg``
key batch draws from its first key only (JAX's rbg semantics), so with rbg keys a
sample is no longer a function of its own key alone.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from benchmarks.suite import Suite, key_impl_works, row
from benchmarks.switches import compile_always_drawing
from karras_jax._compiled import as_traced_config

# Churn at every step: the window covers all levels (sigma_max = 100), gamma = min(1/N, sqrt(2)-1).
CHURN_EVERYWHERE = kj.KarrasVeConfig(s_churn=1.0, s_min=0.0, s_max=1000.0)
# The deterministic sampler (no noise drawn): the step is then one elementwise pass.
NO_CHURN = CHURN_EVERYWHERE.replace(s_churn=0.0)


def shrink(scale: Any, x: jax.Array, sigma: jax.Array, cond: Any = None) -> jax.Array:
    """D(x; sigma) = scale x / (scale + sigma^2): the exact denoiser of N(0, scale I) data."""
    del cond
    return x * (scale / (scale + sigma * sigma))


def fused_churn(state: kj.KarrasVeState, keys: jax.Array, shape: tuple[int, ...]) -> Callable[[], Any]:
    """``kj.sample`` (as ``make_sampler`` runs it) compiled with the churn draw made at every
    step, no ``lax.cond`` (:func:`benchmarks.switches.always_draw`); a zero-argument call."""
    state = state.replace(config=as_traced_config(CHURN_EVERYWHERE))  # traced: the drawing program

    def run(scale: Any, keys: jax.Array, state: kj.KarrasVeState) -> jax.Array:
        return kj.sample(partial(shrink, scale), keys, state, None, shape)

    compiled = compile_always_drawing(run, 1.0, keys, state)
    return partial(compiled, 1.0, keys, state)


def repeat(body: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], count: int) -> Any:
    """``jit(f)(x, key)`` running ``x = body(i, x, key)`` for i < count in a ``fori_loop``."""
    return jax.jit(lambda x, key: jax.lax.fori_loop(0, count, lambda i, x: body(i, x, key), x))


def draw(i: jax.Array, x: jax.Array, key: jax.Array) -> jax.Array:
    """One normal draw of x's size from one key (the previous x is overwritten)."""
    return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)


def draw_per_sample(i: jax.Array, x: jax.Array, keys: jax.Array) -> jax.Array:
    """The same draw from one key per sample (row of x), as ``kj.sample`` draws it."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(keys)


def read_write(i: jax.Array, x: jax.Array, key: jax.Array) -> jax.Array:
    """One read-write pass over x."""
    del i, key
    return x * 0.5 + 0.25


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 6: one per key implementation in ``memory_key_impls``."""
    preset = suite.preset
    shape = (preset.memory_dim,)
    counts = preset.memory_steps
    # A read-write pass is cheap: more iterations so that its difference stands above noise.
    rw_counts = (counts[0], counts[0] + preset.memory_rw_factor * (counts[1] - counts[0]))
    on_cpu = jax.default_backend() == "cpu"
    x = jnp.ones((preset.memory_batch, *shape), jnp.float32)
    rows = []
    for impl in preset.memory_key_impls:
        if not key_impl_works(impl):
            rows.append({"measurement": "6_memory_bound_skipped", "case": {"key_impl": impl}})
            continue
        keys = jax.random.split(jax.random.key(0, impl=impl), preset.memory_batch)
        key = jax.random.key(1, impl=impl)
        fns = {}
        for n in counts:
            state = kj.set_timesteps(CHURN_EVERYWHERE, n)
            sampler = kj.make_sampler(shrink, state, CHURN_EVERYWHERE, shape)
            fns[f"kj.sample_N{n}"] = partial(sampler, 1.0, keys)
            if impl == preset.memory_key_impls[0] or not on_cpu:
                fns[f"fused_churn_N{n}"] = fused_churn(state, keys, shape)
            fns[f"draw_x{n}"] = partial(repeat(draw, n), x, key)
            fns[f"draw_per_sample_x{n}"] = partial(repeat(draw_per_sample, n), x, keys)
        for n in rw_counts:
            fns[f"read_write_x{n}"] = partial(repeat(read_write, n), x, key)
        if impl == preset.memory_key_impls[0]:  # no noise drawn: the key impl does not matter
            for n in rw_counts:  # a cheap step: as many iterations as the read-write pass
                state = kj.set_timesteps(NO_CHURN, n)
                sampler = kj.make_sampler(shrink, state, NO_CHURN, shape)
                fns[f"kj.sample_no_churn_N{n}"] = partial(sampler, 1.0, keys)
        # Figures are differences: many rounds (each a paired estimate) beat long ones.
        times = suite.compare(fns, budget_s=2 * preset.budget_s * len(fns), min_repeats=5, max_repeats=12)

        def per_iteration(prefix: str, counts: tuple[int, int] = counts, times: Any = times) -> np.ndarray:
            low, high = (np.asarray(times[f"{prefix}{n}"].samples) for n in counts)
            return (high - low) / (counts[1] - counts[0])

        # Per round (the variants of one round ran back to back), then the median over rounds.
        step = per_iteration("kj.sample_N")
        one_key, per_sample = per_iteration("draw_x"), per_iteration("draw_per_sample_x")
        normal = np.minimum(one_key, per_sample)
        rw = per_iteration("read_write_x", rw_counts)
        floor = normal + rw if on_cpu else normal

        def med(values: np.ndarray) -> float:
            return float(np.median(values))

        fused = {}
        if f"fused_churn_N{counts[0]}" in times:
            step_fused = per_iteration("fused_churn_N")
            fused = {
                "fused_churn_seconds_per_step": med(step_fused),
                "fused_churn_ratio_to_floor": med(step_fused / floor),
                "fused_churn_read_write_passes_per_step": med(step_fused / rw),
            }
        no_churn = {}
        if f"kj.sample_no_churn_N{counts[0]}" in times:
            step_still = per_iteration("kj.sample_no_churn_N", rw_counts)
            no_churn = {
                "no_churn_seconds_per_step": med(step_still),
                "no_churn_read_write_passes_per_step": med(step_still / rw),
            }

        rows.append(
            row(
                "6_memory_bound",
                {
                    "floats": preset.memory_floats,
                    "B": preset.memory_batch,
                    "sample_shape": list(shape),
                    "key_impl": impl,
                    "counts": list(counts),
                    "read_write_counts": list(rw_counts),
                    "floor": "normal_draw+read_write" if on_cpu else "normal_draw",
                },
                times,
                seconds_per_step=med(step),
                seconds_per_normal_draw=med(normal),
                seconds_per_normal_draw_one_key=med(one_key),
                seconds_per_normal_draw_per_sample_keys=med(per_sample),
                seconds_per_read_write=med(rw),
                floor_seconds=med(floor),
                ratio_to_floor=med(step / floor),
                read_write_passes_per_step=med(step / rw),
                **fused,
                **no_churn,
            )
        )
    return rows
