"""The ``karras-jax`` command. ``karras-jax demo`` is the main job: nothing is downloaded.

The demo samples thousands of seeds from a built-in 2-D Gaussian mixture through its exact
denoiser (:func:`karras_jax.testing.default_mixture`), so the only error is the sampler's,
and reports speed and an energy distance to true samples next to the distance between two
independent true sample sets (the floor no sampler can beat at that sample size).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = " ".join(filter(None, ("karras-jax", self._sub, "--help")))
        self.exit(2, f"karras-jax: error: {message} (see {command})\n")

    _sub = ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _solver_list(text: str) -> tuple[str, ...]:
    from karras_jax.solvers import SOLVERS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SOLVERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SOLVERS)}, got {text!r}")
    return names


def _build_parser() -> argparse.ArgumentParser:
    from karras_jax.schedules import SCHEDULES

    parser = _Parser(prog="karras-jax", description="Karras/EDM stochastic sampling in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="sample a built-in 2-D Gaussian mixture through its exact denoiser (no downloads)",
        description="Sample a built-in 2-D Gaussian mixture through its exact denoiser and "
        "compare with true samples. Writes samples.npz and demo.png to --out.",
    )
    demo._sub = "demo"
    demo.add_argument("--steps", type=_positive_int, default=18, help="noise levels N (default 18)")
    demo.add_argument("--schedule", choices=SCHEDULES, default="karras",
                      help="noise-level schedule (default karras, EDM's rho=7)")
    demo.add_argument("--seeds", type=_positive_int, default=4096,
                      help="number of seeds, one sample each (default 4096)")
    demo.add_argument("--s-churn", type=_non_negative_float, default=40.0,
                      help="stochasticity S_churn (default 40; 0 is the deterministic sampler)")
    demo.add_argument("--s-noise", type=_non_negative_float, default=1.0,
                      help="churn noise scale S_noise (default 1.0: the denoiser is exact)")
    demo.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    demo.add_argument("--out", type=Path, default=Path("karras_jax_demo"),
                      help="output folder (default ./karras_jax_demo)")
    demo.add_argument("--solvers", type=_solver_list, default=("heun", "euler"),
                      help="comma-separated solvers to compare, the first one plotted "
                           "(default heun,euler; also dpmpp_2m)")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import karras_jax as kj
    from karras_jax.testing import default_mixture, energy_distance

    mixture = default_mixture()
    config = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_noise=args.s_noise,
                               s_churn=args.s_churn, s_min=0.05, s_max=50.0)
    if args.schedule == "diffusers":
        # diffusers' levels are squared sigmas: keep sigma_max**2 at diffusers' 1e4, not 6400.
        config = config.replace(sigma_min=0.02, sigma_max=100.0)
    state = kj.set_timesteps(config, args.steps, args.schedule)
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    k_true, k_floor = jax.random.split(jax.random.key(args.seed + 1_000_003))
    truth = mixture.sample(k_true, args.seeds)
    floor = float(energy_distance(mixture.sample(k_floor, args.seeds), truth))

    print(f"karras_jax {kj.__version__} demo on {jax.devices()[0].platform.upper()} "
          f"({jax.device_count()} device{'s' if jax.device_count() > 1 else ''}): {args.seeds} "
          f"seeds, 2-D Gaussian mixture, "
          f"schedule={args.schedule}, s_churn={args.s_churn:g}")
    w = max(7, 1 + max(map(len, args.solvers)))  # the name column, 7 wide for heun and euler
    header = (f"{'solver':<{w}}{'N':>5}{'NFE':>6}{'compile s':>11}{'run s':>9}"
              f"{'samples/s':>12}{'energy dist':>13}")
    print(header)
    print("-" * len(header))
    results = {}
    for solver in args.solvers:
        sampler = jax.jit(lambda k, c, s=solver: kj.sample(mixture.denoise, k, state, c, (2,),
                                                           solver=s))
        _, first = _timed(sampler, keys, config)
        samples, run = _timed(sampler, keys, config)
        nfe = kj.get_solver(solver).evaluations(args.steps)
        dist = float(energy_distance(samples, truth))
        results[solver] = np.asarray(samples)
        print(f"{solver:<{w}}{args.steps:>5}{nfe:>6}{max(first - run, 0.0):>11.2f}{run:>9.3f}"
              f"{args.seeds / run:>12,.0f}{dist:>13.5f}")
    print(f"{'true':<{w}}{'':>5}{'':>6}{'':>11}{'':>9}{'':>12}{floor:>13.5f}"
          "   <- two independent true sets (the floor)")
    if not all(np.all(np.isfinite(samples)) for samples in results.values()):
        print("karras-jax: error: non-finite samples", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    npz = args.out / "samples.npz"
    np.savez(npz, **results, true=np.asarray(truth),
             sigmas=np.asarray(state.sigmas))
    print(f"wrote {npz}")
    if not args.no_plot:
        png = _plot(args.out / "demo.png", np.asarray(truth), results[args.solvers[0]], args)
        print(f"wrote {png}" if png else "matplotlib not installed: no PNG (pip install "
              "'karras-jax[demo]')")
    del jnp
    return 0


def _plot(path: Path, truth: Any, samples: Any, args: argparse.Namespace) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, points, title in ((axes[0], truth, "true samples"),
                              (axes[1], samples, f"karras_jax, {args.solvers[0]}, N={args.steps}")):
        ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.5, color="tab:blue")
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
    fig.suptitle(f"{len(samples)} seeds, schedule={args.schedule}, s_churn={args.s_churn:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``karras-jax`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        try:  # before any sampling, so a bad folder costs nothing and reads as one line
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.exit(2, f"karras-jax: error: argument --out: cannot create {args.out} "
                           f"({err.strerror or err})\n")
        return _demo(args)
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
