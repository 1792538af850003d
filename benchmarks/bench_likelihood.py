"""Measurement 15: likelihood throughput, kj.log_likelihood vs k-diffusion's ``log_likelihood``.

The same network and data on both sides: the MLP (d = 64, EDM-preconditioned, random weights,
its PyTorch twin ``benchmarks.models.torch_mlp`` holding the same weights) and the 2-D
mixture's exact denoiser (``kj.analytic.default_mixture``, rewritten in PyTorch below), on
data drawn from the mixture (2-D) or N(0, 0.5^2 I) (the MLP). EDM's levels, sigma_min =
0.002, sigma_max = 80.

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
each ratio is k-diffusion's time over kj's. The mean nats per sample of each is recorded too
(the Hutchinson and k-diffusion figures carry their probe noise).
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
import sys
import types
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from benchmarks.models import torch_mlp
from benchmarks.suite import Suite, row
from karras_jax.analytic import default_mixture

STEPS = 32
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
KD_NEEDS = ("torch", "torchdiffeq", "scipy", "tqdm", "torchsde", "k_diffusion")


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


def _cases(suite: Suite) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (denoise_fn for kj, torch module maker(device), data maker(batch))."""
    apply_fn, params, shape = suite.model("mlp")
    mixture = default_mixture()
    return {
        "mlp": (lambda x, s, c: apply_fn(params, x, s, c), lambda device: torch_mlp(params, device),
                lambda b: 0.5 * jax.random.normal(jax.random.key(7), (b, *shape))),
        "mixture": (mixture.denoise, torch_mixture, lambda b: mixture.sample(jax.random.key(7), b)),
    }


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
    for model, (denoise, make_torch, make_data) in _cases(suite).items():
        exact = jax.jit(lambda x, d=denoise: kj.log_likelihood(d, x, state))
        hutch = jax.jit(lambda x, k, d=denoise: kj.log_likelihood(d, x, state, k, trace="hutchinson"))
        for batch in suite.preset.likelihood_batches:
            x = jnp.asarray(make_data(batch), jnp.float32)
            key = jax.random.key(1)
            fns = {"kj exact": lambda x=x, f=exact: f(x),
                   "kj hutchinson": lambda x=x, k=key, f=hutch: f(x, k)}
            syncs: dict[str, Any] = {}
            means = {"kj exact": float(jnp.mean(exact(x))), "kj hutchinson": float(jnp.mean(hutch(x, key)))}
            fevals: dict[str, int] = {}
            if sampling is not None:
                import torch

                device = _device()
                sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)
                net32 = make_torch(device)
                for name, net, dtype in (("k-diffusion f64", copy.deepcopy(net32).double(), torch.float64),
                                         ("k-diffusion f32", net32, torch.float32)):
                    xt = torch.from_numpy(np.asarray(x)).to(device=device, dtype=dtype)
                    fns[name] = partial(_kd_call, sampling, net, xt)
                    ll, info = sampling.log_likelihood(net, xt, SIGMA_MIN, SIGMA_MAX)
                    means[name], fevals[name] = float(ll.mean()), int(info["fevals"])
                    syncs[name] = sync
            times = suite.compare(fns, syncs=syncs)
            per_s = {name: batch / t.median for name, t in times.items()}
            ratios = {f"{kd} / {ours}": times[kd].median / times[ours].median
                      for kd in fns if kd.startswith("k-diffusion") for ours in ("kj exact", "kj hutchinson")}
            rows.append(row("15_likelihood", {"model": model, "B": batch, "N": STEPS,
                                              "dims": int(np.prod(x.shape[1:]))}, times,
                            samples_per_s=per_s, ratios=ratios, mean_nats=means, kd_fevals=fevals,
                            kj_evaluations=2 * (STEPS - 1), kdiffusion_skipped=skipped))
    return rows
