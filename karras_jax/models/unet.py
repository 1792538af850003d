r"""A small Flax UNet for small images: the network F of a preconditioned denoiser.

``UNet()(x_in, c_noise, labels)`` maps NHWC images to NHWC images. It is meant to be
wrapped by :func:`karras_jax.precondition` (``kind="edm"`` for training from scratch):

.. math::

    D(x; \sigma) = c_{skip}\, x + c_{out}\, F(c_{in}\, x,\; c_{noise},\; \text{labels})

Architecture (a scaled-down DDPM++/ADM layout, no attention): a 3x3 input conv; per
resolution ``num_res_blocks`` residual blocks, then a stride-2 conv down; a middle block;
the mirror image on the way up, each block fed the matching down-path activation
(concatenated skip connection) and upsampled by nearest-neighbour + 3x3 conv; a
zero-initialised output conv (so F = 0 at initialisation and D starts as c_skip x).

The noise level enters every residual block through an embedding: sinusoidal features of
``c_noise`` at frequencies :math:`f_k = (1/P)^{k/h}` (EDM's positional embedding,
``max_positions`` = P), two dense layers, then a per-block affine shift of the features.
With ``num_classes > 0`` a learned class embedding is added to it; the label
``num_classes`` is the *null* class (no condition), the one to pass as ``null_cond`` to
:func:`karras_jax.classifier_free_guidance` and to train with label dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from karras_jax._validation import check_count
from karras_jax.models._batch import image_inputs, sinusoidal_embedding

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    """The largest of 8, 4, 2, 1 dividing ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added between, residual scaled by 1/sqrt(2)."""

    channels: int
    dtype: DTypeLike

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        conv = lambda name, **kw: nn.Conv(self.channels, (3, 3), dtype=self.dtype, name=name, **kw)  # noqa: E731
        h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
        h = conv("conv_0")(h)
        h = h + nn.Dense(self.channels, dtype=self.dtype, name="emb")(emb)[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.channels), dtype=self.dtype)(h))
        h = conv("conv_1", kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.channels else nn.Conv(
            self.channels, (1, 1), dtype=self.dtype, name="skip")(x)
        # keeps the activations' scale from growing with depth
        return (h + skip) * (1 / jnp.sqrt(2.0)).astype(h.dtype)


class UNet(nn.Module):
    r"""F(x_in, c_noise, labels) on NHWC images.

    Attributes:
      channels: feature channels at the input resolution.
      channel_mult: channels at each resolution, as multiples of ``channels``; one halving
        of height and width between consecutive entries (so H and W must be divisible by
        :math:`2^{len-1}`).
      num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
      num_classes: number of classes for class conditioning; 0 for an unconditional model.
        Labels run from 0 to ``num_classes``, the last being the null class.
      emb_dim: width of the noise-level (and class) embedding.
      max_positions: P of the sinusoidal embedding of ``c_noise``.
      out_channels: output channels; None for the input's.
      dtype: computation dtype (parameters stay float32).
    """

    channels: int = 32
    channel_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_classes: int = 0
    emb_dim: int = 128
    max_positions: float = 10_000.0
    out_channels: int | None = None
    dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: ArrayLike, c_noise: ArrayLike, labels: ArrayLike | None = None) -> jax.Array:
        r"""Applies the network.

        Args:
          x: ``(B, H, W, C)`` scaled input :math:`c_{in} x`.
          c_noise: the noise-level conditioning, a scalar or ``(B,)``.
          labels: ``(B,)`` integer classes in ``[0, num_classes]`` (``num_classes`` = no
            class), a scalar for all samples, or None (no class). Only with ``num_classes > 0``.

        Returns:
          ``(B, H, W, out_channels)`` in ``dtype``.

        Raises:
          ValueError: x not ``(B, H, W, C)`` or its size not divisible, ``c_noise`` neither a
            scalar nor ``(B,)``, labels of another shape or (where concrete) outside
            ``[0, num_classes]``, labels for an unconditional UNet, or ``num_classes`` or
            ``channels`` not an int >= 0 (>= 1).
          TypeError: labels that are not integers.
        """
        check_count("num_classes", self.num_classes, minimum=0)
        check_count("channels", self.channels)
        x, c_noise, labels = image_inputs(x, c_noise, labels, self.num_classes, self.dtype, "UNet")
        depth = len(self.channel_mult) - 1
        if x.shape[1] % 2**depth or x.shape[2] % 2**depth:
            raise ValueError(
                f"x's height and width must be divisible by 2**(len(channel_mult) - 1) = {2**depth}, "
                f"got {x.shape[1:3]}.")
        emb = self._embed_noise(c_noise)
        if labels is not None:
            emb = emb + nn.Embed(self.num_classes + 1, self.emb_dim, name="class_emb")(labels)
        emb = nn.silu(nn.Dense(self.emb_dim, name="emb_1")(nn.silu(emb))).astype(self.dtype)

        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = _ResBlock(self.channels * mult, self.dtype, name=f"down_{level}_{i}")(h, emb)
                skips.append(h)
            if level < depth:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name=f"down_{level}")(h)
                skips.append(h)
        h = _ResBlock(h.shape[-1], self.dtype, name="middle")(h, emb)
        for level in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = _ResBlock(self.channels * self.channel_mult[level], self.dtype,
                              name=f"up_{level}_{i}")(h, emb)
            if level > 0:
                b, height, width, c = h.shape
                h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
                h = nn.Conv(c, (3, 3), dtype=self.dtype, name=f"up_{level}")(h)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
        out = self.out_channels or x.shape[-1]
        return nn.Conv(out, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros, name="conv_out")(h)

    def _embed_noise(self, c_noise: jax.Array) -> jax.Array:
        return nn.Dense(self.emb_dim, name="emb_0")(sinusoidal_embedding(c_noise, self.emb_dim,
                                                                          self.max_positions))

