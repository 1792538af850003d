"""Measurement 5: ``kj.sample`` against its floor at large batch, the same 2N - 1 network
evaluations back to back in one ``fori_loop`` with nothing else. Also ``kj.sample`` with
s_churn = 0 (no noise drawn; a sampler built with that config, not a ``config=`` override
per call, whose checks and conversion would be timed too), which separates the cost of the
churn noise from the rest, and with ``philox4x32`` keys (drawn by JAX's own
``jax.random.normal``; default threefry keys go through the library's unrolled hash)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

import karras_jax as kj
from benchmarks.cases import model_cases
from benchmarks.loops import ApplyFn, network_loop
from benchmarks.suite import Suite, batch_keys, key_impl_works, ratio, row


def network_only(apply_fn: ApplyFn) -> Any:
    """``f(params, x0, state)``: :func:`benchmarks.loops.network_loop`, jitted."""

    def run(params: Any, x0: jax.Array, state: kj.KarrasVeState) -> jax.Array:
        return network_loop(lambda x, s: apply_fn(params, x, s, None), x0, state)

    return jax.jit(run)


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 5: every (model, B, N) of the preset."""
    rows = []
    no_churn = suite.config.replace(s_churn=0.0)
    philox = key_impl_works("philox4x32")
    for name, batch, n in model_cases(suite.preset):
        apply_fn, params, shape = suite.model(name)
        state = suite.state(n)
        keys = batch_keys(batch)
        sampler = suite.sampler(name, n)
        still = kj.make_sampler(apply_fn, kj.set_timesteps(no_churn, n), no_churn, shape)
        x0 = kj.initial_noise(keys, state, shape)
        fns = {
            "kj.sample": partial(sampler, params, keys),
            "kj.sample_no_churn": partial(still, params, keys),
            "network_only": partial(network_only(apply_fn), params, x0, state),
        }
        if philox:
            fns["kj.sample_philox_keys"] = partial(sampler, params, batch_keys(batch, impl="philox4x32"))
        times = suite.compare(fns)
        rows.append(
            row(
                "5_overhead_over_network",
                {"model": name, "B": batch, "N": n, "network_evals": 2 * n - 1},
                times,
                overhead_ratio=ratio(times["kj.sample"], times["network_only"]),
                overhead_ratio_no_churn=ratio(times["kj.sample_no_churn"], times["network_only"]),
                overhead_ratio_philox=ratio(times["kj.sample_philox_keys"], times["network_only"])
                if philox
                else None,
            )
        )
    return rows
