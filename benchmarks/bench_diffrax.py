"""Measurement 12: deterministic sampling, ``kj.sample`` against diffrax on the same ODE.

The probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` on EDM's grid (the
``"karras"`` schedule, sigma_min = 0.002, sigma_max = 80, rho = 7, N = 18 levels, then 0),
no churn, from the same start noise, with two denoisers: the built-in mixture's exact
denoiser (2-D samples; its weights, means and stds are traced arguments) and the benchmark
MLP of :mod:`benchmarks.models` (d = 64). B = 1, 32 and 4096 (``Preset.diffrax_batches``).
Three programs, each one ``jax.jit`` taking the weights and the (B,) keys:

- ``diffrax`` (the peer, what a user would write with diffrax): the start noise drawn by the
  noise contract (``sigma_0 * normal(split(key)[0], shape)`` per sample), then
  ``diffeqsolve(ODETerm(f), Heun(), t0=sigma_0, t1=sigma_{N-1}, dt0=None,
  stepsize_controller=StepTo(ts=levels), saveat=SaveAt(t1=True))`` (``Euler()`` for the
  Euler rows), then the last step to sigma = 0 by hand, an Euler step, as EDM takes it:
  Heun 2N - 1 = 35 network evaluations, Euler N = 18.
- ``kj.sample``: ``kj.sample(denoise, keys, state, config, shape, solver=...)`` with a
  concrete config with ``s_churn=0`` (closed over, as the levels are on the diffrax side).
- ``fori_loop`` (hand-written, :func:`benchmarks.loops.deterministic_loop`): the same steps
  in one ``lax.fori_loop`` from the same start noise, nothing else: the floor that bounds
  both.

Correctness first: before timing, each case's samples from the three must agree to float32
precision, or the measurement fails: max |difference| from kj.sample's <= 1e-5 times the
largest |sample|, or, where a few samples near a boundary between the mixture's components
amplify rounding beyond that, every program within 2x the float32 hand-written loop's own
distance from the float64 solution of the same steps (:func:`agreement`). Both figures are
recorded and printed.
Figures: ``ratio`` = t(diffrax) / t(kj.sample), medians (>= 1 means kj.sample is at least
as fast; target >= 1 at every B), ``ratio_best`` from the best times, and
``ratio_to_loop`` = t(kj.sample) / t(fori_loop). Timing is interleaved round by round
(:func:`benchmarks.timing.compare`), with up to 2000 rounds for short calls.

Also a script: ``python -m benchmarks.bench_diffrax [--batches 1,32] [--json]`` (from the
repo root) prints the same lines without the rest of the suite; ``--kernels`` instead counts
the kernels in every ``while`` body of the three compiled programs (trip count x kernels).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import karras_jax as kj  # noqa: E402
from benchmarks.loops import deterministic_loop  # noqa: E402
from benchmarks.suite import Suite, batch_keys, row  # noqa: E402
from benchmarks.timing import Timing  # noqa: E402

STEPS = 18
CONFIG = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
SOLVERS = ("heun", "euler")
TOLERANCE = 1e-5  # max |difference| / max |sample|
# denoise(weights, x, sigma) -> D(x; sigma), its weights, the shape of one sample
Denoiser = tuple[Callable[[Any, jax.Array, jax.Array], jax.Array], Any, tuple[int, ...]]


def default_mixture() -> Any:
    """The built-in 2-D mixture (``kj.default_mixture`` where the package re-exports it)."""
    if hasattr(kj, "default_mixture"):
        return kj.default_mixture()
    for module in ("karras_jax.analytic", "karras_jax.testing"):
        try:
            return importlib.import_module(module).default_mixture()
        except (ImportError, AttributeError):
            continue
    raise ImportError("karras_jax has no default_mixture")


def denoisers(suite: Suite) -> dict[str, Denoiser]:
    """The mixture's exact denoiser and the benchmark MLP, as ``(denoise, weights, shape)``."""
    mixture = default_mixture()
    apply_fn, params, shape = suite.model("mlp")
    return {
        "mixture": (lambda m, x, sigma: m.denoise(x, sigma), mixture, (mixture.dim,)),
        "mlp": (lambda p, x, sigma: apply_fn(p, x, sigma, None), params, shape),
    }


def start_noise(keys: jax.Array, sigma_0: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(B, *shape) start samples by the noise contract: ``sigma_0 * normal(split(k)[0], shape)``."""
    return sigma_0 * jax.vmap(lambda k: jax.random.normal(jax.random.split(k)[0], shape))(keys)


def diffrax_sampler(denoise: Callable[..., jax.Array], state: kj.KarrasVeState, shape: tuple[int, ...],
                    solver: str) -> Callable[[Any, jax.Array], jax.Array]:
    """The peer: ``f(weights, keys)`` solving the ODE with diffrax, jitted."""
    import diffrax

    levels = jnp.asarray(np.asarray(state.sigmas)[:-1], jnp.float32)  # sigma_0 .. sigma_{N-1}
    method = {"heun": diffrax.Heun, "euler": diffrax.Euler}[solver]

    def vector_field(t: jax.Array, y: jax.Array, weights: Any) -> jax.Array:
        return (y - denoise(weights, y, t)) / t

    def run(weights: Any, keys: jax.Array) -> jax.Array:
        x0 = start_noise(keys, levels[0], shape)
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), method(), t0=levels[0], t1=levels[-1], dt0=None, y0=x0,
            args=weights, saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.StepTo(ts=levels),
        )
        x, last = solution.ys[0], levels[-1]
        return x + (0.0 - last) * vector_field(last, x, weights)  # the last step, to sigma = 0: Euler

    return jax.jit(run)


def kj_sampler(denoise: Callable[..., jax.Array], state: kj.KarrasVeState, shape: tuple[int, ...],
               solver: str) -> Callable[[Any, jax.Array], jax.Array]:
    """``f(weights, keys)``: ``kj.sample`` with the concrete s_churn = 0 config, jitted."""

    def run(weights: Any, keys: jax.Array) -> jax.Array:
        return kj.sample(lambda x, sigma, cond: denoise(weights, x, sigma), keys, state, CONFIG, shape,
                         solver=solver)

    return jax.jit(run)


def loop_sampler(denoise: Callable[..., jax.Array], state: kj.KarrasVeState, shape: tuple[int, ...],
                 solver: str) -> Callable[[Any, jax.Array], jax.Array]:
    """``f(weights, keys)``: the hand-written ``fori_loop`` (the floor), jitted."""
    sigmas = jnp.asarray(np.asarray(state.sigmas), jnp.float32)

    def run(weights: Any, keys: jax.Array) -> jax.Array:
        x0 = start_noise(keys, sigmas[0], shape)
        return deterministic_loop(lambda x, sigma: denoise(weights, x, sigma), x0, sigmas, solver == "heun")

    return jax.jit(run)


def reference(denoise: Callable[..., jax.Array], weights: Any, keys: jax.Array, state: kj.KarrasVeState,
              shape: tuple[int, ...], solver: str) -> np.ndarray:
    """The same discretisation solved in float64 (the hand-written loop under x64), from the
    same float32 start noise and the same float32 levels, widened exactly."""
    sigmas = np.asarray(state.sigmas, np.float64)
    x0 = np.asarray(start_noise(keys, state.sigmas[0].astype(jnp.float32), shape), np.float64)
    with jax.enable_x64(True):
        wide = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64)
                            if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, weights)
        run = jax.jit(lambda w, x, s: deterministic_loop(lambda y, sigma: denoise(w, y, sigma), x, s,
                                                         solver == "heun", jnp.float64))
        return np.asarray(run(wide, jnp.asarray(x0), jnp.asarray(sigmas)))


def agreement(samples: dict[str, jax.Array], exact: np.ndarray) -> dict[str, Any]:
    """How far each program's samples are from kj.sample's and from the float64 solution.

    They agree to float32 precision when the largest |difference| from kj.sample's is at
    most ``TOLERANCE`` times the largest |sample|, or else (a handful of samples near a
    boundary of the mixture's components, where the ODE amplifies rounding) when every
    program is within 2x the float32 hand-written loop's own distance from the float64
    solution: the gap is then float32 rounding, not a different computation.
    """
    ref = np.asarray(samples["kj.sample"], np.float64)
    scale = float(np.max(np.abs(ref)))
    out: dict[str, Any] = {"max_abs_sample": scale}
    for name, x in samples.items():
        x = np.asarray(x, np.float64)
        out[f"max_err_vs_float64_{name}"] = float(np.max(np.abs(x - exact)))
        if name != "kj.sample":
            diff = float(np.max(np.abs(x - ref)))
            out[f"max_abs_diff_{name}"] = diff
            out[f"rel_diff_{name}"] = diff / max(scale, 1e-30)
    rounding = max(TOLERANCE * scale, 2 * out["max_err_vs_float64_fori_loop"])
    if all(out[f"rel_diff_{k}"] <= TOLERANCE for k in ("diffrax", "fori_loop")):
        out["agreed"] = "max |difference| <= 1e-5 x max |sample|"
    elif all(out[f"max_err_vs_float64_{k}"] <= rounding for k in samples):
        out["agreed"] = "within 2x the float32 loop's distance from float64"
    else:
        out["agreed"] = None
    return out


def measure_case(suite: Suite, name: str, denoiser: Denoiser, batch: int, solver: str,
                 state: kj.KarrasVeState) -> dict[str, Any]:
    """One (denoiser, B, solver): check agreement, then time the three interleaved."""
    denoise, weights, shape = denoiser
    keys = batch_keys(batch)
    programs = {
        "diffrax": diffrax_sampler(denoise, state, shape, solver),
        "kj.sample": kj_sampler(denoise, state, shape, solver),
        "fori_loop": loop_sampler(denoise, state, shape, solver),
    }
    samples = {k: jax.block_until_ready(f(weights, keys)) for k, f in programs.items()}
    agree = agreement(samples, reference(denoise, weights, keys, state, shape, solver))
    if agree["agreed"] is None:
        raise AssertionError(f"{name} B={batch} {solver}: the samples differ beyond float32 rounding, "
                             f"not timed: {agree}")
    fns = {k: partial(f, weights, keys) for k, f in programs.items()}
    times = suite.compare(fns, budget_s=3 * suite.preset.budget_s * len(fns), max_repeats=2000,
                          min_repeats=max(5, suite.preset.min_repeats))
    evals = 2 * STEPS - 1 if solver == "heun" else STEPS
    out = row("12_vs_diffrax", {"model": name, "B": batch, "N": STEPS, "solver": solver,
                                "network_evals": evals, "s_churn": 0.0}, times,
              ratio=times["diffrax"].median / times["kj.sample"].median,
              ratio_best=times["diffrax"].min / times["kj.sample"].min,
              ratio_to_loop=times["kj.sample"].median / times["fori_loop"].median,
              **agree)
    print(line(out, times), file=sys.stderr, flush=True)
    return out


def line(r: dict[str, Any], times: dict[str, Timing]) -> str:
    """One printed line per case: best / median ms of each program, the ratios, the agreement."""
    c = r["case"]
    spans = ", ".join(f"{k} {t.min * 1e3:.4g} / {t.median * 1e3:.4g} ms" for k, t in times.items())
    errors = ", ".join(f"{k} {r[f'max_err_vs_float64_{k}']:.2g}" for k in times)
    return (f"  {c['model']:7s} B={c['B']:<5d} {c['solver']:5s}: {spans} (best / median, "
            f"{times['kj.sample'].repeats} rounds); diffrax/kj {r['ratio']:.2f} "
            f"(best {r['ratio_best']:.2f}), kj/loop {r['ratio_to_loop']:.2f}; max |diff| from kj: "
            f"diffrax {r['max_abs_diff_diffrax']:.2g}, loop {r['max_abs_diff_fori_loop']:.2g} "
            f"(max |x| {r['max_abs_sample']:.3g}); from float64: {errors}; agreed: {r['agreed']}")


def loop_kernels(suite: Suite, batches: tuple[int, ...]) -> list[str]:
    """Per program, the kernels in each ``while`` body of its compiled program (compile only):
    ``body: trip count x kernels {by kind}`` (:func:`benchmarks.bench_fusions.count_kernels`)."""
    from benchmarks.bench_fusions import computations, count_kernels

    state = kj.set_timesteps(CONFIG, STEPS, "karras")
    out = []
    for name, (denoise, weights, shape) in denoisers(suite).items():
        for batch, solver in ((b, s) for b in batches for s in SOLVERS):
            for program, make in (("diffrax", diffrax_sampler), ("kj.sample", kj_sampler),
                                  ("fori_loop", loop_sampler)):
                comps = computations(make(denoise, state, shape, solver).lower(weights, batch_keys(batch))
                                     .compile().as_text())
                loops = []
                for lines in comps.values():
                    for text in (t for t in lines if " while(" in t):
                        body = re.search(r"body=%?([\w.\-]+)", text).group(1)
                        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', text)
                        counted = count_kernels(comps, body)
                        loops.append(f"{trip.group(1) if trip else '?'} x {counted['kernels']} "
                                     f"{counted['by_kind']}")
                out.append(f"{name} B={batch} {solver} {program}: " + "; ".join(loops))
    return out


def run(suite: Suite, batches: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of measurement 12: every denoiser x B x solver."""
    importlib.import_module("diffrax")  # ImportError: recorded as skipped by run.py
    state = kj.set_timesteps(CONFIG, STEPS, "karras")
    rows = []
    for name, denoiser in denoisers(suite).items():
        for batch in batches or suite.preset.diffrax_batches:
            for solver in SOLVERS:
                rows.append(measure_case(suite, name, denoiser, batch, solver, state))
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--batches", default=None, help="comma-separated B (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--kernels", action="store_true",
                        help="only count the kernels in each program's while bodies (compile only)")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else None
    if args.kernels:
        print("\n".join(loop_kernels(Suite(PRESETS[args.preset]), batches or (1,))))
        return 0
    rows = run(Suite(PRESETS[args.preset]), batches)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
