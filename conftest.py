"""Pytest set-up for every test path (tests/, the package's doctests, README.md, docs/): 8 host
CPU devices, set before JAX is imported, so that the sharding tests and the docs' mesh
examples see a pod's worth of devices however pytest is pointed at them."""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
