r"""The Inception-v3 network of FID, as pure functions over a pytree of its weights.

FID (Heusel et al. 2017) compares the statistics of 2048-d features that one particular
network gives: Inception-v3 as TensorFlow published it on 2015-12-05. pytorch-fid ported
that graph to PyTorch (``pytorch_fid.inception.fid_inception_v3``: torchvision's
``Inception3`` with 1008 classes, no auxiliary head, and four kinds of block patched to
match TensorFlow) and publishes its weights as ``pt_inception-2015-12-05-6726825d.pth``;
EDM evaluates with the same network. This module is that network in JAX:

- :func:`inception_params_from_torch` turns such a state dict (torchvision's names, or
  pytorch-fid's ``InceptionV3`` module's ``blocks.N.`` names) into a params pytree;
- :func:`inception_features` maps NHWC images on the 0..255 scale to the features, the
  output of the final average pool (blocks up to ``Mixed_7c``), preprocessed exactly as
  pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)`` does: pixels
  divided by 255, a bilinear resize to 299x299 (PyTorch's ``align_corners=False``, no
  antialiasing), then :math:`2x - 1`.

The layers are torchvision's ``BasicConv2d`` (a bias-free convolution, BatchNorm with the
running statistics, :math:`\epsilon = 10^{-3}`, ReLU) wired as in ``Inception3``, with
pytorch-fid's patches: the pool branch of blocks A, C and the first E averages over the
in-image pixels only (``count_include_pad=False``) and the second E takes a 3x3 max.
Convolutions run at ``Precision.HIGHEST``, so accelerators do not trade the float32
features for TF32 or bfloat16 arithmetic. No weights ship with this module and nothing is
downloaded; see ``docs/inception.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = ["INCEPTION_DIM", "INCEPTION_SIZE", "inception_features", "inception_params_from_torch"]

#: Width of the pool features :func:`inception_features` returns.
INCEPTION_DIM = 2048
#: Height and width every image is resized to.
INCEPTION_SIZE = 299

_BN_EPS = 1e-3
_HIGHEST = lax.Precision.HIGHEST


class _Conv(NamedTuple):
    """One ``BasicConv2d``: a ``(kh, kw, cin, cout)`` kernel, its stride and whether it is padded.

    A padded convolution pads ``kh // 2`` rows and ``kw // 2`` columns on each side (keeps the
    size at stride 1); an unpadded one is "VALID".
    """

    cin: int
    cout: int
    kh: int
    kw: int
    stride: int = 1
    padded: bool = False


def _block_a(cin: int, pool: int) -> dict[str, _Conv]:
    return {"branch1x1": _Conv(cin, 64, 1, 1),
            "branch5x5_1": _Conv(cin, 48, 1, 1), "branch5x5_2": _Conv(48, 64, 5, 5, padded=True),
            "branch3x3dbl_1": _Conv(cin, 64, 1, 1), "branch3x3dbl_2": _Conv(64, 96, 3, 3, padded=True),
            "branch3x3dbl_3": _Conv(96, 96, 3, 3, padded=True),
            "branch_pool": _Conv(cin, pool, 1, 1)}


def _block_b(cin: int) -> dict[str, _Conv]:
    return {"branch3x3": _Conv(cin, 384, 3, 3, stride=2),
            "branch3x3dbl_1": _Conv(cin, 64, 1, 1), "branch3x3dbl_2": _Conv(64, 96, 3, 3, padded=True),
            "branch3x3dbl_3": _Conv(96, 96, 3, 3, stride=2)}


def _block_c(cin: int, c7: int) -> dict[str, _Conv]:
    row = functools.partial(_Conv, kh=1, kw=7, padded=True)  # 1x7
    col = functools.partial(_Conv, kh=7, kw=1, padded=True)  # 7x1
    return {"branch1x1": _Conv(cin, 192, 1, 1),
            "branch7x7_1": _Conv(cin, c7, 1, 1), "branch7x7_2": row(c7, c7), "branch7x7_3": col(c7, 192),
            "branch7x7dbl_1": _Conv(cin, c7, 1, 1), "branch7x7dbl_2": col(c7, c7),
            "branch7x7dbl_3": row(c7, c7), "branch7x7dbl_4": col(c7, c7), "branch7x7dbl_5": row(c7, 192),
            "branch_pool": _Conv(cin, 192, 1, 1)}


def _block_d(cin: int) -> dict[str, _Conv]:
    return {"branch3x3_1": _Conv(cin, 192, 1, 1), "branch3x3_2": _Conv(192, 320, 3, 3, stride=2),
            "branch7x7x3_1": _Conv(cin, 192, 1, 1), "branch7x7x3_2": _Conv(192, 192, 1, 7, padded=True),
            "branch7x7x3_3": _Conv(192, 192, 7, 1, padded=True),
            "branch7x7x3_4": _Conv(192, 192, 3, 3, stride=2)}


def _block_e(cin: int) -> dict[str, _Conv]:
    return {"branch1x1": _Conv(cin, 320, 1, 1),
            "branch3x3_1": _Conv(cin, 384, 1, 1), "branch3x3_2a": _Conv(384, 384, 1, 3, padded=True),
            "branch3x3_2b": _Conv(384, 384, 3, 1, padded=True),
            "branch3x3dbl_1": _Conv(cin, 448, 1, 1), "branch3x3dbl_2": _Conv(448, 384, 3, 3, padded=True),
            "branch3x3dbl_3a": _Conv(384, 384, 1, 3, padded=True),
            "branch3x3dbl_3b": _Conv(384, 384, 3, 1, padded=True),
            "branch_pool": _Conv(cin, 192, 1, 1)}


# The stem's convolutions, in order (a 3x3 stride-2 max pool follows Conv2d_2b and Conv2d_4a).
_STEM = {"Conv2d_1a_3x3": _Conv(3, 32, 3, 3, stride=2), "Conv2d_2a_3x3": _Conv(32, 32, 3, 3),
         "Conv2d_2b_3x3": _Conv(32, 64, 3, 3, padded=True), "Conv2d_3b_1x1": _Conv(64, 80, 1, 1),
         "Conv2d_4a_3x3": _Conv(80, 192, 3, 3)}
# The mixed blocks, in order: name -> (kind, its convolutions). "E1" / "E2" are pytorch-fid's
# FIDInceptionE_1 (average pool without the padding) and FIDInceptionE_2 (max pool).
_BLOCKS = {"Mixed_5b": ("A", _block_a(192, 32)), "Mixed_5c": ("A", _block_a(256, 64)),
           "Mixed_5d": ("A", _block_a(288, 64)), "Mixed_6a": ("B", _block_b(288)),
           "Mixed_6b": ("C", _block_c(768, 128)), "Mixed_6c": ("C", _block_c(768, 160)),
           "Mixed_6d": ("C", _block_c(768, 160)), "Mixed_6e": ("C", _block_c(768, 192)),
           "Mixed_7a": ("D", _block_d(768)), "Mixed_7b": ("E1", _block_e(1280)),
           "Mixed_7c": ("E2", _block_e(2048))}
# Every convolution by its dotted torchvision path ("Mixed_5b.branch1x1").
_CONVS = {**_STEM, **{f"{block}.{name}": conv for block, (_, convs) in _BLOCKS.items()
                      for name, conv in convs.items()}}
# pytorch-fid's InceptionV3 holds these layers as blocks.<i>.<j>: torchvision's name -> that prefix
# (block 0 ends with a max pool, block 1 with a max pool, block 3 with the average pool).
_FID_MODULE_PREFIXES = {name: f"blocks.{i}.{j}" for i, names in enumerate((
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"), ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    tuple(_BLOCKS)[:8], tuple(_BLOCKS)[8:])) for j, name in enumerate(names)}
# A BasicConv2d's tensors: torch's suffix -> our leaf name.
_LEAVES = {"conv.weight": "kernel", "bn.weight": "scale", "bn.bias": "bias", "bn.running_mean": "mean",
           "bn.running_var": "var"}
# Tensors a state dict may hold that the features do not use (besides BatchNorm's
# num_batches_tracked counters): the 1008-way classifier.
_UNUSED = ("fc.weight", "fc.bias")


def _shape(conv: _Conv, leaf: str, *, torch: bool) -> tuple[int, ...]:
    """A leaf's shape: the kernel OIHW in PyTorch (``torch=True``) or HWIO here; the rest ``(cout,)``."""
    if leaf != "kernel":
        return (conv.cout,)
    return (conv.cout, conv.cin, conv.kh, conv.kw) if torch else (conv.kh, conv.kw, conv.cin, conv.cout)


def _as_numpy(name: str, value: Any) -> np.ndarray:
    """``value`` (a torch tensor, NumPy or JAX array, nested list) as a float32 NumPy array, torch-free."""
    for method in ("detach", "cpu", "numpy"):  # a torch tensor: off the graph, to host, to NumPy
        if callable(getattr(value, method, None)) and not isinstance(value, (np.ndarray, np.generic)):
            value = getattr(value, method)()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"state_dict[{name!r}] is not an array: {type(value).__name__}.") from err
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"state_dict[{name!r}] must hold real numbers, got dtype {array.dtype}.")
    return array.astype(np.float32)


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def inception_params_from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    r"""The FID Inception network's weights as the params pytree :func:`inception_features` takes.

    Accepts the published pytorch-fid weights as ``torch.load`` returns them
    (``pt_inception-2015-12-05-6726825d.pth``, torchvision's ``Inception3`` names:
    ``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_var``, ...), or the
    ``state_dict()`` of pytorch-fid's ``InceptionV3`` module with the 2048-d block
    (``blocks.0.0.conv.weight``, ...). Values may be torch tensors (read through their
    ``.detach().cpu().numpy()``; torch is never imported here), NumPy or JAX arrays.

    Nothing is folded: each ``BasicConv2d`` becomes ``{"kernel": (kh, kw, cin, cout),
    "scale", "bias", "mean", "var": (cout,)}`` (PyTorch's OIHW kernel transposed to HWIO;
    BatchNorm's weight, bias, running mean and running variance), all float32, nested
    as ``params["Mixed_5b"]["branch1x1"]`` (the stem's as ``params["Conv2d_1a_3x3"]``).
    The 1008-way classifier (``fc.weight``, ``fc.bias``) and BatchNorm's
    ``num_batches_tracked`` counters are not needed for the pool features and are ignored.

    Args:
      state_dict: name -> tensor.

    Returns:
      The params pytree (dicts of float32 ``jax.Array``).

    Raises:
      TypeError: ``state_dict`` not a mapping, or a value that is not a real-valued array.
      ValueError: missing or unexpected names, or tensors of the wrong shape (the message
        lists them).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}.")
    names = {str(key): key for key in state_dict}
    fid_module = any(name.startswith("blocks.") for name in names)
    wanted: dict[str, tuple[str, str]] = {}  # torch name -> (conv path, leaf)
    for path in _CONVS:
        head, dot, rest = path.partition(".")
        module = f"{_FID_MODULE_PREFIXES[head]}{dot}{rest}" if fid_module else path
        for suffix, leaf in _LEAVES.items():
            wanted[f"{module}.{suffix}"] = (path, leaf)
    ignored = {name for name in names if name in _UNUSED or name.endswith("bn.num_batches_tracked")}
    missing = [name for name in wanted if name not in names]
    unexpected = [name for name in names if name not in wanted and name not in ignored]
    if missing or unexpected:
        problems = ([f"missing {len(missing)}: {_listed(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)}: {_listed(unexpected)}"] if unexpected else [])
        flavour = "pytorch-fid InceptionV3 module" if fid_module else "torchvision Inception3"
        raise ValueError(f"state_dict does not hold the FID Inception weights ({flavour} names): "
                         f"{'; '.join(problems)}.")
    params: dict[str, Any] = {}
    wrong = []
    for name, (path, leaf) in wanted.items():
        array = _as_numpy(name, state_dict[names[name]])
        shape = _shape(_CONVS[path], leaf, torch=True)
        if array.shape != shape:
            wrong.append(f"{name} {tuple(array.shape)} (expected {shape})")
            continue
        if leaf == "kernel":
            array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        node = params
        for part in path.split("."):
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(array)
    if wrong:
        raise ValueError(f"state_dict has tensors of the wrong shape: {_listed(wrong)}.")
    return params


def _check_params(params: Any) -> None:
    """Raises ValueError unless ``params`` has every layer, each leaf of the expected shape."""
    wrong = []
    for path, conv in _CONVS.items():
        node = params
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        for leaf in _LEAVES.values():
            shape = _shape(conv, leaf, torch=False)
            got = getattr(node.get(leaf), "shape", None) if isinstance(node, Mapping) else None
            if got is None or tuple(got) != shape:
                wrong.append(f"{path}.{leaf} {'missing' if got is None else tuple(got)} (expected {shape})")
    if wrong:
        raise ValueError("params is not an FID Inception pytree (build it with "
                         f"inception_params_from_torch): {_listed(wrong)}.")


def _basic_conv(p: Mapping[str, jax.Array], conv: _Conv, x: jax.Array) -> jax.Array:
    """The BasicConv2d of torchvision in inference mode: conv, BatchNorm (running statistics), ReLU."""
    pad = ((conv.kh // 2,) * 2, (conv.kw // 2,) * 2) if conv.padded else ((0, 0), (0, 0))
    y = lax.conv_general_dilated(x, p["kernel"], (conv.stride, conv.stride), pad,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
    alpha = p["scale"] * lax.rsqrt(p["var"] + _BN_EPS)
    return jax.nn.relu(y * alpha + (p["bias"] - p["mean"] * alpha))


def _max_pool(x: jax.Array, stride: int, pad: int) -> jax.Array:
    """3x3 max pool; padding (if any) never wins, as PyTorch's."""
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), padding)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool padded by 1, over the pixels inside the image only.

    PyTorch's ``count_include_pad=False``; TensorFlow's SAME average pool.
    """
    padding = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), padding)
    ones = np.ones((1, x.shape[1], x.shape[2], 1), np.float32)
    count = lax.reduce_window(jnp.asarray(ones), 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), padding)
    return total / count


def _mixed(kind: str, p: Mapping[str, Any], convs: dict[str, _Conv], x: jax.Array) -> jax.Array:
    """One mixed block: its branches, concatenated along channels in torchvision's order."""
    def chain(*names: str, h: jax.Array = x) -> jax.Array:
        for name in names:
            h = _basic_conv(p[name], convs[name], h)
        return h

    if kind == "A":
        branches = [chain("branch1x1"), chain("branch5x5_1", "branch5x5_2"),
                    chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                    chain("branch_pool", h=_avg_pool_same(x))]
    elif kind == "B":
        branches = [chain("branch3x3"), chain("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                    _max_pool(x, stride=2, pad=0)]
    elif kind == "C":
        branches = [chain("branch1x1"), chain("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                    chain(*(f"branch7x7dbl_{i}" for i in range(1, 6))),
                    chain("branch_pool", h=_avg_pool_same(x))]
    elif kind == "D":
        branches = [chain("branch3x3_1", "branch3x3_2"),
                    chain(*(f"branch7x7x3_{i}" for i in range(1, 5))), _max_pool(x, stride=2, pad=0)]
    else:  # E1, E2
        h = chain("branch3x3_1")
        d = chain("branch3x3dbl_1", "branch3x3dbl_2")
        pooled = _avg_pool_same(x) if kind == "E1" else _max_pool(x, stride=1, pad=1)
        branches = [chain("branch1x1"), chain("branch3x3_2a", h=h), chain("branch3x3_2b", h=h),
                    chain("branch3x3dbl_3a", h=d), chain("branch3x3dbl_3b", h=d),
                    chain("branch_pool", h=pooled)]
    return jnp.concatenate(branches, axis=-1)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""PyTorch's ``align_corners=False`` bilinear taps along one axis: ``(i0, i1, w0, w1)``.

    Output pixel ``d`` reads the input at :math:`s = (d + 1/2)\,\text{in}/\text{out} - 1/2`
    (clamped at 0), from pixels ``floor(s)`` and the next (the last pixel repeats) with
    weights ``1 - frac`` and ``frac``. As in PyTorch's CPU kernel, the scale is the float32
    ``in / out`` and ``s`` one float32 fused multiply-add (exact product, one rounding), so the
    taps and weights are PyTorch's to the bit.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    exact = scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5  # exact in float64
    src = np.maximum(exact.astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def _resize_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Linear interpolation of axis ``axis`` to ``size`` (no antialiasing; unchanged if equal)."""
    if x.shape[axis] == size:
        return x
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], size)
    shape = [1] * x.ndim
    shape[axis] = size
    return (jnp.take(x, i0, axis=axis) * w0.reshape(shape) + jnp.take(x, i1, axis=axis) * w1.reshape(shape))


@jax.jit
def _features(params: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """(B, H, W, 3) images on 0..255 -> (B, 2048) pool features."""
    x = images.astype(jnp.float32) / 255.0
    # pytorch-fid: F.interpolate(size=(299, 299), mode="bilinear", align_corners=False), then 2x - 1;
    # its CPU kernel interpolates along W and then along H.
    x = _resize_axis(_resize_axis(x, 2, INCEPTION_SIZE), 1, INCEPTION_SIZE)
    x = 2.0 * x - 1.0
    for i, (name, conv) in enumerate(_STEM.items()):
        x = _basic_conv(params[name], conv, x)
        if i in (2, 4):  # after Conv2d_2b_3x3 and Conv2d_4a_3x3
            x = _max_pool(x, stride=2, pad=0)
    for name, (kind, convs) in _BLOCKS.items():
        x = _mixed(kind, params[name], convs, x)
    return jnp.mean(x, axis=(1, 2))


def inception_features(params: Mapping[str, Any], images: ArrayLike) -> jax.Array:
    r"""FID's 2048-d Inception pool features of a batch of images.

    The computation of pytorch-fid's ``InceptionV3([3])`` (its defaults: ``resize_input``,
    ``normalize_input``) on ``images / 255`` in NCHW: a bilinear resize to 299x299 (PyTorch's
    ``align_corners=False``, no antialiasing; unchanged at 299x299), :math:`2x - 1`, the
    network up to ``Mixed_7c`` and the global average pool. The network is jit-compiled
    (once per input shape and dtype); this wrapper only checks shapes and dtypes, so it may
    also be called inside ``jax.jit``, ``vmap`` or ``shard_map``. The whole batch goes through
    at once: feed a large image set in chunks of a fixed size (one compilation).

    Args:
      params: the pytree from :func:`inception_params_from_torch`.
      images: ``(B, H, W, 3)`` RGB images, NHWC (as JAX holds images), on the 0..255 scale:
        uint8 or any integer or float dtype (floats are not clipped or rounded). Any H and W.

    Returns:
      ``(B, 2048)`` float32 features.

    Raises:
      TypeError: ``images`` not real numbers (bools, complex, strings).
      ValueError: ``images`` not ``(B, H, W, 3)`` (grayscale or RGBA must be converted first),
        or ``params`` missing a layer or holding one of the wrong shape.

    Example:
      With the published weights (``docs/inception.md``; nothing is downloaded)::

        state_dict = torch.load("pt_inception-2015-12-05-6726825d.pth")
        params = kj.inception_params_from_torch(state_dict)
        feats = kj.inception_features(params, images)  # (B, H, W, 3) uint8 -> (B, 2048)
    """
    _check_params(params)
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        try:
            images = np.asarray(images)
        except (TypeError, ValueError) as err:
            raise TypeError(f"images must be an array of real numbers, got {type(images).__name__}.") from err
        dtype = images.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)) or dtype == jnp.bool_:
        raise TypeError(f"images must hold real numbers on the 0..255 scale (uint8 or float), got dtype "
                        f"{dtype}.")
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) RGB images, NHWC, got shape {shape}; convert "
                         "grayscale or RGBA images to RGB first.")
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"images must have a positive height and width, got shape {shape}.")
    return _features(params, images)
