"""Measurement 15: likelihood throughput, kj.log_likelihood vs k-diffusion's ``log_likelihood``.

The same network and data on both sides: the MLP (d = 64, EDM-preconditioned, random weights,
its PyTorch twin ``benchmarks.models.torch_mlp`` holding the same weights), the package's
``kj.UNet`` at the digits example's size (8x8x1, d = 64, 16 and 32 channels, EDM-preconditioned,
the null class; random weights, its zero-initialised output convolutions redrawn so that F is
not 0; its PyTorch twin ``benchmarks.models.torch_unet`` holding the same weights) and the 2-D
mixture's exact denoiser (``kj.analytic.default_mixture``, rewritten in PyTorch below), on
data drawn from the mixture (2-D) or N(0, 0.5^2 I) (the MLP, the UNet). EDM's levels,
sigma_min = 0.002, sigma_max = 80. Each PyTorch twin must match the JAX denoiser (float32, at
three noise levels) before anything is timed. The exact trace of the UNet is 64 Jacobian-vector
products of a conv net per evaluation, so the UNet runs at a quarter of the preset's batches.

- ``kj exact``: ``kj.log_likelihood`` with the exact trace, Heun, N = 32 on the karras grid
  (62 Jacobian evaluations of d Jacobian-vector products each).
- ``kj hutchinson``: the same with one Rademacher probe (one product per evaluation).
- ``k-diffusion f64`` / ``f32``: ``k_diffusion.sampling.log_likelihood`` as published
  (torchdiffeq's adaptive dopri5, atol = rtol = 1e-4, its defaults; one Rademacher probe), in
  float64 and in float32. Its step count adapts; ``fevals`` records the network calls of one
  run. k-diffusion's ``sampling.py`` is loaded without its package ``__init__`` (which pulls
  in scikit-image, torchvision, clip, ...), as ``tests/kdiffusion.py`` does; without torch,
  torchdiffeq or k-diffusion the k-diffusion columns are left out with the reason recorded.

The four are timed interleaved; throughput is samples per second of the median call, and
each ratio is k-diffusion's time over kj's. On a CPU, k-diffusion runs with the faster of
``torch.set_num_threads(cores)`` and 1 thread, probed on one network evaluation with its
vector-Jacobian product (as measurement 2 probes its loops: on a shared machine two threads
can be many times slower than one). The mean nats per sample of each is recorded too
(the Hutchinson and k-diffusion figures carry their probe noise).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import sys
import types
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from benchmarks.bench_torch import _fastest_threads, _threads
from benchmarks.models import torch_mlp, torch_unet
from benchmarks.suite import Suite, row
from karras_jax.analytic import default_mixture

STEPS = 32
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
KD_NEEDS = ("torch", "torchdiffeq", "scipy", "tqdm", "torchsde", "k_diffusion")
UNET_BATCH_DIVISOR = 4  # the UNet's exact trace is d = 64 conv-net JVPs per evaluation
TWIN_ATOL = 1e-4  # float32 on both sides, |D| ~ 1: convolutions sum in different orders


def kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module under a stand-in package (``utils.append_dims`` only).

    Raises:
      ImportError: naming what is not installed.
    """
    loaded = sys.modules.get("k_diffusion.sampling")
    if loaded is not None:
        return loaded
    missing = [name for name in KD_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"k-diffusion comparison needs {', '.join(missing)} (not installed)")
    folder = pathlib.Path(importlib.util.find_spec("k_diffusion").submodule_search_locations[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, dims: x[(...,) + (None,) * (dims - x.ndim)]
    package.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = package, utils
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", folder / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def torch_mixture(device: str) -> Any:
    """The default mixture's exact denoiser as a ``torch.nn.Module`` (float32; ``.double()`` works)."""
    import torch

    mixture = default_mixture()

    class Mixture(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("log_w", torch.from_numpy(np.log(np.array(mixture.weights))))
            self.register_buffer("means", torch.from_numpy(np.array(mixture.means)))
            self.register_buffer("var", torch.from_numpy(np.array(mixture.stds)) ** 2)

        def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)  # (B or 1, 1)
            total = self.var + sigma**2  # (., K)
            diff = x[:, None, :] - self.means  # (B, K, d)
            logits = self.log_w - 0.5 * (diff**2).sum(-1) / total - 0.5 * x.shape[-1] * torch.log(total)
            r = torch.softmax(logits, dim=-1)  # (B, K)
            posterior = self.means + (self.var / total)[..., None] * diff  # E[x0 | x, component k]
            return (r[..., None] * posterior).sum(1)

    return Mixture().to(device).eval()


def unet_weights(params: Any, seed: int = 5) -> Any:
    """``params`` with every all-zero kernel (the UNet's zero-initialised output convolutions:
    each block's ``conv_1`` and ``conv_out``) redrawn with LeCun-normal scale, so F is not 0."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    redrawn = [jax.random.normal(k, a.shape, a.dtype) / np.sqrt(np.prod(a.shape[:-1]))
               if a.ndim > 1 and not np.any(np.asarray(a)) else a for a, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, redrawn)


def _cases(suite: Suite) -> dict[str, tuple[Any, Any, Any, int]]:
    """name -> (denoise_fn for kj, torch module maker(device), data maker(batch), batch divisor)."""
    mlp_fn, mlp_params, mlp_shape = suite.model("mlp")
    unet_fn, unet_params, unet_shape = suite.model("unet")
    unet_params = unet_weights(unet_params)
    mixture = default_mixture()
    return {
        "mlp": (lambda x, s, c: mlp_fn(mlp_params, x, s, c), lambda device: torch_mlp(mlp_params, device),
                lambda b: 0.5 * jax.random.normal(jax.random.key(7), (b, *mlp_shape)), 1),
        "unet": (lambda x, s, c: unet_fn(unet_params, x, s, c),
                 lambda device: torch_unet(unet_params, device),
                 lambda b: 0.5 * jax.random.normal(jax.random.key(7), (b, *unet_shape)), UNET_BATCH_DIVISOR),
        "mixture": (mixture.denoise, torch_mixture, lambda b: mixture.sample(jax.random.key(7), b), 1),
    }


def _check_twin(denoise: Any, net: Any, x: jax.Array, device: str) -> float:
    """Largest |D_jax - D_torch| over three noise levels (float32); raises past ``TWIN_ATOL``."""
    import torch

    xt = torch.from_numpy(np.array(x, np.float32)).to(device)
    worst = 0.0
    with jax.default_matmul_precision("highest"), torch.no_grad():
        for sigma in (0.01, 1.0, 30.0):
            ours = np.asarray(denoise(x, jnp.float32(sigma), None))
            theirs = net(xt, torch.full(xt.shape[:1], sigma, device=xt.device)).cpu().numpy()
            worst = max(worst, float(np.abs(ours - theirs).max()))
    if not worst <= TWIN_ATOL:
        raise AssertionError(f"the PyTorch twin and the JAX denoiser differ by {worst:.2e} (> {TWIN_ATOL}).")
    return worst


def _kd_threads(net: Any, x: Any, device: str) -> int:
    """Torch threads for k-diffusion: the faster of all cores and 1 on one evaluation with its
    vector-Jacobian product (what each of k-diffusion's ODE evaluations does); on CUDA, all."""
    import torch

    cores = os.cpu_count() or 1
    if device != "cpu" or cores == 1:
        return cores

    def evaluation() -> Any:
        with torch.enable_grad():
            xg = x.detach().requires_grad_()
            out = net(xg, torch.ones(x.shape[:1], dtype=x.dtype, device=x.device))
            return torch.autograd.grad(out.sum(), xg)[0]

    return _fastest_threads([cores, 1], evaluation, lambda out: out)


def _kd_call(sampling: Any, net: Any, x: Any) -> Any:
    return sampling.log_likelihood(net, x, SIGMA_MIN, SIGMA_MAX)[0].detach()


def _device() -> str:
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 15: one per (denoiser, batch), kj and k-diffusion side by side."""
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX), STEPS, "karras")
    try:
        sampling = kdiffusion_sampling()
        skipped = None
    except ImportError as err:
        sampling, skipped = None, str(err)
    rows = []
    for model, (denoise, make_torch, make_data, divisor) in _cases(suite).items():
        exact = jax.jit(lambda x, d=denoise: kj.log_likelihood(d, x, state))
        hutch = jax.jit(lambda x, k, d=denoise: kj.log_likelihood(d, x, state, k, trace="hutchinson"))
        for batch in dict.fromkeys(max(1, b // divisor) for b in suite.preset.likelihood_batches):
            x = jnp.asarray(make_data(batch), jnp.float32)
            key = jax.random.key(1)
            fns = {"kj exact": lambda x=x, f=exact: f(x),
                   "kj hutchinson": lambda x=x, k=key, f=hutch: f(x, k)}
            syncs: dict[str, Any] = {}
            means = {"kj exact": float(jnp.mean(exact(x))), "kj hutchinson": float(jnp.mean(hutch(x, key)))}
            fevals: dict[str, int] = {}
            threads: dict[str, int] = {}
            twin_diff = None
            if sampling is not None:
                import torch

                device = _device()
                sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)
                net32 = make_torch(device)
                twin_diff = _check_twin(denoise, net32, x, device)
                for name, net, dtype in (("k-diffusion f64", copy.deepcopy(net32).double(), torch.float64),
                                         ("k-diffusion f32", net32, torch.float32)):
                    xt = torch.from_numpy(np.array(x)).to(device=device, dtype=dtype)
                    threads[name] = _kd_threads(net, xt, device)
                    fns[name] = _threads(threads[name], partial(_kd_call, sampling, net, xt))
                    ll, info = _threads(threads[name], partial(sampling.log_likelihood, net, xt, SIGMA_MIN,
                                                               SIGMA_MAX))()
                    means[name], fevals[name] = float(ll.mean()), int(info["fevals"])
                    syncs[name] = sync
            times = suite.compare(fns, syncs=syncs)
            per_s = {name: batch / t.median for name, t in times.items()}
            ratios = {f"{kd} / {ours}": times[kd].median / times[ours].median
                      for kd in fns if kd.startswith("k-diffusion") for ours in ("kj exact", "kj hutchinson")}
            rows.append(row("15_likelihood", {"model": model, "B": batch, "N": STEPS,
                                              "dims": int(np.prod(x.shape[1:]))}, times,
                            samples_per_s=per_s, ratios=ratios, mean_nats=means, kd_fevals=fevals,
                            kj_evaluations=2 * (STEPS - 1), kdiffusion_skipped=skipped,
                            torch_threads_chosen=threads, twin_max_abs_diff=twin_diff))
    return rows
