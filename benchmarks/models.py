"""The denoisers: an MLP (d=64, hidden 256) and a small conv net on 32x32x3, in Flax linen,
the package's class-conditional ``kj.UNet`` on 8x8x1 (the digits example's size), plus
PyTorch twins of the MLP and of that UNet that take the Flax networks' weights.

Every network is wrapped in EDM preconditioning by ``kj.precondition`` (Karras et al. 2022,
Table 1), so ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with sigma_data = 0.5.
The weights are random (initialised, not trained): speed does not depend on them.
"""

from __future__ import annotations

import re
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


def torch_unet(params: Any, device: str = "cpu") -> Any:
    """A ``torch.nn.Module`` computing D(x; sigma) with the exact weights of ``kj.UNet(**UNET)``.

    The layers of :class:`karras_jax.UNet` (``karras_jax/models/unet.py``) one for one, for
    its configuration here (two resolutions, one residual block each, no attention), called
    as k-diffusion calls a denoiser: ``model(x, sigma)`` with x ``(B, 8, 8, 1)`` in JAX's
    NHWC layout (permuted to NCHW inside) and sigma a float, a 0-d or a (B,) tensor; the
    class is the null class (the JAX side's ``cond=None``). Flax's "SAME" padding of the
    stride-2 convolution pads bottom and right only; GroupNorm's epsilon is Flax's 1e-6.
    ``.double()`` works.
    """
    import torch
    import torch.nn.functional as tf

    unet = kj.UNet(**UNET)
    mults, blocks, emb_dim = tuple(unet.channel_mult), unet.num_res_blocks, unet.emb_dim
    weights = params["params"]

    def tensor(a: Any, perm: tuple[int, ...] | None = None) -> torch.nn.Parameter:
        a = np.asarray(a, np.float32)
        return torch.nn.Parameter(torch.from_numpy((a.transpose(perm) if perm else a).copy()))

    def conv(p: Any) -> torch.nn.ParameterDict:  # Flax (kh, kw, in, out) -> torch (out, in, kh, kw)
        return torch.nn.ParameterDict({"weight": tensor(p["kernel"], (3, 2, 0, 1)),
                                       "bias": tensor(p["bias"])})

    def dense(p: Any) -> torch.nn.ParameterDict:
        return torch.nn.ParameterDict({"weight": tensor(p["kernel"], (1, 0)), "bias": tensor(p["bias"])})

    def norm(p: Any) -> torch.nn.ParameterDict:
        return torch.nn.ParameterDict({"weight": tensor(p["scale"]), "bias": tensor(p["bias"])})

    def groups(channels: int) -> int:
        return next(g for g in (8, 4, 2, 1) if channels % g == 0)

    def group_norm(p: Any, h: torch.Tensor) -> torch.Tensor:
        return tf.group_norm(h, groups(h.shape[1]), p["weight"], p["bias"], eps=1e-6)

    def conv3(p: Any, h: torch.Tensor, stride: int = 1) -> torch.Tensor:
        if stride == 1:
            return tf.conv2d(h, p["weight"], p["bias"], padding=1)
        return tf.conv2d(tf.pad(h, (0, 1, 0, 1)), p["weight"], p["bias"], stride=2)  # Flax's SAME

    class ResBlock(torch.nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.norm_0, self.norm_1 = norm(p["GroupNorm_0"]), norm(p["GroupNorm_1"])
            self.conv_0, self.conv_1, self.emb = conv(p["conv_0"]), conv(p["conv_1"]), dense(p["emb"])
            self.skip = conv(p["skip"]) if "skip" in p else None

        def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            h = conv3(self.conv_0, tf.silu(group_norm(self.norm_0, x)))
            h = h + tf.linear(emb, self.emb["weight"], self.emb["bias"])[:, :, None, None]
            h = conv3(self.conv_1, tf.silu(group_norm(self.norm_1, h)))
            skip = x if self.skip is None else tf.conv2d(x, self.skip["weight"], self.skip["bias"])
            return (h + skip) * (1 / np.sqrt(2.0))

    class TorchUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb_0, self.emb_1 = dense(weights["emb_0"]), dense(weights["emb_1"])
            self.null_class = tensor(weights["class_emb"]["embedding"][unet.num_classes])
            self.conv_in, self.conv_out = conv(weights["conv_in"]), conv(weights["conv_out"])
            self.norm_out = norm(weights["GroupNorm_0"])
            names = [f"down_{level}_{i}" for level in range(len(mults)) for i in range(blocks)]
            names += ["middle"] + [f"up_{level}_{i}" for level in reversed(range(len(mults)))
                                   for i in range(blocks + 1)]
            self.blocks = torch.nn.ModuleDict({name: ResBlock(weights[name]) for name in names})
            self.resample = torch.nn.ModuleDict(
                {name: conv(weights[name]) for name in weights if re.fullmatch(r"(down|up)_\d+", name)})

        def embedding(self, c_noise: torch.Tensor) -> torch.Tensor:
            half = emb_dim // 2
            freqs = (1.0 / unet.max_positions) ** (torch.arange(half, dtype=c_noise.dtype,
                                                                 device=c_noise.device) / half)
            angles = c_noise[:, None] * freqs[None, :]
            emb = tf.linear(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1), self.emb_0["weight"],
                            self.emb_0["bias"]) + self.null_class
            return tf.silu(tf.linear(tf.silu(emb), self.emb_1["weight"], self.emb_1["bias"]))

        def network(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            emb = self.embedding(c_noise)
            h = conv3(self.conv_in, x)
            skips = [h]
            for level in range(len(mults)):
                for i in range(blocks):
                    h = self.blocks[f"down_{level}_{i}"](h, emb)
                    skips.append(h)
                if level < len(mults) - 1:
                    h = conv3(self.resample[f"down_{level}"], h, stride=2)
                    skips.append(h)
            h = self.blocks["middle"](h, emb)
            for level in reversed(range(len(mults))):
                for i in range(blocks + 1):
                    h = self.blocks[f"up_{level}_{i}"](torch.cat([h, skips.pop()], dim=1), emb)
                if level > 0:
                    h = conv3(self.resample[f"up_{level}"], tf.interpolate(h, scale_factor=2, mode="nearest"))
            return conv3(self.conv_out, tf.silu(group_norm(self.norm_out, h)))

        def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
            sigma = torch.broadcast_to(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.shape[:1])
            c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, torch)
            scale = (-1, 1, 1, 1)
            f = self.network((c_in.reshape(scale) * x).permute(0, 3, 1, 2), c_noise).permute(0, 2, 3, 1)
            return c_skip.reshape(scale) * x + c_out.reshape(scale) * f

    return TorchUNet().to(device).eval()
