"""The pictures of docs/editing.md: inpainted digits and an image-to-image strength sweep.

Run on a folder that ``karras-jax train-digits`` wrote (155 s on 2 CPU cores)::

    karras-jax train-digits --out /tmp/digits --no-eval
    python docs/digits/editing_figures.py --model /tmp/digits

It samples held-out test digits (the example's split of scikit-learn's digits, never trained
on) with the trained UNet's EMA weights, Heun on the EDM schedule, s_churn = 0, and writes
two PNGs next to this file (or to ``--out``):

- ``inpainting.png``: per row a test digit, the part kept (the hidden pixels tinted), and
  three completions from three seeds by ``kj.sample(..., mask=, known=)``, with the
  unconditional model (the null class): the kept pixels alone decide what digit it becomes.
- ``strength.png``: two test digits edited by ``kj.sample(..., x_init=image, strength=s)`` for
  s = 0, 0.25, 0.5, 0.75 and 1: per digit a row with the unconditional model and a row
  guided (w = 2) towards another class.

Nothing runs on import; the figures need matplotlib and scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import karras_jax as kj
from karras_jax.examples.digits import (
    NULL_CLASS,
    PIXEL_MAX,
    denoiser,
    load_model,
    load_split,
    to_model,
    to_pixels,
)

HERE = Path(__file__).resolve().parent
SEEDS = 3
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# (test digit's class, the mask's name): two digits per mask
INPAINT_ROWS = ((0, "left half"), (3, "left half"), (2, "bottom half"), (7, "bottom half"),
                (5, "centre square"), (9, "centre square"))
# (test digit's class, the class the guided row steers it to)
STRENGTH_ROWS = ((3, 8), (7, 1))
HIDDEN_TINT = np.array([0.98, 0.80, 0.80])  # the hidden pixels in the masked input


def keep_mask(name: str) -> np.ndarray:
    """(8, 8, 1) float32: 1 where the pixel is kept, 0 where it is hidden (to be inpainted)."""
    mask = np.ones((8, 8, 1), np.float32)
    if name == "left half":
        mask[:, :4] = 0
    elif name == "bottom half":
        mask[4:] = 0
    elif name == "centre square":
        mask[2:6, 2:6] = 0
    else:
        raise ValueError(f"unknown mask {name!r}.")
    return mask


def first_of_class(x: np.ndarray, y: np.ndarray, label: int) -> np.ndarray:
    """The first image of class ``label`` in ``(x, y)``."""
    return x[np.flatnonzero(y == label)[0]]


def gray(pixels: np.ndarray) -> np.ndarray:
    """0..16 pixels (8, 8) as an RGB image, ink dark on white (matplotlib's ``gray_r``)."""
    level = 1.0 - np.clip(pixels, 0.0, PIXEL_MAX) / PIXEL_MAX
    return np.repeat(level[..., None], 3, axis=-1)


def masked(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked input: the kept pixels in gray, the hidden ones tinted."""
    kept = mask[..., 0][..., None]
    return kept * gray(pixels) + (1.0 - kept) * HIDDEN_TINT


def inpaint(denoise: Any, state: kj.KarrasVeState, images: np.ndarray, masks: np.ndarray,
            seed: int) -> np.ndarray:
    """(R, SEEDS, 8, 8) pixels: SEEDS completions of each of the R images (0..16) under its mask."""
    rows = len(images)
    known = np.repeat(to_model(images), SEEDS, axis=0)  # (R * SEEDS, 8, 8, 1), row-major
    mask = np.repeat(masks, SEEDS, axis=0)
    keys = jax.random.split(jax.random.key(seed), rows * SEEDS)
    cond = jnp.full((rows * SEEDS,), NULL_CLASS, jnp.int32)
    out = kj.sample(denoise, keys, state, None, (8, 8, 1), cond, mask=jnp.asarray(mask),
                    known=jnp.asarray(known))
    return to_pixels(out).reshape(rows, SEEDS, 8, 8)


def sweep(denoise: Any, state: kj.KarrasVeState, images: np.ndarray, cond: np.ndarray,
          seed: int) -> np.ndarray:
    """(R, len(STRENGTHS), 8, 8) pixels: each image edited at each strength, one key per row."""
    keys = jax.random.split(jax.random.key(seed), len(images))  # the same noise along a row
    x_init = jnp.asarray(to_model(images))
    cond = jnp.asarray(cond, jnp.int32)
    out = [to_pixels(kj.sample(denoise, keys, state, None, (8, 8, 1), cond, x_init=x_init, strength=s))
           for s in STRENGTHS]
    return np.stack(out, axis=1)


def save(fig: Any, path: Path) -> None:
    """The figure as a PNG at ``path``, written to a temporary file in its folder, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def grid(path: Path, cells: list[list[np.ndarray]], col_titles: list[str], row_titles: list[str],
         title: str) -> None:
    """A grid of RGB 8x8 images with column and row labels, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(cells), len(cells[0])
    fig, axes = plt.subplots(rows, cols, figsize=(0.75 * cols + 1.0, 0.75 * rows + 0.55), squeeze=False)
    for r, line in enumerate(cells):
        for c, image in enumerate(line):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=7)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    save(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parses the flags, samples both figures and writes them; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a train-digits output folder")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs (default: this file's)")
    parser.add_argument("--steps", type=int, default=32, help="sampling steps N (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error(f"argument --steps: must be an int >= 4, got {args.steps}")
    if not args.out.is_dir():
        parser.error(f"argument --out: not a folder: {args.out}")
    cfg, params = load_model(args.model)
    _, _, x_test, y_test = load_split()
    config = kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
    state = kj.set_timesteps(config, args.steps, "karras")
    apply_fn = denoiser(cfg)
    plain = jax.jit(lambda x, sigma, cond: apply_fn(params, x, sigma, cond))
    guided_fn = kj.classifier_free_guidance(apply_fn, NULL_CLASS)
    weights = (params, kj.Guidance(scale=cfg.guidance))
    guided = jax.jit(lambda x, sigma, cond: guided_fn(weights, x, sigma, cond))

    images = np.stack([first_of_class(x_test, y_test, label) for label, _ in INPAINT_ROWS])
    masks = np.stack([keep_mask(name) for _, name in INPAINT_ROWS])
    filled = inpaint(plain, state, images, masks, args.seed)
    cells = [[gray(image), masked(image, mask), *(gray(f) for f in fills)]
             for image, mask, fills in zip(images, masks, filled, strict=True)]
    grid(args.out / "inpainting.png", cells, ["test digit", "kept", *(f"seed {s}" for s in range(SEEDS))],
         [name.replace(" ", "\n") for _, name in INPAINT_ROWS],
         f"inpainting (mask=, known=), unconditional, Heun N={args.steps}")

    sources = np.stack([first_of_class(x_test, y_test, label) for label, _ in STRENGTH_ROWS])
    free = sweep(plain, state, sources, np.full((len(sources),), NULL_CLASS), args.seed)
    steered = sweep(guided, state, sources, np.array([target for _, target in STRENGTH_ROWS]), args.seed)
    cells, names = [], []
    for (label, target), a, b in zip(STRENGTH_ROWS, free, steered, strict=True):
        cells += [[gray(p) for p in a], [gray(p) for p in b]]
        names += [f"{label},\nno class", f"{label} -> {target},\nw = {cfg.guidance:g}"]
    grid(args.out / "strength.png", cells, [f"strength {s:g}" for s in STRENGTHS], names,
         f"image-to-image (x_init=, strength=), Heun N={args.steps}")
    print(f"wrote {args.out / 'inpainting.png'} and {args.out / 'strength.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
