"""The ``karras-jax`` command. ``karras-jax demo`` is the main job: nothing is downloaded.

``karras-jax train-digits`` / ``sample-digits`` are the training example
(:mod:`karras_jax.examples.digits`; needs the ``digits`` extra, scikit-learn).
``karras-jax generate`` samples a model into resumable shards; ``karras-jax likelihood``
scores an array of samples under a model (:func:`karras_jax.log_likelihood`).

The demo samples thousands of seeds from a built-in 2-D Gaussian mixture through its exact
denoiser (:func:`karras_jax.analytic.default_mixture`), so the only error is the sampler's,
and reports speed and an energy distance to true samples next to the distance between two
independent true sample sets (the floor no sampler can beat at that sample size).

Errors are one line on stderr, ``karras-jax: error: ...``, naming the flag or file at fault,
never a traceback (the hidden ``--debug`` flag re-raises to show one). Exit codes: 0 done;
2 a usage error, refused before any work (a bad flag value, a model that does not load, an
``--out`` that cannot be a writable folder, a folder holding another job or a damaged
manifest); 1 a runtime error (a failed write, a non-finite sample, ``--verify`` finding a
folder incomplete); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from karras_jax._files import atomic_write, check_writable_folder

__all__ = ["main"]

# What main() turns into one line: usage errors (exit 2, raised before any work) and runtime
# errors (exit 1). Anything else is a bug and keeps its traceback.
_USAGE_ERRORS = (ValueError, TypeError, ImportError)
_RUNTIME_ERRORS = (OSError, FloatingPointError, MemoryError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = " ".join(filter(None, ("karras-jax", self._sub, "--help")))
        self.exit(2, f"karras-jax: error: {message} (see {command})\n")

    _sub = ""


def _one_line(err: BaseException) -> str:
    """An exception as one line that names its file: ``OSError``'s own text drops the path."""
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _check_out(flag: str, folder: Path, *, create: bool = True) -> None:
    """Refuses, as a usage error naming ``flag`` and the path, a folder that cannot be written.

    ``create=False`` leaves nothing behind (the command creates the folder itself, later).
    """
    try:
        check_writable_folder(folder, create=create)
    except OSError as err:
        raise ValueError(f"argument {flag}: {_one_line(err)}") from None


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


def _unit_float(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


# Beyond this many levels float32 cannot tell neighbouring EDM levels apart anyway.
MAX_STEPS = 100_000


def _steps(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_STEPS:,} steps, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in 0 .. {2**32 - 1}, got {text}")
    return value


def _seed_set(text: str) -> Any:
    from karras_jax.generation.seeds import seed_runs

    try:
        return seed_runs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _solver_list(text: str) -> tuple[str, ...]:
    from karras_jax.solvers import SOLVERS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SOLVERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SOLVERS)}, got {text!r}")
    return names


def _build_parser() -> argparse.ArgumentParser:
    from karras_jax import __version__
    from karras_jax.schedules import SCHEDULES
    from karras_jax.solvers import SOLVERS, takes_eta

    parser = _Parser(prog="karras-jax", description="Karras/EDM stochastic sampling in JAX.")
    parser.add_argument("--version", action="version", version=f"karras-jax {__version__}")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="sample a built-in 2-D Gaussian mixture through its exact denoiser (no downloads)",
        description="Sample a built-in 2-D Gaussian mixture through its exact denoiser and "
        "compare with true samples. Writes samples.npz and demo.png to --out.",
    )
    demo._sub = "demo"
    # defaults: the built-in mixture's own (generation/models.py), which `generate --model mixture` reads
    demo.add_argument("--steps", type=_steps, default=None,
                      help=f"noise levels N, 1 .. {MAX_STEPS:,} (default: the mixture's, 18)")
    demo.add_argument("--schedule", choices=SCHEDULES, default=None,
                      help="noise-level schedule (default: the mixture's, karras: EDM's rho=7)")
    demo.add_argument("--seeds", type=_positive_int, default=4096,
                      help="number of seeds, one sample each (default 4096)")
    demo.add_argument("--s-churn", type=_non_negative_float, default=None,
                      help="stochasticity S_churn (default: the mixture's, 40; 0: the deterministic sampler)")
    demo.add_argument("--s-noise", type=_non_negative_float, default=None,
                      help="churn noise scale S_noise (default: the mixture's, 1.0: its denoiser is exact)")
    demo.add_argument("--seed", type=_seed, default=0,
                      help="first seed: seeds SEED .. SEED+SEEDS-1, seed s sampled as generate samples it, "
                           "from jax.random.key(s) (default 0)")
    demo.add_argument("--out", type=Path, default=Path("karras_jax_demo"),
                      help="output folder (default ./karras_jax_demo)")
    demo.add_argument("--solvers", type=_solver_list, default=("heun", "euler"),
                      help="comma-separated solvers to compare, the first one plotted "
                           f"(default heun,euler; also {', '.join(SOLVERS[2:])})")
    demo.add_argument("--eta", type=_non_negative_float, default=None,
                      help=f"stochasticity of {', '.join(takes_eta())} (default: theirs, 1.0)")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")
    _digits_parsers(sub)
    _generate_parser(sub)
    _likelihood_parser(sub)
    _fd_parser(sub)
    _reconstruct_ema_parser(sub)
    for command in sub.choices.values():  # `karras-jax COMMAND ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
    return parser


def _generate_parser(sub: Any) -> None:
    from karras_jax.schedules import SCHEDULES
    from karras_jax.solvers import SOLVERS, takes_eta

    gen = sub.add_parser(
        "generate",
        help="generate one sample per seed into sharded, checksummed, resumable files",
        description="Generate one sample per seed into DIR/shard-XXXXXX.npz (seeds, samples) with "
        "DIR/manifest.json. Re-running the same command resumes: complete shards are verified and kept, "
        "missing or corrupt ones generated again. `generate --verify DIR` only checks a folder.",
    )
    gen._sub = "generate"
    gen.add_argument("--verify", type=Path, metavar="DIR",
                     help="check DIR against its manifest, print one line per state of its shards, exit")
    gen.add_argument("--verbose", action="store_true",
                     help="with --verify: also list every shard that is not complete")
    gen.add_argument("--model", help="mixture, package.module:function, or a folder written by kj.fit "
                                      "(train-digits writes one): its model.json says how to rebuild it")
    gen.add_argument("--seeds", type=_seed_set,
                     help="seeds in EDM's syntax, e.g. 0-49999 or 0,5,10-20 (up to 0-4294967295)")
    gen.add_argument("--out", type=Path, help="output folder")
    gen.add_argument("--batch", type=_positive_int, default=512,
                     help="samples per sampler call (default 512)")
    gen.add_argument("--shard-size", type=_positive_int, default=None,
                     help="seeds per shard of a new job (default: --batch)")
    gen.add_argument("--steps", type=_steps, default=None, help="noise levels N (default: the model's)")
    gen.add_argument("--schedule", choices=SCHEDULES, default=None, help="schedule (default: the model's)")
    gen.add_argument("--solver", choices=SOLVERS, default="heun", help="solver (default heun)")
    gen.add_argument("--eta", type=_non_negative_float, default=None,
                     help=f"stochasticity of {', '.join(takes_eta())} (default: theirs, 1.0)")
    for name in ("s-churn", "s-noise", "s-min", "s-max"):
        gen.add_argument(f"--{name}", type=_non_negative_float, default=None,
                         help=f"override the model's {name.replace('-', '_')}")
    gen.add_argument("--guidance", type=_non_negative_float, default=None,
                     help="classifier-free guidance scale w (conditional models; default unguided)")
    gen.add_argument("--init", metavar="DIR_OR_NPZ",
                     help="image-to-image: edit these clean images (a folder of PNG/JPEG images, or an "
                          ".npz of samples as generate writes them, e.g. a shard); seed s edits image s %% M")
    gen.add_argument("--strength", type=_unit_float, default=None,
                     help="with --init: how much to change the images, 0 (none) .. 1 (from noise)")
    gen.add_argument("--features", metavar="MODULE:FN",
                     help="also reduce each sample to features with this function (of a batch of written "
                          "samples, returning (n, dim)): shards hold the features, and DIR/stats.npz their "
                          "statistics once the job is complete (for `karras-jax fd`)")
    gen.add_argument("--keep-samples", action="store_true",
                     help="with --features: write the samples into the shards too")
    gen.add_argument("--png", action="store_true",
                     help="also write one PNG per sample (image models; needs Pillow)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--dry-run", action="store_true",
                     help="check the arguments and the folder and say what would be done; write nothing")


def _generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from karras_jax.generation import generate, verify

    if args.verify is not None:
        report = verify(args.verify)
        _print_verify(args.verify, report, args.verbose)
        return 0 if report["ok"] else 1
    missing = [f"--{n}" for n in ("model", "seeds", "out") if getattr(args, n) is None]
    if missing:
        parser.error(f"generate needs {', '.join(missing)} (or --verify DIR)")
    _check_out("--out", args.out, create=False)  # generate() creates it once the job is planned
    result = generate(args.model, args.seeds, args.out, batch=args.batch, steps=args.steps,
                      schedule=args.schedule, solver=args.solver, eta=args.eta, s_churn=args.s_churn,
                      s_noise=args.s_noise,
                      s_min=args.s_min, s_max=args.s_max, guidance=args.guidance, png=args.png,
                      shard_size=args.shard_size, progress=not args.no_progress, dry_run=args.dry_run,
                      init=args.init, strength=args.strength, features=args.features,
                      keep_samples=args.keep_samples)
    if args.dry_run:
        print(f"{result.folder}: {len(args.seeds):,} seeds in {result.shards:,} shards; would write "
              f"{result.written:,}, {result.skipped:,} already complete (dry run: nothing written)")
        return 0
    print(f"{result.folder}: {result.shards} shards ({result.written} written now, {result.skipped} already "
          f"complete) in {result.seconds:.1f} s"
          + (f", {result.samples_per_s:,.0f} samples/s" if result.written else ""))
    if args.features is not None:
        print(f"feature statistics: {result.folder / 'stats.npz'} (compare with: karras-jax fd REF "
              f"{result.folder})")
    return 0


def _fd_parser(sub: Any) -> None:
    fd = sub.add_parser(
        "fd", help="the Frechet distance between two feature statistics (FID with Inception features)",
        description="Print the Frechet distance between two sets of feature statistics. Each of REF and GEN "
        "is a statistics file (kj.FeatureStats.save, or a generate job's stats.npz), a generate folder "
        "with a stats.npz, or (with --features) a generate folder whose shards hold samples, or an .npz "
        "of samples.")
    fd._sub = "fd"
    fd.add_argument("ref", type=Path, metavar="REF", help="the reference statistics, folder or samples")
    fd.add_argument("gen", type=Path, metavar="GEN", help="the generated statistics, folder or samples")
    fd.add_argument("--features", metavar="MODULE:FN",
                    help="the feature function for samples (batch of samples -> (n, dim))")


def _sigma_rels(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one width, got {text!r}")
    return values


def _reconstruct_ema_parser(sub: Any) -> None:
    ema = sub.add_parser(
        "reconstruct-ema", help="build the EMA of any width from a run's post-hoc EMA snapshots (EDM2)",
        description="Reconstruct the power-function EMA of each width in --sigma-rel from the snapshots a "
        "run saved (kj.fit(..., snapshot_every=) with TrainState.create(..., ema_profiles=)), as EDM2's "
        "post-hoc EMA, and write each as a model folder OUT/ema-<width>/ that generate --model and "
        "sample-digits --checkpoint load.")
    ema._sub = "reconstruct-ema"
    ema.add_argument("--checkpoint", type=Path, required=True, metavar="DIR",
                     help="the run's folder (with its snapshots/)")
    ema.add_argument("--sigma-rel", type=_sigma_rels, required=True, metavar="W[,W...]",
                     help="EMA widths sigma_rel, each in (0, 0.2887), e.g. 0.05,0.1")
    ema.add_argument("--out", type=Path, required=True, metavar="DIR2", help="where the model folders go")
    ema.add_argument("--step", type=_positive_int, default=None,
                     help="the step to reconstruct at: a snapshot's (default: the last snapshot's)")


def _reconstruct_ema(args: argparse.Namespace) -> int:
    from karras_jax.training import write_posthoc_ema

    if not args.checkpoint.is_dir():
        raise ValueError(f"argument --checkpoint: {args.checkpoint} is not a folder")
    _check_out("--out", args.out, create=False)
    try:
        folders = write_posthoc_ema(args.checkpoint, args.out, args.sigma_rel, step=args.step)
    except FileNotFoundError as err:  # no snapshots: the run did not save any
        raise ValueError(f"argument --checkpoint: {_one_line(err)}") from None
    for folder in folders:
        print(f"wrote {folder}")
    return 0


def _fd(args: argparse.Namespace) -> int:
    from karras_jax.generation.features import stats_of
    from karras_jax.generation.stats import frechet_distance

    stats = []
    for flag, path in (("REF", args.ref), ("GEN", args.gen)):
        if not path.exists():
            raise ValueError(f"argument {flag}: {path} does not exist")
        try:
            stats.append(stats_of(path, args.features))
        except ValueError as err:
            raise ValueError(f"argument {flag}: {_one_line(err)}") from None
    if stats[0].dim != stats[1].dim:
        raise ValueError(f"REF has {stats[0].dim} features and GEN {stats[1].dim}: not one feature space")
    ref, gen = (int(s.count) for s in stats)
    print(f"{frechet_distance(*stats):.6g}  (REF {ref:,} samples, GEN {gen:,}, {stats[0].dim} features)")
    return 0


_VERIFY_STATES = {
    "complete": "complete",
    "written": "written, checksum in progress-pN.json (not yet in the manifest)",
    "unrecorded": "on disk, but no checksum vouches for it (generated again)",
    "missing": "missing",
    "corrupt": "corrupt (generated again)",
}
_RANGES_SHOWN = 4


def _print_verify(folder: Path, report: dict[str, Any], verbose: bool) -> None:
    """One line per state that has shards, with their seeds as ranges; ``verbose``: every shard too."""
    total = report["shards"]
    print(f"{folder}: {total:,} shards; " + ("the job is complete." if report["ok"] else
          "the job is not finished: rerun the same generate command to finish it."))
    for state, meaning in _VERIFY_STATES.items():
        names, ranges = report[state], report["seed_ranges"][state]
        if not names:
            continue
        shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:_RANGES_SHOWN])
        more = f" and {len(ranges) - _RANGES_SHOWN} more ranges" if len(ranges) > _RANGES_SHOWN else ""
        print(f"  {len(names):>9,} {meaning}: seeds {shown}{more}")
        if verbose and state != "complete":
            why = report["corrupt"] if state == "corrupt" else {}
            for name in names:
                print(f"      {name}" + (f": {why[name]}" if name in why else ""))
    if "stats" in report:
        print(f"  {report['stats']} (rerunning the same generate command writes it again)")


def _likelihood_parser(sub: Any) -> None:
    from karras_jax.likelihood import LIKELIHOOD_SOLVERS, TRACES
    from karras_jax.schedules import SCHEDULES

    lik = sub.add_parser(
        "likelihood",
        help="score the samples of an .npz array under a model: nats per sample and bits per dimension",
        description="Compute kj.log_likelihood (the probability-flow ODE run upward) of every sample of "
        "an array in --data under --model, in batches, and print the mean and its standard error in nats "
        "per sample and bits per dimension. The samples are in the model's own space (the sampler's "
        "output, before any postprocess). A conditional model is scored unconditionally, with its "
        "null condition. Writes nothing unless --out is given.",
    )
    lik._sub = "likelihood"
    lik.add_argument("--model", required=True,
                     help="mixture, package.module:function, or a folder written by kj.fit")
    lik.add_argument("--data", type=Path, required=True,
                     help="an .npz (or .npy) file holding (n, *sample_shape) samples")
    lik.add_argument("--key", default=None, help="the array in --data (default: its only array)")
    lik.add_argument("--steps", type=_steps, default=None, help="noise levels N (default: the model's)")
    lik.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "flow"], default=None,
                     help="schedule (default: the model's; 'flow' has no Gaussian prior)")
    lik.add_argument("--solver", choices=LIKELIHOOD_SOLVERS, default="heun", help="ODE solver (default heun)")
    lik.add_argument("--trace", choices=TRACES, default="exact",
                     help="divergence: exact (d Jacobian-vector products) or hutchinson (default exact)")
    lik.add_argument("--probes", type=_positive_int, default=None,
                     help="Hutchinson probe vectors per sample (--trace hutchinson; default 1)")
    lik.add_argument("--seed", type=_seed, default=0, help="seed of the Hutchinson probes (default 0)")
    lik.add_argument("--batch", type=_positive_int, default=256, help="samples per call (default 256)")
    lik.add_argument("--out", type=Path, default=None,
                     help="an .npz file to write the per-sample values to (nats, bits_per_dim)")


def _check_npz_out(out: Path) -> None:
    """Refuses, as a usage error naming ``--out``, a path that cannot be a new .npz file."""
    if out.suffix != ".npz":
        raise ValueError(f"argument --out: must be an .npz file, got {out}")
    if out.is_dir():
        raise ValueError(f"argument --out: {out} is a folder, not an .npz file")
    if not out.parent.is_dir():
        raise ValueError(f"argument --out: the folder of {out} does not exist: {out.parent}")


def _load_samples(path: Path, key: str | None) -> tuple[Any, str]:
    """The array ``key`` of ``path`` (an .npz, or an .npy), and its name; usage errors name the flag."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # an .npy file: one unnamed array
            if key is not None:
                raise ValueError(f"argument --key: {path} is one .npy array, not an .npz of named arrays")
            return loaded, path.stem
        with loaded:
            names = list(loaded.files)
            if key is None and len(names) != 1:
                held = ", ".join(names) if names else "no arrays"
                raise ValueError(f"argument --key: {path} holds {len(names)} arrays ({held}); name one")
            name = names[0] if key is None else key
            if name not in names:
                raise ValueError(f"argument --key: {path} has no array {name!r} (it holds "
                                 f"{', '.join(names) or 'none'})")
            return np.asarray(loaded[name]), name
    except (OSError, EOFError) as err:
        raise ValueError(f"argument --data: {_one_line(err)}") from None
    except ValueError as err:
        if str(err).startswith("argument --"):
            raise
        raise ValueError(f"argument --data: {path}: {_one_line(err)}") from None


def _likelihood(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import karras_jax as kj

    if args.out is not None:
        _check_npz_out(args.out)
    if args.probes is not None and args.trace != "hutchinson":
        raise ValueError("argument --probes: applies to --trace hutchinson only")
    try:
        model = kj.load_generate_model(args.model)
    except ValueError as err:
        raise ValueError(f"argument --model: {_one_line(err)}") from None
    schedule = args.schedule or model.schedule
    if schedule == "flow":
        raise ValueError("argument --model: its schedule is 'flow', whose sigma_max is infinite (no Gaussian "
                         "prior for the likelihood); pass --schedule karras or another")
    data, name = _load_samples(args.data, args.key)
    sample_shape = tuple(model.sample_shape)
    if data.ndim < 1 or data.shape[0] == 0 or tuple(data.shape[1:]) != sample_shape:
        raise ValueError(f"argument --data: {args.data}[{name!r}] has shape {data.shape}; the model needs "
                         f"(n, {', '.join(map(str, sample_shape))}) with n >= 1")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"argument --data: {args.data}[{name!r}] holds {data.dtype}, not real numbers")
    dtype = np.float64 if data.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32
    data = data.astype(dtype)
    finite = np.all(np.isfinite(data.reshape(len(data), -1)), axis=1)
    if not finite.all():
        raise ValueError(f"argument --data: {args.data}[{name!r}] sample {int(np.argmin(finite))} is not "
                         "finite (NaN or inf)")
    steps = args.steps or model.steps
    state = kj.set_timesteps(model.config, steps, schedule)
    batch = min(args.batch, len(data))
    cond = None
    if model.cond_fn is not None and model.null_cond is not None:  # the unconditional model
        null = jnp.asarray(model.null_cond)
        cond = jnp.broadcast_to(null, (batch, *null.shape))
    probes = args.probes or 1

    @jax.jit
    def score(params: Any, x: jax.Array, key: jax.Array) -> jax.Array:
        def denoise(y: jax.Array, sigma: jax.Array, c: Any) -> jax.Array:
            return model.apply_fn(params, y, sigma, c)

        return kj.log_likelihood(denoise, x, state, key if args.trace == "hutchinson" else None,
                                 trace=args.trace, probes=probes, solver=args.solver, cond=cond)

    start = time.perf_counter()
    base = jax.random.key(args.seed)
    values = []
    for i, lo in enumerate(range(0, len(data), batch)):
        chunk = data[lo:lo + batch]
        count = len(chunk)
        if count < batch:  # pad the last batch to the compiled shape; the padding is dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
        out = score(model.params, jnp.asarray(chunk), jax.random.fold_in(base, i))
        values.append(np.asarray(out)[:count])
    nats = np.concatenate(values).astype(np.float64)
    seconds = time.perf_counter() - start
    bad = np.flatnonzero(~np.isfinite(nats))
    if bad.size:
        raise FloatingPointError(f"non-finite log-likelihood for sample {int(bad[0])} of {args.data} "
                                 f"({bad.size} in all); nothing written")
    dims = int(np.prod(sample_shape))
    bpd = np.asarray(kj.bits_per_dim(nats, dims), np.float64)
    n = len(nats)
    plural = "s" if probes > 1 else ""
    trace = "exact trace" if args.trace == "exact" else f"Hutchinson trace, {probes} probe{plural}"
    print(f"{n:,} samples of shape {sample_shape} from {args.data}[{name!r}]; model {args.model}, "
          f"{args.solver} N={steps} ({schedule}), {trace}; {seconds:.1f} s, {n / seconds:,.1f} samples/s")
    if cond is not None:
        print("conditional model: scored unconditionally (its null condition)")

    def stats(values: Any) -> str:
        error = values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        return f"{values.mean():.6f} (standard error {error:.6f})" if n > 1 else f"{values.mean():.6f}"

    print(f"log-likelihood: {stats(nats)} nats per sample")
    print(f"bits per dim:   {stats(bpd)} (d = {dims})")
    if args.out is not None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, nats=nats, bits_per_dim=bpd)
        atomic_write(args.out, lambda f: f.write(buffer.getvalue()))
        print(f"wrote {args.out}")
    return 0


def _digits_parsers(sub: Any) -> None:
    from karras_jax.examples.digits import DigitsConfig

    default = DigitsConfig()
    train = sub.add_parser(
        "train-digits",
        help="train a class-conditional EDM model on scikit-learn's 8x8 digits (155 s on 2 CPU cores)",
        description="Train kj.UNet on the training split of scikit-learn's digits, then sample, "
        "score with a classifier and write checkpoint.msgpack, guided.png, unguided.png, loss.png and "
        "metrics.json to --out. Re-running with the same --out resumes from its checkpoint.",
    )
    train._sub = "train-digits"
    train.add_argument("--out", type=Path, default=Path("digits_run"),
                       help="output folder (default ./digits_run)")
    train.add_argument("--steps", type=_steps, default=default.steps,
                       help=f"training steps (default {default.steps})")
    train.add_argument("--batch", type=_positive_int, default=default.batch,
                       help=f"batch size (default {default.batch})")
    train.add_argument("--channels", type=_positive_int, default=default.channels,
                       help=f"UNet channels; the DiT's width is 4x (default {default.channels})")
    train.add_argument("--model", choices=("unet", "dit"), default=default.model,
                       help=f"the network: kj.UNet or kj.DiT (default {default.model})")
    train.add_argument("--learning-rate", type=_positive_float, default=default.learning_rate,
                       help=f"Adam's learning rate (default {default.learning_rate:g}; the DiT "
                            "reached 0.998 guided accuracy with 1e-3)")
    train.add_argument("--seed", type=_seed, default=default.seed, help="seed (default 0)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=200,
                       help="steps between checkpoints (default 200)")
    train.add_argument("--no-eval", action="store_true",
                       help="train and write the checkpoint only (no sampling, scoring or figures)")
    sample = sub.add_parser(
        "sample-digits",
        help="sample digits from a train-digits checkpoint into an .npz",
        description="Write samples (N, 8, 8) float32 on scikit-learn's 0..16 pixel scale and labels (N,) "
        "int64 (classes 0..9 balanced, or -1 for --unconditional) to --out.",
    )
    sample._sub = "sample-digits"
    sample.add_argument("--checkpoint", type=Path, required=True, help="a train-digits output folder")
    sample.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    sample.add_argument("--n", type=_positive_int, required=True, help="number of samples")
    sample.add_argument("--unconditional", action="store_true",
                        help="sample the unconditional model (the null class); labels are -1")
    sample.add_argument("--guidance", type=_non_negative_float, default=None,
                        help="classifier-free guidance scale w (default: the checkpoint's, 2.0; "
                             "1 = unguided)")
    sample.add_argument("--seed", type=_seed, default=0, help="seed (default 0)")


def _train_digits(args: argparse.Namespace) -> int:
    import dataclasses

    from karras_jax.examples.digits import DigitsConfig, run_example, train_digits

    cfg = dataclasses.replace(DigitsConfig(), steps=args.steps, batch=args.batch, channels=args.channels,
                              seed=args.seed, model=args.model, learning_rate=args.learning_rate)
    _check_out("--out", args.out)
    # ImportError (no scikit-learn), ValueError (a checkpoint of other settings in --out): main()
    if args.no_eval:
        run = train_digits(args.out, cfg, checkpoint_every=args.checkpoint_every)
        print(f"trained {cfg.steps} steps (resumed at {run.resumed_from}); checkpoint in {args.out}")
        return 0
    m = run_example(args.out, cfg, checkpoint_every=args.checkpoint_every)
    resumed = f" (resumed at step {m['resumed_from']})" if m["resumed_from"] else ""
    print(f"trained {m['steps']} steps of {m['batch']} in {m['train_seconds']:.0f} s{resumed}; "
          f"sampled in {m['sample_seconds']:.0f} s; total {m['total_seconds']:.0f} s")
    print(f"classifier (MLP on the training split): test accuracy {m['classifier_test_accuracy']:.3f}")
    print(f"guided (w = {cfg.guidance}) conditional accuracy: {m['guided_accuracy']:.3f}  (target >= 0.95)")
    print(f"unguided (w = 1) accuracy: {m['unguided_accuracy']:.3f}; class histogram "
          f"{m['unguided_class_histogram']}")
    print(f"Frechet distance to the test split: unguided {m['frechet_unguided_vs_test']:.3f} = "
          f"{m['frechet_ratio_to_floor']:.2f} x the floor "
          f"(train vs test {m['frechet_train_vs_test_floor']:.3f}; "
          f"target <= 2x); per-class Gaussian fit {m['frechet_gaussian_baseline_vs_test']:.3f}")
    print(f"wrote {args.out}/checkpoint.msgpack, guided.png, unguided.png, loss.png, metrics.json")
    return 0


def _sample_digits(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from karras_jax.examples.digits import balanced_labels, load_model, sample_digits

    if args.out.suffix != ".npz":
        raise ValueError(f"argument --out: must be an .npz file, got {args.out}")
    if args.out.is_dir():
        raise ValueError(f"argument --out: {args.out} is a folder, not an .npz file")
    if not args.out.parent.is_dir():
        raise ValueError(f"argument --out: the folder of {args.out} does not exist: {args.out.parent}")
    if args.unconditional and args.guidance is not None:
        raise ValueError("argument --guidance: needs class labels; drop it or --unconditional")
    try:
        cfg, params = load_model(args.checkpoint)
    except (OSError, ValueError) as err:  # a missing, truncated or foreign checkpoint
        message = _one_line(err)
        where = "" if str(args.checkpoint) in message else f"{args.checkpoint}: "
        raise ValueError(f"argument --checkpoint: {where}{message}") from None
    if args.unconditional:
        labels = np.full((args.n,), -1, np.int64)
        samples = sample_digits(cfg, params, args.n, seed=args.seed)
    else:
        labels = balanced_labels(args.n)
        samples = sample_digits(cfg, params, args.n, labels=labels, guidance=args.guidance, seed=args.seed)
    buffer = io.BytesIO()
    np.savez(buffer, samples=samples.astype(np.float32), labels=labels)
    atomic_write(args.out, lambda f: f.write(buffer.getvalue()))
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


# The energy distance is quadratic in the number of points: it is computed on the first
# EVAL_POINTS samples (and as many true ones), and so is the plot.
EVAL_POINTS = 8192
# Bytes held per seed: samples of each solver, the true sets, keys and the sampler's
# temporaries (measured: peak RSS 510 MiB at --seeds 1000000, 1 GiB budgeted for the runtime;
# about twice the per-seed part for headroom).
_BYTES_PER_SEED = 384
_BYTES_FIXED = 1 << 30  # JAX, XLA and the compiled programs


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_demo_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Everything that can be refused before JAX starts: memory, the output folder and files."""
    need = _BYTES_FIXED + _BYTES_PER_SEED * args.seeds * max(1, len(args.solvers))
    have = _available_memory()
    if have is not None and need > have:
        parser.error(f"argument --seeds: {args.seeds:,} seeds need about {need / 2**30:.1f} GiB, "
                     f"{have / 2**30:.1f} GiB is available")
    from karras_jax.solvers import takes_eta

    if args.eta is not None and not set(args.solvers) & set(takes_eta()):
        parser.error(f"argument --eta: applies to {', '.join(takes_eta())}; none is in --solvers")
    _check_out("--out", args.out)  # before any sampling, so a bad folder costs nothing
    for name in ("samples.npz", "demo.png"):
        if (args.out / name).is_dir():
            raise ValueError(f"argument --out: {args.out / name} is a folder, in the way of an output file")


def _row(cells: Sequence[tuple[str, int, str]]) -> str:
    """Cells (text, width, align) joined so that a cell wider than its column still has a space."""
    out = []
    for i, (text, width, align) in enumerate(cells):
        if align == "<":
            out.append(text.ljust(width) if i + 1 == len(cells) or len(text) < width else text + " ")
        else:
            out.append(" " + text.rjust(width - 1) if i else text.rjust(width))
    return "".join(out)


def _evaluations(solver: Any, state: Any) -> int:
    """The network evaluations of a run: the flow schedule's first step is one (Euler's limit)."""
    n = state.num_inference_steps
    if state.schedule_name != "flow":
        return solver.evaluations(n)
    return 1 if n == 1 else solver.evaluations(n - 1) + 1


def _demo(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import karras_jax as kj
    from karras_jax.analytic import default_mixture, energy_distance

    mixture, model = default_mixture(), kj.load_generate_model("mixture")
    if args.seed + args.seeds - 1 > kj.MAX_SEED:
        raise ValueError(f"argument --seed: seeds {args.seed} .. {args.seed + args.seeds - 1} pass "
                         f"{kj.MAX_SEED} (the largest seed)")
    args.steps = model.steps if args.steps is None else args.steps
    args.schedule = model.schedule if args.schedule is None else args.schedule
    config = model.config.replace(**{name: getattr(args, name) for name in ("s_noise", "s_churn")
                                     if getattr(args, name) is not None})
    args.s_churn = float(config.s_churn)
    if args.schedule == "diffusers":
        # diffusers' levels are squared sigmas: keep sigma_max**2 at diffusers' 1e4, not 6400.
        config = config.replace(sigma_min=0.02, sigma_max=100.0)
    state = kj.set_timesteps(config, args.steps, args.schedule)
    keys = kj.seed_keys(np.arange(args.seed, args.seed + args.seeds, dtype=np.int64))
    k_true, k_floor = jax.random.split(jax.random.key(args.seed + 1_000_003))
    evaluated = min(args.seeds, EVAL_POINTS)
    truth = mixture.sample(k_true, args.seeds)
    floor = float(energy_distance(mixture.sample(k_floor, evaluated), truth[:evaluated]))

    print(f"karras_jax {kj.__version__} demo on {jax.devices()[0].platform.upper()} "
          f"({jax.device_count()} device{'s' if jax.device_count() > 1 else ''}): {args.seeds} "
          f"seeds, 2-D Gaussian mixture, "
          f"schedule={args.schedule}, s_churn={args.s_churn:g}"
          + ("" if args.eta is None else f", eta={args.eta:g}"))
    if args.schedule == "diffusers":
        print(f"diffusers' levels use sigma_min={config.sigma_min:g}, sigma_max={config.sigma_max:g} "
              f"(levels {float(state.sigmas[0]):g} .. {float(state.sigmas[-2]):g}: their squares)")
    if evaluated < args.seeds:
        print(f"energy distance on the first {evaluated} samples (it is quadratic in their number)")
    w = max(7, 1 + max(map(len, args.solvers)))  # the name column, 7 wide for heun and euler
    columns = ((w, "<"), (5, ">"), (6, ">"), (11, ">"), (9, ">"), (12, ">"), (13, ">"))
    header = _row([(t, cw, a) for t, (cw, a) in
                   zip(("solver", "N", "NFE", "compile s", "run s", "samples/s", "energy dist"), columns,
                       strict=True)])
    print(header)
    print("-" * len(header))
    results = {}
    for name in args.solvers:
        eta = {"eta": args.eta} if args.eta is not None and name in kj.takes_eta() else {}
        solver = kj.get_solver(name, **eta)
        sampler = jax.jit(lambda k, st, s=solver: kj.sample(mixture.denoise, k, st, None, (2,), solver=s))
        _, first = _timed(sampler, keys, state)
        samples, run = _timed(sampler, keys, state)
        nfe = _evaluations(solver, state)
        dist = float(energy_distance(samples[:evaluated], truth[:evaluated]))
        results[name] = np.asarray(samples)
        cells = (name, str(args.steps), str(nfe), f"{max(first - run, 0.0):.2f}", f"{run:.3f}",
                 f"{args.seeds / run:,.0f}", f"{dist:.5f}")
        print(_row([(t, cw, a) for t, (cw, a) in zip(cells, columns, strict=True)]))
    print(_row([(t, cw, a) for t, (cw, a) in
                zip(("true", "", "", "", "", "", f"{floor:.5f}"), columns, strict=True)])
          + "   <- two independent true sets (the floor)")
    if not all(np.all(np.isfinite(samples)) for samples in results.values()):
        print("karras-jax: error: non-finite samples", file=sys.stderr)
        return 1

    npz = atomic_write(args.out / "samples.npz",
                       lambda f: np.savez(f, **results, true=np.asarray(truth),
                                          sigmas=np.asarray(state.sigmas)))
    print(f"wrote {npz}")
    if not args.no_plot:
        first = args.solvers[0]
        dist = float(energy_distance(results[first][:evaluated], truth[:evaluated]))
        png = _plot(args.out / "demo.png", np.asarray(truth[:evaluated]), results[first][:evaluated],
                    args, dist, floor)
        print(f"wrote {png}" if png else "matplotlib not installed: no PNG (pip install "
              "'karras-jax[demo]')")
    return 0


def _plot(path: Path, truth: Any, samples: Any, args: argparse.Namespace, dist: float,
          floor: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 5.2), sharex=True, sharey=True, layout="constrained")
    panels = ((axes[0], truth, "true samples", f"(floor: two true sets differ by {floor:.4f})"),
              (axes[1], samples, f"karras_jax, {args.solvers[0]}, N={args.steps}",
               f"energy distance to the true set {dist:.4f}"))
    for ax, points, title, note in panels:
        ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.5, color="tab:blue")
        ax.set_title(f"{title}\n{note}", fontsize=10)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
    shown = f"first {len(samples)} of {args.seeds}" if len(samples) < args.seeds else f"{args.seeds}"
    fig.suptitle(f"{shown} seeds, schedule={args.schedule}, s_churn={args.s_churn:g}")
    out = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``karras-jax`` console script; returns the exit code.

    Usage errors (a bad flag, and the ``ValueError``/``TypeError``/``ImportError`` raised
    before any work) end in ``SystemExit(2)`` as argparse's own do; runtime errors (``OSError``,
    ``FloatingPointError``, ...) return 1; Ctrl-C returns 130. Each prints one line on stderr;
    ``--debug`` re-raises instead, to show the traceback.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            _check_demo_args(args, parser)
            return _demo(args)
        if args.command == "train-digits":
            return _train_digits(args)
        if args.command == "sample-digits":
            return _sample_digits(args)
        if args.command == "generate":
            return _generate(args, parser)
        if args.command == "likelihood":
            return _likelihood(args)
        if args.command == "fd":
            return _fd(args)
        if args.command == "reconstruct-ema":
            return _reconstruct_ema(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write("\nkarras-jax: interrupted; files written so far are complete, none half-written\n")
        return 130
    except _USAGE_ERRORS as err:
        if args.debug:
            raise
        parser.exit(2, f"karras-jax: error: {_one_line(err)}\n")
    except _RUNTIME_ERRORS as err:
        if args.debug:
            raise
        sys.stderr.write(f"karras-jax: error: {_one_line(err)}\n")
        return 1
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
