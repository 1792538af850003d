"""The denoisers: an MLP (d=64, hidden 256) and a small conv net on 32x32x3, in Flax linen,
the package's class-conditional ``kj.UNet`` on 8x8x1 (the digits example's size), plus a
PyTorch MLP that takes the Flax MLP's weights.

Every network is wrapped in EDM preconditioning by ``kj.precondition`` (Karras et al. 2022,
Table 1), so ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with sigma_data = 0.5.
The weights are random (initialised, not trained): speed does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj

SIGMA_DATA = 0.5
MLP_DIM = 64
MLP_HIDDEN = 256
IMAGE_SHAPE = (32, 32, 3)
UNET = {"channels": 16, "channel_mult": (1, 2), "num_classes": 10}
UNET_SHAPE = (8, 8, 1)

ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


class MLP(nn.Module):
    """F(x, c_noise): two hidden SiLU layers; c_noise enters as an extra input column."""

    dim: int = MLP_DIM
    hidden: int = MLP_HIDDEN

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        c_noise = jnp.asarray(c_noise, x.dtype)  # a scalar (sampling) or one per sample (training)
        column = jnp.broadcast_to(c_noise.reshape(-1, 1) if c_noise.ndim else c_noise, (x.shape[0], 1))
        h = jnp.concatenate([x, column], axis=-1)
        h = nn.silu(nn.Dense(self.hidden, name="dense_0")(h))
        h = nn.silu(nn.Dense(self.hidden, name="dense_1")(h))
        return nn.Dense(self.dim, name="dense_2")(h)


class ConvNet(nn.Module):
    """F(x, c_noise) on NHWC images: three 3x3 convs, c_noise added as a channel bias."""

    channels: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        emb = nn.Dense(self.channels, name="embed")(jnp.reshape(c_noise, (1,)).astype(x.dtype))
        h = nn.silu(nn.Conv(self.channels, (3, 3), name="conv_0")(x) + emb)
        h = nn.silu(nn.Conv(self.channels, (3, 3), name="conv_1")(h))
        return nn.Conv(x.shape[-1], (3, 3), name="conv_2")(h)


def edm_coefficients(sigma: Any, xp: Any) -> tuple[Any, Any, Any, Any]:
    """(c_skip, c_out, c_in, c_noise) of EDM preconditioning for the PyTorch twin (JAX code uses
    ``kj.precondition``; bench_torch checks that the two networks agree)."""
    sd2 = SIGMA_DATA**2
    total = sigma**2 + sd2
    return sd2 / total, sigma * SIGMA_DATA / xp.sqrt(total), 1.0 / xp.sqrt(total), xp.log(sigma) / 4.0


def make_denoiser(module: nn.Module, conditional: bool = False) -> ApplyFn:
    """``apply_fn(params, x, sigma, cond) -> D(x; sigma)`` for :func:`karras_jax.make_sampler`
    (``cond`` goes to the network as its labels when ``conditional``)."""
    if conditional:
        return kj.precondition(lambda p, x_in, c_noise, cond: module.apply(p, x_in, c_noise, cond), "edm",
                               sigma_data=SIGMA_DATA)
    return kj.precondition(lambda p, x_in, c_noise, cond: module.apply(p, x_in, c_noise), "edm",
                           sigma_data=SIGMA_DATA)


def init_model(name: str, conv_channels: int = 32, seed: int = 0) -> tuple[ApplyFn, Any, tuple[int, ...]]:
    """Returns ``(apply_fn, params, sample_shape)`` for ``"mlp"``, ``"conv"`` or ``"unet"``."""
    if name == "unet":
        unet = kj.UNet(**UNET)
        labels = jnp.zeros((1,), jnp.int32)
        params = jax.jit(unet.init)(jax.random.key(seed), jnp.zeros((1, *UNET_SHAPE)), jnp.zeros(()), labels)
        return make_denoiser(unet, conditional=True), params, UNET_SHAPE
    if name == "mlp":
        module: nn.Module = MLP()
        shape: tuple[int, ...] = (MLP_DIM,)
    elif name == "conv":
        module = ConvNet(channels=conv_channels)
        shape = IMAGE_SHAPE
    else:
        raise ValueError(f"unknown model {name!r}; expected 'mlp', 'conv' or 'unet'.")
    params = module.init(jax.random.key(seed), jnp.zeros((1, *shape)), jnp.zeros(()))
    return make_denoiser(module), params, shape


def torch_mlp(params: Any, device: str = "cpu") -> Any:
    """A ``torch.nn.Module`` computing D(x; sigma) with the Flax MLP's exact weights.

    ``sigma`` may be a Python float, a 0-d tensor, or a (B,) tensor (one level per row,
    as k-diffusion passes it).
    """
    import torch

    class TorchMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                [
                    torch.nn.Linear(MLP_DIM + 1, MLP_HIDDEN),
                    torch.nn.Linear(MLP_HIDDEN, MLP_HIDDEN),
                    torch.nn.Linear(MLP_HIDDEN, MLP_DIM),
                ]
            )

        def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
            if sigma.ndim == 1:
                sigma = sigma[:, None]
            c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, torch)
            column = torch.broadcast_to(c_noise, (x.shape[0], 1))
            h = torch.cat([c_in * x, column], dim=-1)
            h = torch.nn.functional.silu(self.layers[0](h))
            h = torch.nn.functional.silu(self.layers[1](h))
            return c_skip * x + c_out * self.layers[2](h)

    model = TorchMLP()
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            dense = params["params"][f"dense_{i}"]
            layer.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"]).copy()))
    return model.to(device).eval()
