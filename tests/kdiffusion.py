"""k-diffusion's own samplers, loaded without its package ``__init__``.

``import k_diffusion`` runs ``k_diffusion/__init__.py``, which imports every submodule
(models, evaluation, ...) and with them scikit-image, torchvision, clip, ...: far more than
the cross-checks need. ``sampling()`` loads the real ``k_diffusion/sampling.py`` file under a
stand-in ``k_diffusion`` package whose ``utils`` holds only ``append_dims`` (all that
``sampling.py`` uses of it), so the samplers run as published.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

import pytest

NEEDED = ("torch", "torchsde", "torchdiffeq", "scipy", "tqdm", "k_diffusion")
_NAME = "k_diffusion"


def _append_dims(x, target_dims):
    """``x`` with trailing singleton axes up to ``target_dims`` axes (k-diffusion's helper)."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def sampling() -> types.ModuleType:
    """The module ``k_diffusion.sampling``, or ``pytest.skip`` naming what is not installed."""
    loaded = sys.modules.get(f"{_NAME}.sampling")
    if loaded is not None:
        return loaded
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"k-diffusion cross-check needs {', '.join(missing)} (not installed)")
    folder = pathlib.Path(importlib.util.find_spec("k_diffusion").submodule_search_locations[0])
    package = types.ModuleType(_NAME)
    package.__path__ = [str(folder)]
    utils = types.ModuleType(f"{_NAME}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules[_NAME], sys.modules[f"{_NAME}.utils"] = package, utils
    spec = importlib.util.spec_from_file_location(f"{_NAME}.sampling", folder / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
