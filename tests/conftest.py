"""Test set-up (the 8 host CPU devices are set in the root conftest.py, before JAX is imported).

The cross-checks against diffusers', k-diffusion's and pytorch-fid's PyTorch code skip (with
their reason, shown by ``-rs``) when torch, diffusers, k_diffusion, torchsde, torchdiffeq,
pytorch_fid or torchvision is missing; CI sets ``KARRAS_JAX_REQUIRE_COMPAT=1`` so that a
missing one fails the run instead of silently skipping them.
"""

import importlib.util
import os

import pytest


def pytest_configure(config):
    if os.environ.get("KARRAS_JAX_REQUIRE_COMPAT"):
        import fid_reference  # torchvision may sit off the import path (its docstring says why)

        needed = ("torch", "diffusers", "k_diffusion", "torchsde", "torchdiffeq", "pytorch_fid")
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        missing += [] if fid_reference.torchvision_folder() is not None else ["torchvision"]
        if missing:
            pytest.exit(f"KARRAS_JAX_REQUIRE_COMPAT is set but {missing} cannot be imported", returncode=4)
