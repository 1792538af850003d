"""Measurement 11: ``kj.generate`` end to end against sampling the same batches without writing.

For the mixture (its exact denoiser, 2-D samples) and the package UNet at the digits
example's size (8x8x1, random weights: speed does not depend on them; class s % 10,
unguided), one job of ``generate_seeds`` seeds in batches of ``generate_batch``:

- ``generate``: ``kj.generate(model, seeds, fresh folder, batch=...)``: keys from seeds,
  sampling, device-to-host copies, shards and the manifest written (fsync, rename) by the
  background writer, checksums; a warm-up job beforehand compiles the sampler, which later
  jobs reuse.
- ``sample_only`` (the baseline, hand-written here): the same sampler called on the same
  chunks of keys, each result copied to the host, nothing written.
- ``generate_features`` (the UNet only): ``kj.generate(..., features=...)`` with the digits
  example's classifier features (``karras_jax.examples.digits:classifier_features``, the
  hidden layer of its scikit-learn MLP on the written 0..16 pixels): shards of features and
  ``stats.npz`` instead of samples.

Figures: ``throughput_ratio`` = t(sample_only) / t(generate), the fraction of the sampling
throughput that generation keeps (target >= 0.95); ``features_ratio`` = t(generate) /
t(generate_features), what measuring while generating keeps of generating alone (target >= 0.9).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from benchmarks.suite import Suite, ratio, row
from karras_jax.examples.digits import classifier_features, to_pixels

FEATURES = "karras_jax.examples.digits:classifier_features"


def _models(suite: Suite) -> dict[str, kj.GenerateModel]:
    mixture = kj.load_generate_model("mixture")
    apply_fn, params, shape = suite.model("unet")
    unet = kj.GenerateModel(apply_fn=apply_fn, params=params, sample_shape=shape,
                            config=kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0),
                            schedule="karras", steps=12, identity="benchmark-unet",
                            cond_fn=lambda seeds: jnp.asarray(np.asarray(seeds) % 10, jnp.int32),
                            postprocess=to_pixels)  # written as the digits example writes them
    return {"mixture": mixture, "unet": unet}


def run(suite: Suite) -> list[dict[str, Any]]:
    """Rows of measurement 11: one per model."""
    rows = []
    root = Path(tempfile.mkdtemp(prefix="kj-bench-generate-"))
    counter = itertools.count()
    try:
        for name, model in _models(suite).items():
            n, batch = suite.preset.generate_seeds[name], suite.preset.generate_batch[name]
            seeds = np.arange(n, dtype=np.int64)
            text = f"0-{n - 1}"
            kj.generate(model, text, root / "warmup", batch=batch, progress=False)  # compiles the sampler
            shutil.rmtree(root / "warmup")
            state = kj.set_timesteps(model.config, model.steps, model.schedule)
            sampler = kj.make_sampler(model.apply_fn, state, model.config, model.sample_shape)
            weights = model.params

            def generate(model: kj.GenerateModel = model, text: str = text, batch: int = batch,
                         features: str | None = None) -> None:
                folder = root / f"job-{next(counter)}"
                kj.generate(model, text, folder, batch=batch, progress=False, features=features)
                shutil.rmtree(folder)

            def sample_only(model: kj.GenerateModel = model, sampler: Any = sampler, weights: Any = weights,
                            batch: int = batch, seeds: np.ndarray = seeds) -> None:
                for lo in range(0, len(seeds), batch):
                    chunk = seeds[lo:lo + batch]
                    cond = None if model.cond_fn is None else model.cond_fn(chunk)
                    np.asarray(sampler(weights, kj.seed_keys(chunk), cond))

            programs = {"generate": generate, "sample_only": sample_only}
            if name == "unet":
                classifier_features(np.zeros((1, 8, 8), np.float32))  # fits the classifier once, untimed
                programs["generate_features"] = lambda g=generate: g(features=FEATURES)
            times = suite.compare(programs)
            extra = {} if "generate_features" not in times else {
                "features_ratio": ratio(times["generate"], times["generate_features"])}
            rows.append(row("11_generate", {"model": name, "seeds": n, "batch": batch}, times,
                            throughput_ratio=ratio(times["sample_only"], times["generate"]),
                            samples_per_s=n / times["generate"].median, **extra))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows
