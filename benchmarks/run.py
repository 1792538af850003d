"""Run the karras_jax benchmark suite: ``python benchmarks/run.py --quick | --full | --gpu``.

Prints a markdown report (targets, then tables) and writes every raw figure to
``<out>/<machine>.json`` (default ``benchmarks/results``; one file per machine kind, see
:mod:`benchmarks.store`): the measurements of this run replace that file's, the others stay.
The file is replaced atomically after each measurement, so a run cut short still leaves its
results. Works on whatever JAX
backend is present; measurement 4c always runs on 8 host CPU devices in a child process.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from benchmarks.environment import describe  # noqa: E402
from benchmarks.presets import PRESETS  # noqa: E402
from benchmarks.report import render  # noqa: E402
from benchmarks.store import merge, path_for, read, write  # noqa: E402
from benchmarks.suite import Suite  # noqa: E402
from benchmarks.targets import evaluate  # noqa: E402

# id -> (module, what it measures); run in this order.
MEASUREMENTS = {
    "1": ("bench_fused", "kj.sample vs a Python loop of jitted steps"),
    "5": ("bench_overhead", "kj.sample vs the network alone in a fori_loop"),
    "2": ("bench_torch", "kj.sample vs diffusers' and a plain PyTorch loop"),
    "3": ("bench_scaling", "compile time, temp memory, time per step vs N"),
    "4ab": ("bench_seeds", "vmap of single seeds; per-sample vs batch-wide noise"),
    "4c": ("bench_sharding", "8 CPU devices vs 1 (child process)"),
    "6": ("bench_memory", "memory-bound limit, threefry and rbg keys"),
    "7": ("bench_fusions", "kernels in the compiled loop body (compile only)"),
    "8": ("bench_call", "per-call cost of the sampler wrappers over their jitted programs"),
    "9": ("bench_models", "UNet: CFG in one batched call vs two; kj.sample vs the network alone"),
    "10": ("bench_train", "train step: kj.make_train_step vs a PyTorch twin, samples/s"),
    "11": ("bench_generate", "kj.generate end to end vs sampling the same batches without writing"),
    "12": ("bench_diffrax", "deterministic Heun/Euler N=18: kj.sample vs diffrax's diffeqsolve"),
    "13": ("bench_pod", "DiT ~50M params, weights split 4-way over a model axis vs replicated (child)"),
    "14": ("bench_solvers", "per-step time of every solver (and Restart) vs Euler, B = 1 and large"),
    "15": ("bench_likelihood", "kj.log_likelihood (exact, Hutchinson) vs k-diffusion's dopri5, samples/s"),
    "16": ("bench_inception", "FID Inception features, kj.inception_features vs pytorch-fid, images/s"),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        dest="preset",
        const="quick",
        help="small sizes: under 5 minutes on 2 CPU cores (default)",
    )
    size.add_argument(
        "--full", action="store_const", dest="preset", const="full", help="every size in the issue"
    )
    size.add_argument(
        "--gpu", action="store_const", dest="preset", const="gpu", help="sized for one H100/H200"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="folder for the results JSON (created)",
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated measurement ids out of {','.join(MEASUREMENTS)}"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip measurements not yet started once this many seconds have passed",
    )
    parser.set_defaults(preset="quick")
    return parser.parse_args(argv)


def save(path: Path, previous: dict[str, Any] | None, result: dict[str, Any], gpu: bool) -> dict[str, Any]:
    """Merges this run into the machine's previous file, evaluates the targets, replaces the file."""
    merged = merge(previous, result, MEASUREMENTS)
    merged["targets"] = evaluate(merged["rows"], gpu)
    write(path, merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    preset = PRESETS[args.preset]
    chosen = list(MEASUREMENTS) if args.only is None else [m.strip() for m in args.only.split(",")]
    unknown = [m for m in chosen if m not in MEASUREMENTS]
    if unknown:
        raise SystemExit(f"unknown measurement ids {unknown}; choose from {list(MEASUREMENTS)}")
    info = describe(ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    path = path_for(args.out, info["label"])
    previous = read(path)
    gpu = info["machine"]["jax_backend"] == "gpu"
    result: dict[str, Any] = {
        **info,
        "preset": preset.as_dict(),
        "measurements": {},
        "rows": [],
        "errors": {},
        "skipped": [],
        "targets": [],
    }
    suite = Suite(preset)
    start = time.perf_counter()
    for mid in preset.order or tuple(MEASUREMENTS):
        if mid not in chosen:
            continue
        module, what = MEASUREMENTS[mid]
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            result["skipped"].append(mid)
            continue
        print(f"[{time.perf_counter() - start:6.1f}s] measurement {mid}: {what}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.{module}").run(suite)
            result["rows"] += rows
        except ImportError as err:  # torch / diffusers not installed
            result["errors"][mid] = f"skipped: {err}"
        except Exception as err:  # noqa: BLE001 - record and go on with the other measurements
            result["errors"][mid] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        result["measurements"][mid] = {"what": what, "seconds": time.perf_counter() - began}
        result["elapsed_s"] = time.perf_counter() - start
        save(path, previous, result, gpu)
    result["elapsed_s"] = time.perf_counter() - start
    save(path, previous, result, gpu)
    result["targets"] = evaluate(result["rows"], gpu)
    report = render(result)  # this run's measurements only (report.py renders the whole file)
    print(report)
    print(f"\nresults: {path} ({result['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
