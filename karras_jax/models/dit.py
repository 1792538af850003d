r"""A small Flax DiT (diffusion transformer): the network F of a preconditioned denoiser.

``DiT()(x_in, c_noise, labels)`` maps NHWC images to NHWC images, called exactly as
:class:`karras_jax.UNet` is, and meant to be wrapped by :func:`karras_jax.precondition`:

.. math::

    D(x; \sigma) = c_{skip}\, x + c_{out}\, F(c_{in}\, x,\; c_{noise},\; \text{labels})

Architecture (Peebles & Xie, 2023, scaled down): the image is cut into
:math:`p \times p` patches, each flattened and projected to ``width`` features, plus a
fixed 2-D sine-cosine position embedding; ``depth`` transformer blocks; a final layer
projecting each token back to a patch; the patches reassembled. The condition
:math:`c` is an embedding of ``c_noise`` (sinusoidal features at frequencies
:math:`f_k = (1/P)^{k/h}`, then a two-layer MLP), plus a learned class embedding with
``num_classes > 0`` (the label ``num_classes`` is the *null* class, the ``null_cond`` of
:func:`karras_jax.classifier_free_guidance`). It enters every block by adaLN-Zero:

.. math::

    (\beta_1, \gamma_1, \alpha_1, \beta_2, \gamma_2, \alpha_2) &= W\, \mathrm{SiLU}(c) + b \\
    h &\leftarrow h + \alpha_1\, \mathrm{Attn}\big(\mathrm{LN}(h)\,(1 + \gamma_1) + \beta_1\big) \\
    h &\leftarrow h + \alpha_2\, \mathrm{MLP}\big(\mathrm{LN}(h)\,(1 + \gamma_2) + \beta_2\big)

with :math:`W, b` initialised to zero (every block starts as the identity), and the final
layer is :math:`\mathrm{LN}(h)(1 + \gamma) + \beta` followed by a zero-initialised linear
map, so F = 0 at initialisation and D starts as :math:`c_{skip}\, x`.

Tensor parallelism: every kernel carries logical axis names
(``flax.linen.with_logical_partitioning``), so placing the weights on a mesh is enough
for ``jax.jit`` to run the network sharded, with no change to the code. The names:

- ``"embed"``: the residual stream (``width``), replicated;
- ``"heads"``: attention heads (qkv kernels column-split, output kernel row-split);
- ``"kv"``: features within a head;
- ``"mlp"``: MLP hidden features (first kernel column-split, second row-split; also the
  hidden layer of the noise embedding's MLP);
- ``"adaln"``: the 6 (blocks) or 2 (final layer) modulations of adaLN, column-split;
- ``"patch"``: the :math:`p^2 C` values of one patch; ``"classes"``: the class table rows.

:data:`DIT_AXIS_RULES` maps them to a mesh axis ``"model"`` (``"heads"``, ``"mlp"``,
``"adaln"``) or to none (the rest, replicated); :func:`dit_shardings` turns a DiT's
variables into ``NamedSharding`` for a mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from karras_jax._validation import check_count
from karras_jax.models._batch import image_inputs, sinusoidal_embedding

__all__ = ["DIT_AXIS_RULES", "DiT", "dit_shardings"]

#: Logical axis name -> mesh axis: the tensor-parallel layout on a mesh with a ``"model"``
#: axis (any other mesh axes, e.g. ``"data"``, hold replicas of the weights).
DIT_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", None),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("adaln", "model"),
    ("patch", None),
    ("classes", None),
)

Initializer = Callable[..., jax.Array]


def _named(init: Initializer, *names: str | None) -> Initializer:
    return nn.with_logical_partitioning(init, names)


_DENSE = nn.initializers.xavier_uniform()
_ZEROS = nn.initializers.zeros_init()


def _dense(features: int, names: tuple[str | None, str | None], *, zero: bool = False,
           dtype: DTypeLike = jnp.float32, name: str | None = None) -> nn.Dense:
    """A dense layer whose (in, out) kernel and (out,) bias carry the logical ``names``."""
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=_named(_ZEROS if zero else _DENSE, *names),
                    bias_init=_named(_ZEROS, names[1]))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _layer_norm(dtype: DTypeLike, name: str) -> nn.LayerNorm:
    """LayerNorm without its own scale and bias (adaLN supplies them)."""
    return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype, name=name)


def _position_embedding(rows: int, cols: int, width: int) -> np.ndarray:
    """``(rows * cols, width)`` fixed 2-D sine-cosine embedding: half the features per axis."""
    quarter = width // 4
    omega = 1.0 / 10_000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def axis(positions: np.ndarray) -> np.ndarray:
        angles = positions[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)

    r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    return np.concatenate([axis(r.reshape(-1)), axis(c.reshape(-1))], axis=-1).astype(np.float32)


class _Block(nn.Module):
    """adaLN-Zero transformer block: attention and MLP, each modulated and gated by the condition."""

    width: int
    num_heads: int
    mlp_ratio: int
    dtype: DTypeLike

    @nn.compact
    def __call__(self, h: jax.Array, cond: jax.Array) -> jax.Array:
        mods = _dense(6 * self.width, ("embed", "adaln"), zero=True, dtype=self.dtype, name="adaln")(cond)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mods, 6, axis=-1)
        head_dim = self.width // self.num_heads

        x = _modulate(_layer_norm(self.dtype, "norm_0")(h), shift_a, scale_a)
        qkv = nn.DenseGeneral(
            (3, self.num_heads, head_dim), dtype=self.dtype, name="qkv",
            kernel_init=_named(_DENSE, "embed", None, "heads", "kv"),
            bias_init=_named(_ZEROS, None, "heads", "kv"))(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, heads, head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(head_dim)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype, name="attn_out",
            kernel_init=_named(_DENSE, "heads", "kv", "embed"),
            bias_init=_named(_ZEROS, "embed"))(attended)
        h = h + gate_a[:, None, :] * out

        x = _modulate(_layer_norm(self.dtype, "norm_1")(h), shift_m, scale_m)
        x = nn.gelu(_dense(self.mlp_ratio * self.width, ("embed", "mlp"), dtype=self.dtype, name="mlp_0")(x))
        x = _dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="mlp_1")(x)
        return h + gate_m[:, None, :] * x


class DiT(nn.Module):
    r"""F(x_in, c_noise, labels) on NHWC images: a diffusion transformer with adaLN-Zero.

    The fields are checked when the module is built (``ValueError`` naming the field); the
    image size against ``patch_size`` on the first call.

    Attributes:
      patch_size: p, the side of the square patches (tokens); must divide H and W.
      width: features per token; a multiple of ``num_heads`` and of 4 (the 2-D position
        embedding spends a quarter on each of sin and cos per axis).
      depth: number of transformer blocks.
      num_heads: attention heads (the unit split over the ``"heads"`` axis).
      mlp_ratio: MLP hidden features as a multiple of ``width``.
      num_classes: number of classes for class conditioning; 0 for an unconditional model.
        Labels run from 0 to ``num_classes``, the last being the null class.
      max_positions: P of the sinusoidal embedding of ``c_noise``.
      out_channels: output channels; None for the input's.
      dtype: computation dtype (parameters stay float32; attention logits and softmax in
        float32).
    """

    patch_size: int = 2
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    num_classes: int = 0
    max_positions: float = 10_000.0
    out_channels: int | None = None
    dtype: DTypeLike = jnp.float32

    def __post_init__(self) -> None:
        for name in ("patch_size", "width", "depth", "num_heads", "mlp_ratio"):
            check_count(name, getattr(self, name))
        check_count("num_classes", self.num_classes, minimum=0)
        if self.out_channels is not None:
            check_count("out_channels", self.out_channels)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads must divide width: width={self.width} is not divisible by "
                             f"num_heads={self.num_heads}.")
        if self.width % 4:
            raise ValueError(f"width must be a multiple of 4 (the 2-D sine-cosine position embedding), "
                             f"got {self.width}.")
        if not (isinstance(self.max_positions, (int, float)) and 1 < self.max_positions < float("inf")):
            raise ValueError(f"max_positions must be a finite number > 1, got {self.max_positions!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: ArrayLike, c_noise: ArrayLike, labels: ArrayLike | None = None) -> jax.Array:
        r"""Applies the network.

        Args:
          x: ``(B, H, W, C)`` scaled input :math:`c_{in} x`, H and W multiples of ``patch_size``.
          c_noise: the noise-level conditioning, a scalar or ``(B,)``.
          labels: ``(B,)`` integer classes in ``[0, num_classes]`` (``num_classes`` = no
            class), a scalar for all samples, or None (no class). Only with ``num_classes > 0``.

        Returns:
          ``(B, H, W, out_channels)`` in ``dtype``.

        Raises:
          ValueError: x not ``(B, H, W, C)`` or H, W not multiples of ``patch_size``,
            ``c_noise`` neither a scalar nor ``(B,)``, labels of another shape or (where
            concrete) outside ``[0, num_classes]``, labels for an unconditional DiT.
          TypeError: labels that are not integers.
        """
        x, c_noise, labels = image_inputs(x, c_noise, labels, self.num_classes, self.dtype, "DiT")
        batch, height, width, channels = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"patch_size must divide x's height and width: patch_size={p}, got "
                             f"{(height, width)}.")
        cond = self._embed_noise(c_noise)
        if labels is not None:
            table = nn.Embed(self.num_classes + 1, self.width, name="class_emb",
                             embedding_init=_named(nn.initializers.normal(0.02), "classes", "embed"))
            cond = cond + table(labels)
        cond = nn.silu(cond).astype(self.dtype)

        rows, cols = height // p, width // p
        tokens = x.reshape(batch, rows, p, cols, p, channels).transpose(0, 1, 3, 2, 4, 5)
        tokens = tokens.reshape(batch, rows * cols, p * p * channels)
        h = _dense(self.width, ("patch", "embed"), dtype=self.dtype, name="patch_embed")(tokens)
        h = h + jnp.asarray(_position_embedding(rows, cols, self.width), self.dtype)
        for i in range(self.depth):
            h = _Block(self.width, self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(h, cond)

        shift, scale = jnp.split(
            _dense(2 * self.width, ("embed", "adaln"), zero=True, dtype=self.dtype, name="final_adaln")(cond),
            2, axis=-1)
        h = _modulate(_layer_norm(self.dtype, "final_norm")(h), shift, scale)
        out = self.out_channels or channels
        h = _dense(p * p * out, ("embed", "patch"), zero=True, dtype=self.dtype, name="final")(h)
        h = h.reshape(batch, rows, cols, p, p, out).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(batch, height, width, out)

    def _embed_noise(self, c_noise: jax.Array) -> jax.Array:
        emb = sinusoidal_embedding(c_noise, self.width, self.max_positions)
        emb = nn.silu(_dense(self.width, ("embed", "mlp"), name="noise_emb_0")(emb))
        return _dense(self.width, ("mlp", "embed"), name="noise_emb_1")(emb)


def dit_shardings(variables: Any, mesh: Mesh,
                  rules: tuple[tuple[str, str | None], ...] = DIT_AXIS_RULES) -> Any:
    """``NamedSharding`` for each of a DiT's weights on ``mesh``, by the logical axis ``rules``.

    ``variables`` is what ``DiT(...).init`` returns (or its ``jax.eval_shape``): its
    kernels are ``flax.linen.LogicallyPartitioned`` boxes. The result has the structure of
    ``flax.linen.unbox(variables)``, ready for ``jax.device_put(nn.unbox(variables), ...)``
    or a ``jax.jit(..., out_shardings=...)``. It is the usual flax recipe::

        specs = nn.get_partition_spec(variables)
        shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)

    Every mesh axis the rules name (``"model"`` for :data:`DIT_AXIS_RULES`) must be in
    ``mesh``. ``kj.make_sharded_sampler`` and ``kj.make_train_step(mesh=...)`` run on any
    axis types; a ``jax.jit`` of your own needs ``AxisType.Auto`` axes (the network gives its
    matmuls no output sharding, which explicit axes would ask for). A weight whose split
    dimension does not divide by the axis size is refused by ``jax.device_put`` (choose
    ``num_heads``, ``mlp_ratio * width`` and ``6 * width`` divisible by it).

    Raises:
      ValueError: a rule names a mesh axis that ``mesh`` lacks.
    """
    missing = sorted({axis for _, axis in rules if axis is not None} - set(mesh.axis_names))
    if missing:
        raise ValueError(f"rules name mesh axes {missing} that the mesh (axes {tuple(mesh.axis_names)}) "
                         "lacks; pass rules for your mesh.")
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
