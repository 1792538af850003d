"""Measurement 4 (a, b): seeds. (a) ``jax.vmap`` over single-seed ``kj.sample`` calls
against one call with B keys; (b) per-sample keys (``kj.sample``) against a hand-written
Heun loop on the library's formulas drawing each step's noise for the whole batch from one
key (:func:`benchmarks.loops.batch_noise_loop`)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

import karras_jax as kj
from benchmarks.loops import ApplyFn, batch_noise_loop
from benchmarks.suite import Suite, batch_keys, ratio, row


def vmapped_sampler(apply_fn: ApplyFn, shape: tuple[int, ...]) -> Any:
    """``jit(vmap(one seed))``: ``f(params, keys (B,), config, state) -> (B, *shape)``."""

    def one_seed(
        params: Any, key: jax.Array, config: kj.KarrasVeConfig, state: kj.KarrasVeState
    ) -> jax.Array:
        denoise = lambda x, s, c: apply_fn(params, x, s, c)  # noqa: E731
        return kj.sample(denoise, key[None], state, None, shape)[0]  # the state carries config

    return jax.jit(jax.vmap(one_seed, in_axes=(None, 0, None, None)))


def batch_noise_sampler(apply_fn: ApplyFn) -> Any:
    """``f(params, key, x0, config, state)``: the hand-written baseline
    :func:`benchmarks.loops.batch_noise_loop` (one key for the whole batch's noise each
    step), jitted."""

    def run(
        params: Any, key: jax.Array, x0: jax.Array, config: kj.KarrasVeConfig, state: kj.KarrasVeState
    ) -> jax.Array:
        denoise = lambda x, s: apply_fn(params, x, s, None)  # noqa: E731
        return batch_noise_loop(denoise, key, x0, state, config)

    return jax.jit(run)


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 4 (a, b): MLP at ``seeds_batch``, every N of the preset."""
    apply_fn, params, shape = suite.model("mlp")
    batch = suite.preset.seeds_batch
    keys = batch_keys(batch)
    vmapped = vmapped_sampler(apply_fn, shape)
    batch_noise = batch_noise_sampler(apply_fn)
    rows = []
    for n in suite.preset.steps:
        state = suite.state(n)
        x0 = kj.initial_noise(keys, state, shape)
        times = suite.compare(
            {
                "kj.sample": partial(suite.sampler("mlp", n), params, keys),
                "vmap_single_seed": partial(vmapped, params, keys, suite.config, state),
                "batch_wide_noise": partial(batch_noise, params, jax.random.key(1), x0, suite.config, state),
            }
        )
        rows.append(
            row(
                "4ab_seeds",
                {"model": "mlp", "B": batch, "N": n},
                times,
                vmap_throughput_ratio=ratio(times["kj.sample"], times["vmap_single_seed"]),
                per_sample_key_cost=ratio(times["kj.sample"], times["batch_wide_noise"]) - 1.0,
            )
        )
    return rows
