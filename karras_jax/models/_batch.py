"""Noise levels per sample, and the checks the model wrappers and the training losses share.

The samplers pass one scalar sigma, training passes one per sample.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax._validation import concrete_value

__all__ = ["SIGMA_SHAPES", "as_sigma_shape", "check_kind_constants", "check_levels", "check_null_cond",
           "check_sigma_shape", "class_labels", "image_inputs", "per_sample",
           "sinusoidal_embedding"]

#: How a wrapper hands the noise level to the network: as the sampler's scalar, or one per sample.
SIGMA_SHAPES = ("scalar", "batch")


def per_sample(sigma: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(elementwise, for_network)``: ``sigma`` shaped to multiply ``x``, and as the network gets it.

    A scalar stays a scalar. A ``(B,)`` array (one level per sample, as a training loss draws
    them) or one shaped ``(B, 1, ..., 1)`` (EDM's layout) becomes ``(B, 1, ..., 1)`` for the
    elementwise arithmetic and ``(B,)`` for the network.

    Raises:
      ValueError: ``sigma`` is neither a scalar nor one level per sample of ``x``.
    """
    if sigma.ndim == 0:
        return sigma, sigma
    batch = x.shape[0] if x.ndim else None
    if sigma.size != batch or sigma.shape[0] != batch or sigma.ndim > max(x.ndim, 1):
        raise ValueError(f"sigma must be a scalar or one level per sample (shape ({batch},) or "
                         f"({batch}, 1, ...)) for x of shape {x.shape}; got shape {sigma.shape}.")
    flat = jnp.reshape(sigma, (batch,))
    return jnp.reshape(flat, (batch,) + (1,) * (x.ndim - 1)), flat


def check_sigma_shape(sigma_shape: str) -> str:
    """Returns ``sigma_shape`` if it is one of :data:`SIGMA_SHAPES`.

    Raises:
      ValueError: any other value (the message names the parameter and the choices).
    """
    if sigma_shape not in SIGMA_SHAPES:
        raise ValueError(f"sigma_shape must be one of {SIGMA_SHAPES}, got {sigma_shape!r}.")
    return sigma_shape


def as_sigma_shape(level: jax.Array, x: jax.Array, sigma_shape: str) -> jax.Array:
    """``level`` (a scalar or ``(B,)``) as the network takes it: broadcast to ``(B,)`` for ``"batch"``."""
    return jnp.broadcast_to(level, x.shape[:1]) if sigma_shape == "batch" else level


def check_kind_constants(kind: Any, table: dict[str, dict[str, Any]], constants: dict[str, Any],
                         signed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The constants of ``kind`` in ``table`` (a Table 1 column or row) with ``constants`` applied.

    Every concrete constant must be finite, and > 0 unless named in ``signed``; ``M`` must be
    an int.

    Raises:
      ValueError: an unknown kind, or a constant out of range.
      TypeError: a kind that is not a string, a constant the kind does not take, or a non-int M.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be one of the names {tuple(table)}, got {type(kind).__name__} {kind!r}.")
    if kind not in table:
        raise ValueError(f"kind must be one of {tuple(table)}, got {kind!r}.")
    unknown = sorted(set(constants) - set(table[kind]))
    if unknown:
        allowed = ", ".join(table[kind]) or "none"
        raise TypeError(f"kind={kind!r} takes the constants {allowed}; got {', '.join(unknown)}.")
    values = {**table[kind], **constants}
    for name, value in values.items():
        concrete = concrete_value(name, value)
        positive = name in signed or concrete is None or bool(np.all(concrete > 0))
        if concrete is not None and not (np.all(np.isfinite(concrete)) and positive):
            raise ValueError(f"{name} must be finite{'' if name in signed else ' and > 0'}, got {value!r}.")
        if name == "M" and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
            raise TypeError(f"M must be a positive int, got {value!r}.")
    return values


def check_levels(sigma: Any, *, zero: bool = False) -> None:
    """Refuses concrete noise levels that are not finite and > 0 (>= 0 with ``zero``); tracers pass.

    Raises:
      TypeError: ``sigma`` is not real numbers (a string, a bool, complex).
      ValueError: naming ``sigma``, the range and the first bad level.
    """
    value = concrete_value("sigma", sigma)
    if value is None:
        return
    bad = ~np.isfinite(value) | ((value < 0) if zero else (value <= 0))
    if bad.any():
        index = np.unravel_index(np.argmax(bad), bad.shape)
        where = f" at index {tuple(int(i) for i in index)}" if value.ndim else ""
        raise ValueError(f"sigma must be finite and {'>= 0' if zero else '> 0'}, got "
                         f"{float(value[index])!r}{where}.")


def check_null_cond(null_cond: Any, cond: Any, batch: int) -> None:
    """Checks that ``null_cond`` (one sample's "no condition") fits ``cond`` (a batch of B conditions).

    The same pytree structure; each leaf of ``cond`` shaped ``(B, ...)``; each leaf of
    ``null_cond`` broadcastable to one sample of it and castable to its dtype without changing
    kind (an int label for float features is fine, a float for int labels is not). Only shapes,
    dtypes and structures are read, so tracers pass.

    Raises:
      ValueError: different structures or shapes (the message names both and shows them).
      TypeError: a dtype that does not fit.
    """
    null_tree, cond_tree = jax.tree_util.tree_structure(null_cond), jax.tree_util.tree_structure(cond)
    if null_tree != cond_tree:
        raise ValueError(f"null_cond must have the pytree structure of cond: null_cond is {null_tree}, "
                         f"cond is {cond_tree}.")
    for (path, c), n in zip(jax.tree_util.tree_leaves_with_path(cond), jax.tree_util.tree_leaves(null_cond),
                            strict=True):
        where = jax.tree_util.keystr(path)
        c_shape, n_shape = jnp.shape(c), jnp.shape(n)
        if not c_shape or c_shape[0] != batch:
            raise ValueError(f"cond{where} must have leading dimension B={batch} (one entry per sample), "
                             f"got shape {c_shape}.")
        try:
            fits = np.broadcast_shapes(n_shape, c_shape[1:]) == c_shape[1:]
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"null_cond{where} must be one sample of cond{where} (no batch dimension): "
                             f"shape {n_shape} does not broadcast to {c_shape[1:]} (cond{where} has shape "
                             f"{c_shape}).")
        n_dtype, c_dtype = jnp.result_type(n), jnp.result_type(c)
        if not np.can_cast(n_dtype, c_dtype, casting="same_kind"):
            raise TypeError(f"null_cond{where} has dtype {n_dtype}, which does not fit cond{where}'s "
                            f"{c_dtype} (e.g. a float null for integer labels).")


def class_labels(labels: ArrayLike | None, num_classes: int, batch: int) -> jax.Array:
    """``labels`` as ``(B,)`` int32 after checking them; None is the null class ``num_classes``.

    Dtype and shape are checked always, values only where concrete; a traced label outside
    ``[0, num_classes]`` gives a NaN output (the embedding lookup's fill value).
    """
    if labels is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    allowed = f"[0, {num_classes}] ({num_classes} = the null class, no condition)"
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels (cond) must be integer classes in {allowed}, got dtype {labels.dtype}.")
    if labels.shape not in ((), (batch,)):
        raise ValueError(f"labels (cond) must be a scalar or one per sample, shape ({batch},) for x's batch "
                         f"of {batch}; got shape {labels.shape}.")
    value = concrete_value("labels", labels)
    if value is not None and not np.all((value >= 0) & (value <= num_classes)):
        bad = value.reshape(-1)[np.argmax(((value < 0) | (value > num_classes)).reshape(-1))]
        raise ValueError(f"labels (cond) must be integer classes in {allowed}, got {int(bad)}.")
    # traced labels out of range: make a negative one (which indexing would wrap round to the
    # null class) out of range too, so that every bad label gives a NaN output, never a silent class
    labels = jnp.where(labels < 0, num_classes + 1, labels).astype(jnp.int32)
    return jnp.broadcast_to(labels, (batch,))


def image_inputs(x: ArrayLike, c_noise: ArrayLike, labels: ArrayLike | None, num_classes: int,
                 dtype: Any, network: str) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """An image network's inputs, checked: ``(x in dtype, c_noise as (B,) float32, labels or None)``.

    Raises:
      ValueError: x not ``(B, H, W, C)``, c_noise neither a scalar nor ``(B,)``, labels for an
        unconditional network, or :func:`class_labels`' errors.
      TypeError: labels that are not integers.
    """
    x = jnp.asarray(x, dtype)
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C) images, got shape {x.shape}.")
    batch = x.shape[0]
    if jnp.shape(c_noise) not in ((), (batch,)):
        raise ValueError(f"c_noise must be a scalar or one level per sample, shape ({batch},); got shape "
                         f"{jnp.shape(c_noise)}.")
    if num_classes > 0:
        labels = class_labels(labels, num_classes, batch)
    elif labels is not None:
        raise ValueError(f"labels were given to a {network} with num_classes=0 (unconditional).")
    return x, jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (batch,)), labels


def sinusoidal_embedding(c_noise: jax.Array, dim: int, max_positions: float) -> jax.Array:
    r"""The noise-level embedding, ``(B, dim)``: cosines then sines of ``c_noise`` at dim/2 frequencies.

    :math:`[\cos(c\,\omega_k), \sin(c\,\omega_k)]_k` with :math:`\omega_k = P^{-k/(dim/2)}`,
    :math:`k < dim/2`, :math:`P` = ``max_positions``.
    """
    half = dim // 2
    freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / half)
    angles = c_noise[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
