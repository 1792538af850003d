"""Test set-up: 8 host CPU devices for the sharding tests, set before JAX is imported.

The cross-checks against diffusers' PyTorch code skip (with their reason, shown by ``-rs``)
when torch or diffusers is missing; CI sets ``KARRAS_JAX_REQUIRE_COMPAT=1`` so that a missing
one fails the run instead of silently skipping them.
"""

import importlib.util
import os

import pytest

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    if os.environ.get("KARRAS_JAX_REQUIRE_COMPAT"):
        missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
        if missing:
            pytest.exit(f"KARRAS_JAX_REQUIRE_COMPAT is set but {missing} cannot be imported", returncode=4)
