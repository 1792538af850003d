"""What the results were measured on: machine, library versions, git commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("karras-jax", "jax", "jaxlib", "flax", "numpy", "torch", "diffusers", "chex", "optax")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git(root: Path) -> dict[str, Any]:
    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    try:
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "karras_jax"))}
    except OSError:
        return {}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_gib": _memory_gib(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def describe(root: Path) -> dict[str, Any]:
    """Machine, versions and git state, plus a short machine label for file names."""
    info = machine()
    kind = info["device_kind"] if info["jax_backend"] != "cpu" else info["cpu_model"]
    label = re.sub(r"[^a-z0-9]+", "-", f"{info['jax_backend']}-{kind}-{info['cpu_count']}c".lower()).strip(
        "-"
    )
    return {
        "label": label,
        "machine": info,
        "versions": versions(),
        "git": _git(root),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
