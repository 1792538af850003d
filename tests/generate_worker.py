"""One run of kj.generate for the kill / disk-full / multi-process tests (a subprocess).

    python generate_worker.py OUT SEEDS BATCH [--kill-at SHARD --where {sample,write}]
                                             [--fsize BYTES] [--process I --processes N --port P]

--kill-at: SIGKILL this process when shard SHARD is about to be sampled ("sample") or in the
middle of writing it (temporary file written, not renamed: "write"). --fsize: RLIMIT_FSIZE
(a full disk). --process/--processes/--port: join a local multi-process JAX cluster first
(2 CPU devices per process).
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
    parser.add_argument("--fsize", type=int)
    parser.add_argument("--process", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    if args.processes:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax

    if args.processes:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.processes, args.process)

    import karras_jax as kj
    import karras_jax.generation._writer as writer
    import karras_jax.generation.job as job

    target = f"shard-{args.kill_at:06d}.npz" if args.kill_at is not None else None
    if args.where == "write":
        real = writer.atomic_write

        def dying_write(path, write):
            def half_then_die(f):
                write(f)
                f.flush()
                if os.path.basename(path) == target:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(path, half_then_die)

        writer.atomic_write = dying_write
    elif target is not None:
        real_seed_keys = job.seed_keys
        first = int(args.kill_at) * args.batch

        def dying_keys(seeds):
            if int(seeds[0]) == first:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_seed_keys(seeds)

        job.seed_keys = dying_keys
    try:
        kj.generate("mixture", args.seeds, args.out, batch=args.batch, progress=False)
    except OSError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
