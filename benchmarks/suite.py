"""Shared state of one benchmark run: the preset, the sampler config, models, and helpers
that build (and cache) the jitted callables every measurement reuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

import karras_jax as kj
from benchmarks.models import init_model
from benchmarks.presets import Preset
from benchmarks.timing import Timing, compare

# diffusers' defaults: churn on for sigma in [0.05, 50], i.e. most VE steps draw noise.
DEFAULT_CONFIG = kj.KarrasVeConfig()


@dataclass
class Suite:
    """One run's shared objects; measurements take it as their only argument."""

    preset: Preset
    config: kj.KarrasVeConfig = DEFAULT_CONFIG
    _models: dict[str, tuple[Any, Any, tuple[int, ...]]] = field(default_factory=dict)
    _samplers: dict[tuple[str, int], Callable[..., jax.Array]] = field(default_factory=dict)

    def model(self, name: str) -> tuple[Any, Any, tuple[int, ...]]:
        """``(apply_fn, params, sample_shape)`` for ``"mlp"`` or ``"conv"`` (built once)."""
        if name not in self._models:
            self._models[name] = init_model(name, conv_channels=self.preset.conv_channels)
        return self._models[name]

    def state(self, n: int) -> kj.KarrasVeState:
        """VE noise levels (sigma_max = 100 down to sigma_min = 0.02) for N steps."""
        return kj.set_timesteps(self.config, n)

    def sampler(self, name: str, n: int) -> Callable[..., jax.Array]:
        """``kj.make_sampler`` for model ``name`` and N steps (one per pair; jit caches shapes)."""
        if (name, n) not in self._samplers:
            apply_fn, _, shape = self.model(name)
            self._samplers[name, n] = kj.make_sampler(apply_fn, self.state(n), self.config, shape)
        return self._samplers[name, n]

    def compare(self, fns: dict[str, Callable[[], Any]], **kwargs: Any) -> dict[str, Timing]:
        """:func:`benchmarks.timing.compare` (interleaved) with the preset's budget and repeats."""
        kwargs.setdefault("budget_s", self.preset.budget_s * len(fns))
        kwargs.setdefault("min_repeats", self.preset.min_repeats)
        return compare(fns, **kwargs)


def key_impl_works(impl: str) -> bool:
    """Whether this JAX has the PRNG implementation ``impl`` and can draw with it here."""
    try:
        jax.block_until_ready(jax.random.normal(jax.random.key(0, impl=impl), (2,)))
    except Exception:  # noqa: BLE001 - unknown name, or no lowering on this backend
        return False
    return True


def batch_keys(batch: int, seed: int = 0, impl: str | None = None) -> jax.Array:
    """(B,) typed keys, one per sample."""
    return jax.random.split(jax.random.key(seed, impl=impl), batch)


def row(measurement: str, case: dict[str, Any], times: dict[str, Timing], **extra: Any) -> dict[str, Any]:
    """One result record: what was measured, its raw timings, and derived figures."""
    return {
        "measurement": measurement,
        "case": case,
        "times": {name: t.as_dict() for name, t in times.items()},
        **extra,
    }


def ratio(slow: Timing, fast: Timing) -> float:
    """Median over median."""
    return slow.median / fast.median


def child_rows(module: str, preset_name: str, devices: int) -> list[dict[str, Any]]:
    """Rows of ``python -m benchmarks.<module> --preset <preset_name>`` run on ``devices`` host CPU devices.

    The device count must be set before JAX starts, so the measurement runs in a child process
    (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``JAX_PLATFORMS=cpu``) that prints
    its row as JSON on its last line.
    """
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--preset", preset_name]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return [json.loads(done.stdout.strip().splitlines()[-1])]
