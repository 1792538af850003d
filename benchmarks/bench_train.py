"""Measurement 10: train-step throughput, ``kj.make_train_step`` against a PyTorch twin.

Both sides train the EDM-preconditioned MLP (d=64, hidden 256; the PyTorch model starts
from the Flax weights) on a fixed batch of Gaussian data with the EDM loss (ln sigma ~
N(-1.2, 1.2^2), weight (sigma^2 + 0.25)/(0.5 sigma)^2, squared error averaged over a
sample's elements, then over the batch), Adam (lr 1e-4) and the power-function EMA of the
weights (sigma_rel 0.05) after every step: the same work per step.

- ``kj``: ``kj.make_train_step(lambda p, x, k: kj.edm_loss(apply_fn, p, x, k), optax.adam)``,
  one call per step with a new key, the returned state feeding the next call.
- ``torch`` (the hand-written baseline): zero_grad, forward, the loss above, backward,
  ``torch.optim.Adam.step``, then the EMA under ``no_grad``; PyTorch's default threads. On
  the CPU; on CUDA (TF32 matmuls, as JAX's default precision) when JAX runs on a GPU and
  this torch has CUDA, each step then ended by ``torch.cuda.synchronize``.

Before timing, both losses are evaluated on the same sigma and noise (full float32
precision) and must agree to 1e-5 relative. Each batch size gets at least 20 timed rounds.
Figure: ``speedup`` = t(torch) / t(kj) per step; samples/s = B / t.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import karras_jax as kj
from benchmarks.bench_torch import _full_precision, torch_device
from benchmarks.models import MLP_DIM, SIGMA_DATA, torch_mlp
from benchmarks.suite import Suite, ratio, row

LR = 1e-4
SIGMA_REL = 0.05
MIN_ROUNDS = 20  # steps take milliseconds: 20 rounds cost little and steady the median


def torch_trainer(params: Any, batch: np.ndarray, device: str = "cpu") -> tuple[Any, Any]:
    """``(step, loss_at)``: one PyTorch train step, and the loss at given sigma and noise."""
    import torch

    model = torch_mlp(params, device).train()  # no dropout or norm layers: the mode changes nothing
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    ema = [p.detach().clone() for p in model.parameters()]
    gamma = kj.ema_gamma(SIGMA_REL)
    x = torch.from_numpy(batch).to(device)
    count = [0]

    def loss_at(sigma: Any, noise: Any) -> Any:
        denoised = model(x + sigma[:, None] * noise, sigma)  # the twin applies its preconditioning
        weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        return weight * ((denoised - x) ** 2).mean(dim=1)

    def step() -> Any:
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(x.shape[0], device=device))
        noise = torch.randn_like(x)
        opt.zero_grad(set_to_none=True)
        loss = loss_at(sigma, noise).mean()
        loss.backward()
        opt.step()
        count[0] += 1
        beta = (1 - 1 / count[0]) ** (gamma + 1)
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(beta).add_(p, alpha=1 - beta)
        return loss

    return step, loss_at


def _check_agreement(apply_fn: Any, params: Any, loss_at: Any, batch: np.ndarray,
                     device: str = "cpu") -> float:
    """Both losses at one set of sigma and noise (``apply_fn`` evaluated directly, not through
    ``kj.edm_loss``'s draws): max relative difference; AssertionError above 1e-5."""
    import torch

    rng = np.random.default_rng(0)
    sigma = np.exp(-1.2 + 1.2 * rng.standard_normal(batch.shape[0])).astype(np.float32)
    noise = rng.standard_normal(batch.shape).astype(np.float32)
    s = jnp.asarray(sigma)
    with _full_precision(), torch.no_grad():
        denoised = apply_fn(params, jnp.asarray(batch + sigma[:, None] * noise), s, None)
        ours = np.asarray(kj.loss_weight(s) * jnp.mean((denoised - batch) ** 2, axis=1))
        theirs = loss_at(torch.from_numpy(sigma).to(device), torch.from_numpy(noise).to(device)).cpu().numpy()
    diff = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    if diff > 1e-5:  # float32 on both sides: ~3e-7 here
        raise AssertionError(f"kj.edm_loss's formula and the PyTorch loss disagree: max relative {diff:.2e}")
    return diff


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 10: one per batch size of the preset."""
    import torch

    device = torch_device(jax.default_backend())
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default float32 matmul precision on GPUs
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)
    apply_fn, params, _ = suite.model("mlp")
    rows = []
    for batch_size in suite.preset.train_batches:
        batch = np.random.default_rng(1).normal(0.0, 0.5, (batch_size, MLP_DIM)).astype(np.float32)
        optimizer = optax.adam(LR)
        train_step = kj.make_train_step(lambda p, x, k: kj.edm_loss(apply_fn, p, x, k), optimizer,
                                        ema_sigma_rel=SIGMA_REL)
        state = [kj.TrainState.create(params, optimizer)]
        keys = iter(jax.random.split(jax.random.key(0), 1_000_000))
        x = jnp.asarray(batch)

        def kj_step(state: list = state, x: jax.Array = x, train_step: Any = train_step,
                    keys: Any = keys) -> Any:
            state[0], metrics = train_step(state[0], x, next(keys))
            return metrics["loss"]

        torch_step, loss_at = torch_trainer(params, batch, device)
        agreement = _check_agreement(apply_fn, params, loss_at, batch, device)
        times = suite.compare({"kj": kj_step, "torch": partial(torch_step)}, syncs={"torch": sync},
                              min_repeats=max(suite.preset.min_repeats, MIN_ROUNDS))
        case = {"model": "mlp", "B": batch_size, "torch_threads": torch.get_num_threads(),
                "torch_device": device}
        rows.append(row("10_train_step", case, times, samples_per_s_kj=batch_size / times["kj"].median,
                        samples_per_s_torch=batch_size / times["torch"].median,
                        speedup=ratio(times["torch"], times["kj"]), loss_agreement=agreement))
    return rows
