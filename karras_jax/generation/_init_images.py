"""The clean images of an image-to-image job (``generate(init=..., strength=...)``).

``init`` is given as the job writes its samples (after the model's ``postprocess``), so a
job's own output can be edited again: an ``.npz`` (its ``samples`` array, or its only array,
e.g. a shard) or ``.npy``, a folder of 8-bit PNG/JPEG images (file-name order, read with
Pillow and scaled from 0..255 to the model's ``image_range``) or an array. The model's
``preprocess`` takes them back to what the sampler holds (the identity for a model without a
``postprocess``).

Seed s starts from image ``s % M`` of the M given, so a job over seeds ``0..M-1`` edits each
image once and a longer range gives each image several edits; the result does not depend on
the batch, the shard or the process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from karras_jax.generation._writer import PNG_HINT
from karras_jax.generation.features import read_array
from karras_jax.generation.models import GenerateModel

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_EIGHT_BIT = ("1", "L", "LA", "P", "RGB", "RGBA")


def _read_images(folder: Path, model: GenerateModel) -> np.ndarray:
    if model.image_range is None:
        raise ValueError(f"init folder {folder}: this model has no image_range, so images cannot be "
                         "scaled to its values; pass an .npz of samples instead.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"init folder {folder} holds no {'/'.join(_IMAGE_SUFFIXES)} images.")
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(PNG_HINT) from err
    lo, hi = model.image_range
    pictures = []
    for path in files:
        with Image.open(path) as picture:
            if picture.mode not in _EIGHT_BIT:  # 16-bit and float pictures: convert() would clip them
                raise ValueError(f"init image {path} has mode {picture.mode!r}; give 8-bit images "
                                 f"({', '.join(_EIGHT_BIT)}), or an .npz of samples.")
            pixels = np.asarray(picture.convert("L" if picture.mode in ("1", "L", "LA") else "RGB"))
        pictures.append(lo + pixels.astype(np.float64) / 255.0 * (hi - lo))
    shapes = {p.shape for p in pictures}
    if len(shapes) > 1:
        raise ValueError(f"init folder {folder}: the images differ in size ({sorted(shapes)}).")
    return np.stack(pictures)


def init_images(init: Any, model: GenerateModel, written_shape: tuple[int, ...]) -> np.ndarray:
    """``init`` as (M, *sample_shape) float32 in the sampler's values (see the module doc).

    Raises:
      ValueError: ``init`` cannot be read, is empty, has another shape than the job's written
        samples, holds NaN or inf, or the model has a ``postprocess`` but no ``preprocess``.
      ImportError: a folder of images without Pillow.
    """
    if isinstance(init, (str, os.PathLike)):
        path = Path(init)
        if path.is_dir():
            values = _read_images(path, model)
        elif path.is_file():
            values = read_array(path, "init")
        else:
            raise ValueError(f"init {path} is neither a folder of images nor an .npz file.")
    else:
        values = np.asarray(init)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise TypeError(f"init must hold real numbers, got dtype {values.dtype}.")
    values = values.astype(np.float32)
    # a grayscale picture is read as (H, W): samples written as (H, W, 1) take a channel axis
    if values.shape[1:] != tuple(written_shape) and values.shape[1:] + (1,) == tuple(written_shape):
        values = values[..., None]
    if values.ndim != len(written_shape) + 1 or values.shape[1:] != tuple(written_shape) or not len(values):
        raise ValueError(f"init must hold M >= 1 samples shaped like the job's written ones (M, "
                         f"{', '.join(map(str, written_shape))}), got {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError("init holds NaN or inf.")
    if model.postprocess is not None:
        if model.preprocess is None:
            raise ValueError("init: this model has a postprocess but no preprocess, so its written "
                             "samples cannot be taken back to the sampler's values.")
        values = np.asarray(model.preprocess(values), np.float32)
    if values.shape[1:] != tuple(model.sample_shape):
        raise ValueError(f"the model's preprocess gave init samples of shape {values.shape[1:]}, "
                         f"not the sampler's {tuple(model.sample_shape)}.")
    return values


def init_identity(images: np.ndarray) -> dict[str, Any]:
    """What a manifest records of the images: their count and the SHA-256 of their float32 bytes."""
    data = np.ascontiguousarray(images, np.float32)
    return {"count": int(len(data)), "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
