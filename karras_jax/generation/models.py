"""What ``kj.generate`` samples: a :class:`GenerateModel`, and how a MODEL argument names one.

MODEL is ``mixture`` (the built-in 2-D Gaussian mixture and its exact denoiser), a folder
written by ``karras-jax train-digits`` (its EMA weights, class labels ``seed % 10``), or
``package.module:function`` (a function of no arguments returning a :class:`GenerateModel`
or a dict of its fields).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from karras_jax.config import KarrasVeConfig

__all__ = ["GenerateModel", "load_generate_model"]


class GenerateModel(NamedTuple):
    """Everything ``kj.generate`` needs to sample a model.

    Attributes:
      apply_fn: ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``.
      params: Its weights.
      sample_shape: One sample's shape.
      config: The sampler's :class:`karras_jax.KarrasVeConfig`.
      schedule: The default schedule name (``--schedule`` overrides it).
      steps: The default number of steps (``--steps`` overrides it).
      identity: A string naming the model exactly (e.g. a weights hash): stored in the
        manifest, and a resume with another identity is refused.
      cond_fn: None (unconditional), or ``cond_fn(seeds) -> cond`` giving each seed's
        conditioning (e.g. a class label); ``--guidance`` needs one.
      null_cond: The "no condition" value for classifier-free guidance.
      postprocess: None, or a function applied to the sampler's output before it is
        written (e.g. to pixel values).
      image_range: ``(lo, hi)`` of the written samples for ``--png`` (None: not images).
    """

    apply_fn: Callable[..., jax.Array]
    params: Any
    sample_shape: tuple[int, ...]
    config: KarrasVeConfig
    schedule: str = "karras"
    steps: int = 18
    identity: str = ""
    cond_fn: Callable[[np.ndarray], Any] | None = None
    null_cond: Any = None
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None
    image_range: tuple[float, float] | None = None


def _weights_hash(params: Any) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _mixture() -> GenerateModel:
    from karras_jax.analytic import default_mixture

    mixture = default_mixture()
    return GenerateModel(
        apply_fn=lambda params, x, sigma, cond: mixture.denoise(x, sigma),
        params=None, sample_shape=(2,),
        config=KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=40.0, s_min=0.05, s_max=50.0),
        schedule="karras", steps=18, identity="mixture:default_mixture")


def _digits(folder: Path) -> GenerateModel:
    from karras_jax.examples.digits import (
        IMAGE_SHAPE,
        NULL_CLASS,
        NUM_CLASSES,
        PIXEL_MAX,
        denoiser,
        load_model,
    )

    cfg, params = load_model(folder)
    return GenerateModel(
        apply_fn=denoiser(cfg), params=params, sample_shape=IMAGE_SHAPE,
        config=KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0),
        schedule="karras", steps=cfg.sample_steps, identity=f"digits:{_weights_hash(params)}",
        cond_fn=lambda seeds: jnp.asarray(np.asarray(seeds) % NUM_CLASSES, jnp.int32), null_cond=NULL_CLASS,
        postprocess=lambda x: np.clip((x[..., 0] + 1.0) * (PIXEL_MAX / 2), 0.0, PIXEL_MAX),
        image_range=(0.0, PIXEL_MAX))


def load_generate_model(spec: str) -> GenerateModel:
    """The :class:`GenerateModel` named by ``spec`` (module docstring).

    Raises:
      ValueError: ``spec`` names nothing loadable (the message says what was tried).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("model must be 'mixture', a train-digits folder or 'package.module:function'.")
    if spec == "mixture":
        return _mixture()
    path = Path(spec)
    if path.is_dir():
        try:
            return _digits(path)
        except (FileNotFoundError, ImportError) as err:
            raise ValueError(f"model {spec!r}: {err}") from None
    module_name, sep, function = spec.partition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"model {spec!r} is neither 'mixture', an existing folder, nor "
                         "'package.module:function'.")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model {spec!r}: cannot load {function!r} from {module_name!r}: {err}") from None
    made = factory()
    if isinstance(made, dict):
        made = GenerateModel(**made)
    if not isinstance(made, GenerateModel):
        raise ValueError(f"model {spec!r} returned {type(made).__name__}, not a GenerateModel or dict.")
    if not made.identity:
        made = made._replace(identity=f"{spec}:{_weights_hash(made.params)}")
    return made
