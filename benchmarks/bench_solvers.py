"""Measurement 14: the cost of each solver per step, against Euler's, at B = 1 and a large batch.

Every registered solver (``kj.SOLVERS``) and Restart over Heun, on the MLP, N = 18 on EDM's
grid (karras schedule, sigma 0.002 .. 80) with s_churn = 0, so that a stochastic solver's
noise is its own draw only. Each is a ``kj.make_sampler`` program timed interleaved with the
others; a step is one row of the loop (Restart's rows included), and the network
evaluations are the solver's own count (``Solver.evaluations``), checked by counting calls.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

import karras_jax as kj
from benchmarks.suite import Suite, batch_keys, row

STEPS = 18
RESTART = [(0.1, 2.0, 2, 4)]  # one interval: 2 restarts of 3 Heun steps each


def _solvers() -> dict[str, tuple[kj.Solver, int]]:
    """name -> (solver, loop rows for N = STEPS)."""
    out = {name: (kj.get_solver(name), STEPS) for name in kj.SOLVERS}
    restart = kj.restart(kj.heun(), RESTART)
    out[restart.name] = (restart, STEPS + sum(k * (m - 1) for _, _, k, m in RESTART))
    return out


def _counted_evaluations(apply_fn: Any, params: Any, shape: tuple[int, ...], state: kj.KarrasVeState,
                         solver: kj.Solver) -> int:
    calls = []

    def counting(x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        jax.debug.callback(lambda: calls.append(1))
        return apply_fn(params, x, sigma, cond)

    jax.block_until_ready(kj.sample(counting, batch_keys(1), state, None, shape, solver=solver))
    return len(calls)


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 14: one per batch size, every solver timed side by side."""
    apply_fn, params, shape = suite.model("mlp")
    config = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
    state = kj.set_timesteps(config, STEPS, "karras")
    solvers = _solvers()
    nfe = {name: _counted_evaluations(apply_fn, params, shape, state, s) for name, (s, _) in solvers.items()}
    for name, (solver, _) in solvers.items():
        if nfe[name] != solver.evaluations(STEPS):
            raise AssertionError(f"{name}: {nfe[name]} network calls, Solver.evaluations says "
                                 f"{solver.evaluations(STEPS)}")
    rows = []
    for batch in suite.preset.solver_batches:
        keys = batch_keys(batch)
        fns = {name: partial(kj.make_sampler(apply_fn, state, None, shape, solver=s), params, keys)
               for name, (s, _) in solvers.items()}
        times = suite.compare(fns)
        per_step = {name: times[name].median / solvers[name][1] for name in solvers}
        per_nfe = {name: times[name].median / nfe[name] for name in solvers}
        rows.append(row("14_solvers", {"model": "mlp", "B": batch, "N": STEPS}, times,
                        steps={name: rows_ for name, (_, rows_) in solvers.items()}, nfe=nfe,
                        per_step_vs_euler={k: v / per_step["euler"] for k, v in per_step.items()},
                        per_nfe_vs_euler={k: v / per_nfe["euler"] for k, v in per_nfe.items()}))
    return rows
