"""What ``kj.generate`` samples: a :class:`GenerateModel`, and how a MODEL argument names one.

MODEL is one of:

- ``mixture``: the built-in 2-D Gaussian mixture and its exact denoiser.
- ``package.module:function``: a function of no arguments returning a :class:`GenerateModel`
  or a dict of its fields.
- a folder written by ``kj.fit(..., folder=DIR, model=...)`` (``karras-jax train-digits``
  writes one): its ``model.json`` names the function and its JSON arguments; the function's
  model is sampled with the checkpoint's EMA weights in place of its ``params`` (placed as
  its ``params`` are, when they are sharded). Every folder loads this same way; nothing is
  special to any one model.

Sharded weights: a factory may return ``params`` already placed with ``NamedSharding`` on a
mesh it built (``jax.make_mesh`` over ``jax.devices()`` or ``jax.local_devices()``);
:func:`weights_mesh` finds that mesh, and the job splits the batch over its ``batch_axis``.
The weights hash that identifies a model is of the weights' values, whatever their
placement: sharded and replicated copies of the same weights are the same model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from karras_jax.config import KarrasVeConfig
from karras_jax.training.checkpoint import load_model_recipe, load_params

__all__ = ["GenerateModel", "load_generate_model"]  # weights_mesh: used by the job, not (yet) exported


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
      batch_axis: When ``params`` are placed on a mesh (``NamedSharding``), the axis (or
        axes) of that mesh the batch of seeds is split over; ignored otherwise.
      preprocess: The inverse of ``postprocess`` (written values to the sampler's), for
        image-to-image jobs (``generate(init=...)``); None where there is no postprocess.
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
    batch_axis: str | tuple[str, ...] = "data"
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None


def _mesh_text(mesh: Mesh) -> str:
    return "(" + ", ".join(f"{name}={size}" for name, size in mesh.shape.items()) + ")"


def weights_mesh(params: Any, batch_axis: str | tuple[str, ...] = "data") -> Mesh | None:
    """The mesh ``params`` are placed on, or None if no leaf is placed with a ``NamedSharding``.

    Leaves that are not placed (NumPy arrays, Python scalars, uncommitted arrays) are
    replicated by the sampler.

    Raises:
      ValueError: the leaves are placed on different meshes, or the mesh has no axis
        ``batch_axis`` (the message names the leaves or the axis).
    """
    found: dict[Mesh, str] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(leaf, jax.Array) and isinstance(sharding, NamedSharding):
            found.setdefault(sharding.mesh, f"params{jax.tree_util.keystr(path)}")
    if not found:
        return None
    if len(found) > 1:
        where = "; ".join(f"{name} on {_mesh_text(mesh)} of devices {mesh.device_ids.ravel().tolist()}"
                          for mesh, name in found.items())
        raise ValueError(f"model params are placed on {len(found)} different meshes ({where}); "
                         "place every weight on one mesh.")
    mesh = next(iter(found))
    axes = (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)
    missing = [a for a in axes if a not in mesh.axis_names]
    if not axes or missing:
        raise ValueError(f"model batch_axis {batch_axis!r} is not an axis of the mesh its params are placed "
                         f"on {_mesh_text(mesh)}; set GenerateModel.batch_axis to the axis the seeds are "
                         "split over.")
    return mesh


def _host_value(leaf: Any) -> np.ndarray:
    """One weight's whole value on the host.

    A leaf sharded over this process's devices is assembled on the host from its shards. A
    leaf spread over several processes (not fully addressable) is gathered with
    ``process_allgather``: every process hashes the same leaves in the same order, so each
    takes part in every gather, and each device briefly holds one whole leaf.
    """
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return gather(leaf)
    return np.asarray(leaf)


def gather(array: jax.Array) -> np.ndarray:
    """The whole value of an array spread over several processes, on every process (a collective).

    Starts once every local device has finished the program that made ``array`` and returns
    once every one has finished the gather (``multihost_utils.process_allgather`` waits for
    one local device): a precaution, so that no local device is still in one program with
    collectives while another starts the next.
    """
    jax.block_until_ready(array)  # the program that made it is done on every local device, too
    sharding = array.sharding
    if isinstance(sharding, NamedSharding):
        whole = sharding.update(spec=PartitionSpec())
    else:
        whole = jax.sharding.GSPMDSharding.get_replicated(sharding._device_assignment)  # noqa: SLF001
    out = _replicate(whole)(array)
    jax.block_until_ready(out)
    return np.asarray(out.addressable_data(0))


@functools.lru_cache(maxsize=16)
def _replicate(whole: jax.sharding.Sharding) -> Callable[[jax.Array], jax.Array]:
    """A jitted identity onto ``whole``: one per sharding, so gathering every chunk compiles once."""
    return jax.jit(lambda x: x, out_shardings=whole)


def _weights_hash(params: Any) -> str:
    """A hash of the weights' values (dtype, shape, bytes of each leaf in tree order).

    Independent of placement: sharded and replicated copies hash alike. Leaves are brought to
    the host one at a time, so host memory holds at most one whole leaf beyond the weights.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        array = np.ascontiguousarray(_host_value(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _default_mixture() -> Any:
    from karras_jax.analytic import default_mixture

    with jax.ensure_compile_time_eval():  # concrete arrays even if first built inside a trace
        return default_mixture()


def _mixture_denoiser(params: Any, x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
    """The built-in mixture's exact denoiser (no weights, no conditioning)."""
    del params, cond
    return _default_mixture().denoise(x, sigma)


def _mixture() -> GenerateModel:
    # The one record of the built-in mixture's defaults: `karras-jax demo` reads them here too.
    # s_noise = 1: its denoiser is exact, so there is no error for extra noise to offset.
    # One function for every load: a second "mixture" job reuses the compiled sampler.
    return GenerateModel(
        apply_fn=_mixture_denoiser, params=None, sample_shape=(2,),
        config=KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_noise=1.0, s_churn=40.0, s_min=0.05,
                              s_max=50.0),
        schedule="karras", steps=18, identity="mixture:default_mixture")


def _build(spec: str, function: str, arguments: dict[str, Any]) -> GenerateModel:
    """``function(**arguments)`` (a ``package.module:function``) as a :class:`GenerateModel`."""
    module_name, _, name = function.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model {spec!r}: cannot load {name!r} from {module_name!r}: {err}") from None
    made = factory(**arguments)
    if isinstance(made, dict):
        made = GenerateModel(**made)
    if not isinstance(made, GenerateModel):
        raise ValueError(f"model {spec!r} returned {type(made).__name__}, not a GenerateModel or dict.")
    return made


def _from_folder(spec: str, folder: Path) -> GenerateModel:
    """The model of a ``kj.fit`` folder: its recorded function, filled with the checkpoint's EMA weights."""
    try:
        function, arguments = load_model_recipe(folder)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"model {spec!r}: {err}") from None
    made = _build(spec, function, arguments)
    try:
        params = load_params(folder, made.params)  # on made.params' shardings, where it has them
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"model {spec!r}: {err}") from None
    return made._replace(params=params, identity=f"{function}:{_weights_hash(params)}")


def load_generate_model(spec: str) -> GenerateModel:
    """The :class:`GenerateModel` named by ``spec`` (module docstring).

    Raises:
      ValueError: ``spec`` names nothing loadable (the message says what was tried).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("model must be 'mixture', a kj.fit folder or 'package.module:function'.")
    if spec == "mixture":
        return _mixture()
    path = Path(spec)
    if path.is_dir():
        return _from_folder(spec, path)
    module_name, sep, function = spec.partition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"model {spec!r} is neither 'mixture', an existing folder, nor "
                         "'package.module:function'.")
    made = _build(spec, spec, {})
    if not made.identity:
        made = made._replace(identity=f"{spec}:{_weights_hash(made.params)}")
    return made
