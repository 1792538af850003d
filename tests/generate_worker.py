"""One ``karras-jax generate`` run for the kill / interrupt / disk-full / multi-process tests (a subprocess).

    python generate_worker.py OUT SEEDS BATCH [--kill-at SHARD --where {sample,write,record}
                                               --signal {KILL,INT}] [--fsize BYTES] [--as-limit BYTES]
                                             [--shard-size N] [--dry-run]
                                             [--process I --processes N --port P] [--model MODEL]

--kill-at: send --signal (default SIGKILL) to this process when shard SHARD is about to be
sampled ("sample"), in the middle of writing it (temporary file written, not renamed:
"write") or once it is renamed into place but before it is recorded ("record"). --fsize:
RLIMIT_FSIZE (a full disk). --as-limit: RLIMIT_AS (no allocation grows past it).
--process/--processes/--port: join a local multi-process JAX cluster first (2 CPU devices per
process). --model: the MODEL (default ``mixture``). The run goes through the command line
(``karras_jax.cli.main``); its exit code is the command's.
"""

import argparse
import os
import resource
import signal
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("seeds")
    parser.add_argument("batch", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--where", default="sample")
    parser.add_argument("--signal", default="KILL")
    parser.add_argument("--fsize", type=int)
    parser.add_argument("--as-limit", type=int)
    parser.add_argument("--shard-size", type=int)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--process", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--model", default="mixture")
    args = parser.parse_args()
    # As at a terminal: a process started in the background (nohup, some CI runners) inherits
    # SIGINT ignored, and then Python never raises KeyboardInterrupt for the --signal INT cases.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    if args.as_limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (args.as_limit, args.as_limit))
    if args.processes:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    if args.processes:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.processes, args.process)

    import karras_jax.generation._writer as writer
    import karras_jax.generation.job as job
    from karras_jax.cli import main as karras_jax

    target = f"shard-{args.kill_at:06d}.npz" if args.kill_at is not None else None
    signum = getattr(signal, f"SIG{args.signal}")
    if args.where in ("write", "record"):
        real = writer.atomic_write

        def dying_write(path, write):
            def half_then_die(f):
                write(f)
                f.flush()
                if os.path.basename(path) == target and args.where == "write":
                    os.kill(os.getpid(), signum)
            done = real(path, half_then_die)
            if os.path.basename(path) == target and args.where == "record":
                os.kill(os.getpid(), signum)
            return done

        writer.atomic_write = dying_write
    elif target is not None:
        real_seed_keys = job.seed_keys
        first = int(args.kill_at) * (args.shard_size or args.batch)

        def dying_keys(seeds):
            if int(seeds[0]) == first:
                os.kill(os.getpid(), signum)
            return real_seed_keys(seeds)

        job.seed_keys = dying_keys
    argv = ["generate", "--model", args.model, "--seeds", args.seeds, "--batch", str(args.batch), "--out",
            args.out, "--no-progress"]
    if args.shard_size:
        argv += ["--shard-size", str(args.shard_size)]
    if args.dry_run:
        argv.append("--dry-run")
    sys.exit(karras_jax(argv))


if __name__ == "__main__":
    main()
