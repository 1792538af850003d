"""pytorch-fid's Inception network, loaded without the ``torchvision`` package ``__init__``.

``import torchvision`` loads its compiled operators, which fail next to a CPU-only torch of
another build (``RuntimeError: operator torchvision::nms does not exist``), and
``torchvision.models`` imports every model family (detection pulls in those operators
too). ``inception()`` loads pytorch-fid's ``inception.py`` as published on top of
torchvision's own ``models/inception.py`` (pure Python), under stand-in ``torchvision``,
``torchvision.models`` and ``torchvision.transforms`` packages (no ``__init__`` runs) that
hold only what those two files use from outside themselves:

- ``torchvision.__version__`` (pytorch-fid picks the ``inception_v3`` arguments by it), from
  the installed distribution's metadata;
- ``torchvision.utils._log_api_usage_once`` (a no-op here) and
  ``torchvision.transforms._presets.ImageClassification`` (named in the ImageNet weights'
  metadata, never called here);
- ``torchvision.models._api``, ``_meta`` and ``_utils`` are torchvision's own files, loaded
  from its folder through the stand-in packages.

``fid_module(state_dict)`` builds ``InceptionV3([3], resize_input=True, normalize_input=True)``
with the given weights instead of downloading the published ones (its ``fid_inception_v3``
fetches them through ``load_state_dict_from_url``, which is replaced for the call);
``random_state_dict(seed)`` makes such weights, with BatchNorm statistics far from the
identity.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
import sys
import types
from typing import Any

import numpy as np
import pytest

NEEDED = ("torch", "torchvision", "pytorch_fid")
#: Where CI puts torchvision's files (``pip install --no-deps --target .venv/fid-reference
#: torchvision==0.28.0``): off the import path, because an importable torchvision whose
#: operators do not load breaks diffusers, which imports it whenever it is installed.
SIDE_FOLDER = pathlib.Path(sys.prefix) / "fid-reference"


def torchvision_folder() -> pathlib.Path | None:
    """torchvision's package folder: installed, or in :data:`SIDE_FOLDER`; None if neither."""
    spec = importlib.util.find_spec("torchvision") if "torchvision" not in sys.modules else None
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(spec.submodule_search_locations[0])
    side = SIDE_FOLDER / "torchvision"
    return side if (side / "models" / "inception.py").is_file() else None


def missing() -> list[str]:
    """The packages of :data:`NEEDED` that are not installed (found without importing them)."""
    if "pytorch_fid.inception" in sys.modules:
        return []
    return [name for name in NEEDED if (torchvision_folder() if name == "torchvision"
                                        else importlib.util.find_spec(name)) is None]


def _version(folder: pathlib.Path) -> str:
    """torchvision's version, from its ``version.py`` (the side folder has no installed metadata)."""
    text = (folder / "version.py").read_text(encoding="utf-8")
    return text.split("__version__ = ", 1)[1].split("\n", 1)[0].strip().strip("'\"")


def _stand_in(name: str, path: pathlib.Path | None = None, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class _ImageClassification:
    """Stands in for torchvision's ImageNet preprocessing preset (only named, never called here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("torchvision's ImageClassification is not loaded by tests/fid_reference.py")


def load() -> types.ModuleType:
    """The module ``pytorch_fid.inception``, loaded as published over the stand-in torchvision.

    Raises:
      ImportError: naming the packages that are not installed (checked before torch is imported).
    """
    loaded = sys.modules.get("pytorch_fid.inception")
    if loaded is not None:
        return loaded
    absent = missing()
    if absent:
        raise ImportError(f"pytorch-fid cross-check needs {', '.join(absent)} (not installed)")
    folder = torchvision_folder()
    before = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "torchvision"}
    if "torchvision.models.inception" not in sys.modules:
        package = _stand_in("torchvision", folder, __version__=_version(folder))
        package.models = _stand_in("torchvision.models", folder / "models")
        package.utils = _stand_in("torchvision.utils", _log_api_usage_once=lambda obj: None)
        package.transforms = _stand_in("torchvision.transforms", folder / "transforms")
        package.transforms._presets = _stand_in("torchvision.transforms._presets",
                                                ImageClassification=_ImageClassification)
        spec = importlib.util.spec_from_file_location("torchvision.models.inception",
                                                      folder / "models" / "inception.py")
        vision = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = vision
        spec.loader.exec_module(vision)
        package.models.inception = vision
        package.models.inception_v3 = vision.inception_v3
    import pytorch_fid.inception

    # the stand-ins leave sys.modules (pytorch_fid.inception keeps its own reference): a later
    # `import torchvision` elsewhere in this process (diffusers checks for it) sees what was there
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision" and n not in before]:
        del sys.modules[name]
    return pytorch_fid.inception


def inception() -> types.ModuleType:
    """:func:`load`, or ``pytest.skip`` naming what is not installed."""
    try:
        return load()
    except ImportError as err:
        pytest.skip(str(err))


def random_state_dict(seed: int = 0) -> dict[str, Any]:
    """Random weights for the FID Inception network, as ``torch.load`` gives the published file.

    Keys and shapes are those of ``fid_inception_v3()`` (torchvision's ``Inception3`` with 1008
    classes and no auxiliary head; pytorch-fid's patched blocks keep the parameters). Kernels
    are He-normal; BatchNorm weights in [0.5, 1.5], biases and running means N(0, 0.2^2),
    running variances in [0.5, 2] (so a BatchNorm is never the identity); the classifier too.
    """
    import torch

    net = load()._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    rng = np.random.default_rng(seed)
    out = {}
    for name, tensor in net.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith("num_batches_tracked"):
            value = np.asarray(0, np.int64)
        elif name.endswith("conv.weight"):
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        elif name.endswith("bn.weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bn.bias, bn.running_mean, fc.weight, fc.bias
            value = rng.normal(0, 0.2, shape)
        out[name] = torch.from_numpy(np.asarray(value, np.int64 if value.dtype == np.int64 else np.float32))
    return out


def fid_module(state_dict: dict[str, Any]) -> Any:
    """pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True)`` holding
    ``state_dict`` (in eval mode), built by its own ``fid_inception_v3`` with the download
    replaced by ``state_dict``."""
    module = load()
    published = module.load_state_dict_from_url

    def weights(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert url == module.FID_WEIGHTS_URL, url
        return state_dict

    module.load_state_dict_from_url = weights
    try:
        net = module.InceptionV3([3], resize_input=True, normalize_input=True)
    finally:
        module.load_state_dict_from_url = published
    return net.eval()
