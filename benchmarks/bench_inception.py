"""Measurement 16: FID feature extraction, ``kj.inception_features`` vs pytorch-fid's module.

The same network and images on both sides: the FID Inception-v3 (pytorch-fid's
``InceptionV3([3], resize_input=True, normalize_input=True)``, built by its own
``fid_inception_v3`` with random weights of the published file's shapes instead of the
download, as ``tests/fid_reference.py`` builds it; the timing does not depend on the values)
and its weights converted by :func:`karras_jax.models.inception.inception_params_from_torch`.
Images are B random RGB images at 32x32 (CIFAR-10's size, resized to 299x299 inside both)
and at 299x299.

- ``kj``: :func:`inception_features` (jitted, warm; weights are traced arguments) on the
  ``(B, H, W, 3)`` uint8 images already on the device; it divides by 255 itself.
- ``pytorch-fid``: the module in eval mode under ``torch.no_grad()`` on the ``(B, 3, H, W)``
  float32 images already divided by 255 (as its ``fid_score`` data loader hands them over),
  on the GPU when JAX and torch both have one, else the CPU with the faster of all cores and
  1 thread, probed once on the first case (as measurements 2 and 15 choose: on a shared
  machine two threads can lose to one).

Timed interleaved (``Suite.compare``); figures are images per second of the median call and
``ratio`` = t(pytorch-fid) / t(kj) (> 1: kj is faster). ``max_rel_diff`` = max |kj - pytorch-fid|
/ max |pytorch-fid| over the batch's features: the two compute the same thing. Without torch,
torchvision or pytorch-fid the measurement is skipped with the reason (``run.py`` records the
ImportError). Run alone: ``python -m benchmarks.bench_inception [--preset quick] [--batches 8]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import types
from typing import Any

import jax
import numpy as np

from benchmarks.bench_torch import _fastest_threads, _threads
from benchmarks.suite import Suite, row
from karras_jax.models.inception import inception_features, inception_params_from_torch

SIZES = (32, 299)
BATCHES = {"quick": (4,), "full": (8, 64), "gpu": (64, 256)}
_REFERENCE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fid_reference.py"


def fid_reference() -> types.ModuleType:
    """``tests/fid_reference.py`` (pytorch-fid under a stand-in torchvision), loaded by path.

    Raises:
      ImportError: torch, torchvision, pytorch-fid (or pytest, which that file imports) missing.
    """
    loaded = sys.modules.get("fid_reference")
    if loaded is None:
        if importlib.util.find_spec("pytest") is None:
            raise ImportError("the pytorch-fid comparison needs pytest (tests/fid_reference.py imports it)")
        spec = importlib.util.spec_from_file_location("fid_reference", _REFERENCE)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        sys.modules["fid_reference"] = loaded
    loaded.load()  # ImportError naming what is missing, before torch is imported
    return loaded


def _device() -> str:
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def run(suite: Suite, batches: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of measurement 16: one per (image size, B), kj and pytorch-fid side by side."""
    reference = fid_reference()
    import torch

    state_dict = reference.random_state_dict(0)
    device = _device()
    net = reference.fid_module(state_dict).to(device)
    params = inception_params_from_torch(state_dict)
    sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: out)

    def torch_call(x: Any) -> Any:
        with torch.no_grad():
            return net(x)[0]

    threads = torch.get_num_threads()
    rows = []
    for size in SIZES:
        for batch in batches or BATCHES.get(suite.preset.name, BATCHES["quick"]):
            rng = np.random.default_rng(batch * 1000 + size)
            images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
            ours_in = jax.device_put(images)
            theirs_in = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
            theirs_in = theirs_in.to(device)
            if device == "cpu" and not rows:
                threads = _fastest_threads([os.cpu_count() or 1, 1], lambda x=theirs_in: torch_call(x), sync)
            theirs_call = _threads(threads, lambda x=theirs_in: torch_call(x))
            ours = np.asarray(inception_features(params, ours_in))
            theirs = theirs_call().reshape(batch, -1).cpu().numpy()
            diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            times = suite.compare({"kj": lambda x=ours_in: inception_features(params, x),
                                   "pytorch-fid": theirs_call}, syncs={"pytorch-fid": sync})
            per_s = {name: batch / t.median for name, t in times.items()}
            rows.append(row("16_inception", {"size": size, "B": batch}, times, images_per_s=per_s,
                            ratio=times["pytorch-fid"].median / times["kj"].median, max_rel_diff=diff,
                            torch_device=device, torch_threads=threads))
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--batches", default=None, help="comma-separated B (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else None
    rows = run(Suite(PRESETS[args.preset]), batches)
    first = rows[0]
    where = f"JAX {jax.default_backend()}, torch {first['torch_device']}, {first['torch_threads']} threads"
    print(f"{'size':>5} {'B':>4} {'kj img/s':>9} {'pytorch-fid img/s':>18} {'ratio':>6} "
          f"{'max rel diff':>13}  ({where})")
    for r in rows:
        c, s = r["case"], r["images_per_s"]
        print(f"{c['size']:>5} {c['B']:>4} {s['kj']:>9.2f} {s['pytorch-fid']:>18.2f} {r['ratio']:>6.2f} "
              f"{r['max_rel_diff']:>13.1e}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
