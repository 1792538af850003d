"""Measurement 2: ``kj.sample`` against diffusers' ``KarrasVeScheduler`` pipeline loop and a
plain PyTorch Algorithm 2 loop (k-diffusion's ``sample_heun`` style), identical MLP weights
and noise levels. The three must agree on a fixed noise stream (s_churn = 0, same x_0)
before anything is timed; the timed runs use the suite's config (churn on).

Fairness to the peers: before each batch size, each PyTorch loop is probed with
``torch.set_num_threads(cores)`` and with 1 thread, and timed with the faster (on a machine
shared with other processes, OpenMP barriers can make 2 threads 100x slower than 1). The
2N - 1 evaluations of the PyTorch MLP alone are timed too, to show how much of each loop is
the network, and the same 2N - 1 evaluations of the Flax MLP in a ``fori_loop``, to
compare the two networks alone. On a GPU the loops run on CUDA, with TF32 matmuls allowed
as JAX's default precision allows them.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np

import karras_jax as kj
from benchmarks.bench_overhead import network_only
from benchmarks.models import torch_mlp
from benchmarks.suite import Suite, batch_keys, ratio, row
from benchmarks.timing import once
from benchmarks.torch_loops import diffusers_loop, diffusers_scheduler, heun_loop, network_loop

# float32 on both sides (full precision for the check): matmuls sum in different orders.
AGREE_RTOL = 1e-3


def torch_device(jax_backend: str) -> str:
    """CUDA when JAX runs on a GPU and this torch has CUDA; else CPU."""
    import torch

    return "cuda" if jax_backend == "gpu" and torch.cuda.is_available() else "cpu"


def has_diffusers() -> bool:
    try:
        import diffusers.schedulers.deprecated.scheduling_karras_ve  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_generator() -> Any:
    """diffusers' scheduler draws its noise with ``randn_tensor`` on the generator's device and
    moves it to the sample's: it refuses a CUDA generator, so the pipeline passed a CPU one."""
    import torch

    return torch.Generator().manual_seed(0)


@contextlib.contextmanager
def _full_precision() -> Any:
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _check_agreement(suite: Suite, model: Any, device: str, batch: int, n: int) -> dict[str, float]:
    """Runs all loops on one x_0 with s_churn = 0; raises if any differs from ``kj.sample``."""
    import torch

    _, params, shape = suite.model("mlp")
    config = suite.config.replace(s_churn=0.0)
    state = kj.set_timesteps(config, n)
    keys = batch_keys(batch, seed=7)
    x0 = kj.initial_noise(keys, state, shape)
    x0_t = torch.from_numpy(np.array(x0)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    with _full_precision():
        ours = np.asarray(suite.sampler("mlp", n)(params, keys, x_init=x0, config=config, state=state))
        sigmas = torch.from_numpy(np.array(state.sigmas)).to(device)
        theirs = {"torch_heun": heun_loop(model, sigmas, x0_t, config, gen).cpu().numpy()}
        if has_diffusers():
            sched = diffusers_scheduler(config, np.asarray(state.schedule), device)
            theirs["diffusers"] = diffusers_loop(model, sched, x0_t, _cpu_generator()).cpu().numpy()
    scale = float(np.abs(ours).max())
    diffs = {f"max_abs_diff_vs_{k}": float(np.abs(ours - v).max()) for k, v in theirs.items()}
    if max(diffs.values()) > AGREE_RTOL * scale:
        raise AssertionError(f"kj.sample and the PyTorch loops disagree (B={batch}, N={n}): {diffs}")
    return {**diffs, "max_abs_sample": scale}


def _threads(count: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``torch.set_num_threads(count)``, restoring the previous count."""
    import torch

    def run() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def _fastest_threads(counts: list[int], fn: Callable[[], Any], sync: Callable[[Any], Any]) -> int:
    """The thread count with the lowest median of 3 interleaved calls (after a warm-up call
    each); a count 4x slower than another on its first call is dropped at once."""
    runs = {count: _threads(count, fn) for count in counts}
    seconds: dict[int, list[float]] = {count: [] for count in counts}
    for timed in runs.values():
        sync(timed())
    for _ in range(3):
        for count in list(runs):
            seconds[count].append(once(runs[count], sync))
        fastest = min(min(seconds[c]) for c in runs)
        runs = {c: f for c, f in runs.items() if min(seconds[c]) <= 4 * fastest}
    return min(runs, key=lambda c: statistics.median(seconds[c]))


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 2: the MLP at every ``torch_batches`` size and N of the preset."""
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    device = torch_device(jax.default_backend())
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    _, params, shape = suite.model("mlp")
    model = torch_mlp(params, device)
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)
    thread_counts = sorted({cores, 1}, reverse=True) if device == "cpu" else [cores]
    jax_network = network_only(suite.model("mlp")[0])
    rows = []
    for n in suite.preset.steps:
        state = suite.state(n)
        sigmas = torch.from_numpy(np.array(state.sigmas)).to(device)
        sched = (
            diffusers_scheduler(suite.config, np.asarray(state.schedule), device) if has_diffusers() else None
        )
        for batch in suite.preset.torch_batches:
            agreement = _check_agreement(suite, model, device, batch, n)
            keys = batch_keys(batch)
            x0_t = torch.from_numpy(np.array(kj.initial_noise(keys, state, shape))).to(device)
            gen = torch.Generator(device=device).manual_seed(0)
            loops: dict[str, Callable[[], Any]] = {
                "torch_heun_loop": partial(heun_loop, model, sigmas, x0_t, suite.config, gen),
                "torch_network_only": partial(network_loop, model, sigmas, x0_t),
            }
            if sched is not None:
                loops["diffusers_loop"] = partial(diffusers_loop, model, sched, x0_t, _cpu_generator())
            fns: dict[str, Callable[[], Any]] = {
                "kj.sample": partial(suite.sampler("mlp", n), params, keys),
                "jax_network_only": partial(jax_network, params, kj.initial_noise(keys, state, shape), state),
            }
            chosen = {}
            for name, fn in loops.items():
                chosen[name] = _fastest_threads(thread_counts, fn, sync)
                fns[name] = _threads(chosen[name], fn)
            times = suite.compare(fns, syncs={name: sync for name in loops})
            rows.append(
                row(
                    "2_vs_pytorch",
                    {
                        "model": "mlp",
                        "B": batch,
                        "N": n,
                        "torch_device": device,
                        "torch_threads": thread_counts,
                    },
                    times,
                    torch_threads_chosen=chosen,
                    speedup_vs_diffusers=ratio(times["diffusers_loop"], times["kj.sample"])
                    if sched
                    else None,
                    speedup_vs_torch_heun=ratio(times["torch_heun_loop"], times["kj.sample"]),
                    torch_network_share=times["torch_network_only"].median / times["torch_heun_loop"].median,
                    network_speedup_vs_torch=ratio(times["torch_network_only"], times["jax_network_only"]),
                    agreement=agreement,
                )
            )
    return rows
