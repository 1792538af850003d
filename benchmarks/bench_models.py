"""Measurement 9: trained-network adapters (issue 9), on the package's class-conditional
``kj.UNet`` at the digits example's size (8x8x1, 16 channels), N steps of Heun.

9a. Classifier-free guidance: ``kj.classifier_free_guidance`` (conditional and
    unconditional rows in one network call of 2B rows) against the same guidance written
    as two calls of B rows (the formula is the library's; only the batching differs).
    Figure: ``two_calls_ratio`` = t(two calls) / t(one batched call).
9b. ``kj.sample`` of the EDM-preconditioned UNet against the network alone: the bare
    ``UNet.apply(params, x, c_noise, labels)`` evaluated 2N - 1 times back to back in one
    ``fori_loop`` (``benchmarks.loops.network_loop``), no preconditioning, no solver, no
    noise. Figure: ``overhead_ratio`` = t(kj.sample) / t(network alone).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

import karras_jax as kj
from benchmarks.loops import network_loop
from benchmarks.models import UNET
from benchmarks.suite import Suite, batch_keys, ratio, row

NULL = UNET["num_classes"]


def two_call_guidance(apply_fn: Any, null_cond: int) -> Any:
    """The hand-written baseline: ``D_c + (w - 1)(D_c - D_u)`` from two network calls of B rows."""

    def guided(params: Any, x: jax.Array, sigma: jax.Array, cond: jax.Array) -> jax.Array:
        net_params, guidance = params
        d_c = apply_fn(net_params, x, sigma, cond)
        d_u = apply_fn(net_params, x, sigma, jnp.full_like(cond, null_cond))
        return d_c + (guidance.scale - 1) * (d_c - d_u)

    return guided


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 9: CFG batching (9a) and adapter overhead (9b), every preset batch."""
    apply_fn, params, shape = suite.model("unet")
    n = suite.preset.steps[0]
    state = suite.state(n)
    module = kj.UNet(**UNET)
    rows = []
    for batch in suite.preset.unet_batches:
        keys = batch_keys(batch)
        labels = jnp.arange(batch, dtype=jnp.int32) % NULL
        guidance = kj.Guidance(scale=2.0)
        one = kj.make_sampler(kj.classifier_free_guidance(apply_fn, NULL), state, suite.config, shape)
        two = kj.make_sampler(two_call_guidance(apply_fn, NULL), state, suite.config, shape)
        plain = suite.sampler("unet", n)
        x0 = kj.initial_noise(keys, state, shape)

        @jax.jit
        def alone(p: Any, x: jax.Array, labels: jax.Array = labels) -> jax.Array:
            return network_loop(lambda x, s: module.apply(p, x, jnp.log(s) / 4, labels), x, state)

        times = suite.compare({
            "cfg_one_call": partial(one, (params, guidance), keys, labels),
            "cfg_two_calls": partial(two, (params, guidance), keys, labels),
            "kj.sample": partial(plain, params, keys, labels),
            "network_only": partial(alone, params, x0),
        })
        case = {"model": "unet", "B": batch, "N": n, "network_evals": 2 * n - 1}
        rows.append(row("9a_cfg_batching", case, {k: times[k] for k in ("cfg_one_call", "cfg_two_calls")},
                        two_calls_ratio=ratio(times["cfg_two_calls"], times["cfg_one_call"])))
        rows.append(row("9b_adapter_overhead", case, {k: times[k] for k in ("kj.sample", "network_only")},
                        overhead_ratio=ratio(times["kj.sample"], times["network_only"])))
    return rows
