"""The digits example: a class-conditional EDM model trained on scikit-learn's 8x8 digits.

Data: ``sklearn.datasets.load_digits()`` (1797 images, 0..16 pixels, shipped inside the
package: no download), split by ``train_test_split(X, y, test_size=0.3, random_state=0,
stratify=y)``. Only the 1257 training images are trained on; the 540 test images are held
out for the quality figures. Pixels p become ``p / 8 - 1`` in [-1, 1] for the network
(their standard deviation, 0.75, is sigma_data) and go back to 0..16 (clipped) on output.

Model: :class:`karras_jax.UNet` (16 channels, 8x8 and 4x4, 10 classes + the null class
10) under EDM preconditioning, trained with :func:`karras_jax.edm_loss` (label dropout 0.1
for classifier-free guidance), Adam and the power-function EMA; sampled with Heun on the
EDM ("karras") schedule, deterministic (s_churn = 0). ``DigitsConfig(model="dit")`` trains a
:class:`karras_jax.DiT` instead (2x2 patches, width 4 * channels, 4 blocks of 4 heads; with
``learning_rate=1e-3`` its guided accuracy is about 0.99).

Quality (:func:`evaluate`): a classifier (scikit-learn ``MLPClassifier``, one hidden layer
of 64 ReLU units) fitted on the training split scores the generated digits: the accuracy
of guided conditional samples (w = 2) against their labels, the class histogram of
unguided samples, and the Frechet distance in the classifier's hidden-layer features
between unguided samples and the test split, next to that between the training and test
splits (the floor) and that of a per-class Gaussian fit (a baseline any real model must
beat); each is :func:`karras_jax.frechet_distance` of two :class:`karras_jax.FeatureStats`,
the one code path that computes every Frechet distance. "Unguided" is EDM2's sense for a
class-conditional model: conditional samples without guidance (w = 1), classes balanced; the
unconditional model (the null class, ``sample-digits --unconditional``) is the weaker one,
trained on the 10% of dropped labels.

Post-hoc EMA: ``DigitsConfig(ema_profiles=(0.05, 0.1))`` with ``train_digits(...,
snapshot_every=50)`` snapshots EDM2's two EMA profiles; :func:`sweep_ema` rebuilds the EMA of
other widths from them and plots their Frechet distances (``docs/digits/ema_sweep.png``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from karras_jax._chunks import padded_chunks
from karras_jax._files import atomic_write, check_writable_folder, write_json
from karras_jax._validation import check_count
from karras_jax.config import KarrasVeConfig
from karras_jax.generation import GenerateModel
from karras_jax.generation.stats import FeatureStats, frechet_distance
from karras_jax.models import DiT, Guidance, UNet, classifier_free_guidance, precondition
from karras_jax.sampler import make_sampler
from karras_jax.state import set_timesteps
from karras_jax.training import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    TrainState,
    edm_loss,
    ema_gamma,
    fit,
    list_ema_snapshots,
    load_model_recipe,
    load_params,
    make_train_step,
    reconstruct_ema_from_folder,
)
from karras_jax.training._checks import check_real
from karras_jax.training.ema import check_sigma_rels

__all__ = [
    "DigitsConfig",
    "classifier_features",
    "evaluate",
    "generate_model",
    "load_model",
    "load_split",
    "sample_digits",
    "sweep_ema",
    "train_digits",
]

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
IMAGE_SHAPE = (8, 8, 1)
PIXEL_MAX = 16.0
# the function a digits folder's model.json names: `karras-jax generate --model DIR` calls it
RECIPE = "karras_jax.examples.digits:generate_model"
MODELS = ("unet", "dit")


@dataclass(frozen=True)
class DigitsConfig:
    """Every setting of a digits run (stored in its checkpoint; a resume must match it).

    Checked when constructed: counts are ints (``seed`` and ``warmup_steps`` >= 0, the others
    >= 1), rates finite and in range, ``model`` one of ``"unet"``, ``"dit"``; a ``ValueError``
    / ``TypeError`` names the field. ``channels`` is the UNet's channels, a fourth of the
    DiT's width.
    """

    steps: int = 2400
    batch: int = 64
    seed: int = 0
    channels: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    sigma_data: float = 0.75
    cond_drop_prob: float = 0.1
    ema_sigma_rel: float = 0.05
    sample_steps: int = 12
    guidance: float = 2.0
    model: str = "unet"
    ema_profiles: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}.")
        for name in ("steps", "batch", "channels", "sample_steps"):
            check_count(name, getattr(self, name))
        for name in ("seed", "warmup_steps"):
            check_count(name, getattr(self, name), minimum=0)
        check_real("learning_rate", self.learning_rate, "> 0", lambda v: v > 0)
        check_real("sigma_data", self.sigma_data, "> 0", lambda v: v > 0)
        check_real("cond_drop_prob", self.cond_drop_prob, "in [0, 1]", lambda v: (v >= 0) & (v <= 1))
        check_real("guidance", self.guidance, ">= 0", lambda v: v >= 0)
        try:
            ema_gamma(self.ema_sigma_rel)
        except (TypeError, ValueError) as err:  # named as this config's field
            raise type(err)(f"ema_{err}") from None
        # a tuple (a JSON list comes back as one): the config is hashed, and compared on resume
        object.__setattr__(self, "ema_profiles", check_sigma_rels("ema_profiles", self.ema_profiles))

    def module(self) -> UNet | DiT:
        """The network F."""
        if self.model == "dit":
            return DiT(patch_size=2, width=4 * self.channels, depth=4, num_heads=4, num_classes=NUM_CLASSES)
        return UNet(channels=self.channels, channel_mult=(1, 2), num_res_blocks=1, num_classes=NUM_CLASSES)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DigitsConfig:
        """The config saved in a checkpoint's metadata."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def settings(self) -> dict[str, Any]:
        """The fields as saved with a run (``model`` only when not the UNet, ``ema_profiles`` if any).

        Folders written before there was a choice of model or of EMA profiles then still resume.
        """
        values = asdict(self)
        if values["model"] == "unet":
            del values["model"]
        if not values["ema_profiles"]:
            del values["ema_profiles"]
        return values


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: (N, 8, 8) float32 pixels 0..16 and int64 labels.

    Raises:
      ImportError: scikit-learn is not installed (``pip install "karras-jax[digits]"``).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError('the digits example needs scikit-learn: pip install "karras-jax[digits]"') from err
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    shape = (-1, 8, 8)
    return (x_train.reshape(shape).astype(np.float32), y_train.astype(np.int64),
            x_test.reshape(shape).astype(np.float32), y_test.astype(np.int64))


def to_model(pixels: np.ndarray) -> np.ndarray:
    """0..16 pixels (N, 8, 8) to network inputs (N, 8, 8, 1) in [-1, 1]."""
    return (np.asarray(pixels, np.float32) / (PIXEL_MAX / 2) - 1.0)[..., None]


def to_pixels(x: Any) -> np.ndarray:
    """Network outputs (N, 8, 8, 1) to 0..16 pixels (N, 8, 8) float32, clipped."""
    return np.clip((np.asarray(x, np.float32)[..., 0] + 1.0) * (PIXEL_MAX / 2), 0.0, PIXEL_MAX)


@functools.lru_cache(maxsize=8)
def denoiser(cfg: DigitsConfig) -> Any:
    """The EDM-preconditioned network of a config: ``apply_fn(params, x, sigma, labels)``.

    One function per config (cached), so samplers compiled for it are reused.
    """
    module = cfg.module()
    return precondition(lambda p, x_in, c_noise, labels: module.apply(p, x_in, c_noise, labels), "edm",
                        sigma_data=cfg.sigma_data)


def generate_model(**settings: Any) -> GenerateModel:
    """The digits model for ``kj.generate``, built from a :class:`DigitsConfig`'s fields.

    What a train-digits folder's ``model.json`` names: its ``params`` are the weights' shapes
    only (nothing is initialised or compiled); ``generate --model DIR`` fills in the folder's
    EMA weights. Seed s is class ``s % 10``; samples are written as 0..16 pixels (8, 8).
    """
    cfg = DigitsConfig.from_dict(settings)
    return GenerateModel(
        apply_fn=denoiser(cfg), params=jax.eval_shape(lambda: _init_params(cfg)), sample_shape=IMAGE_SHAPE,
        config=KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0),
        schedule="karras", steps=cfg.sample_steps,
        cond_fn=lambda seeds: jnp.asarray(np.asarray(seeds) % NUM_CLASSES, jnp.int32), null_cond=NULL_CLASS,
        postprocess=to_pixels, image_range=(0.0, PIXEL_MAX), preprocess=to_model)


def _init_params(cfg: DigitsConfig) -> Any:
    labels = jnp.zeros((1,), jnp.int32)
    # jitted: initialised op by op, XLA compiles one small program per parameter shape;
    # unboxed: a DiT's kernels come in logical-axis boxes, the checkpoints hold plain arrays
    return nn.unbox(jax.jit(cfg.module().init)(jax.random.key(cfg.seed), jnp.zeros((1, *IMAGE_SHAPE)),
                                              jnp.zeros(()), labels))


def _optimizer(cfg: DigitsConfig) -> optax.GradientTransformation:
    warmup = min(cfg.warmup_steps, cfg.steps // 2)  # a short run keeps half its steps for the decay
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(cfg.steps, warmup + 1),
                                                  end_value=cfg.learning_rate / 20)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _initial_state(cfg: DigitsConfig) -> TrainState:
    return TrainState.create(_init_params(cfg), _optimizer(cfg), ema_profiles=cfg.ema_profiles)


def _state_template(cfg: DigitsConfig) -> TrainState:
    """The train state's structure, shapes and dtypes only: nothing is computed or compiled."""
    return jax.eval_shape(lambda: _initial_state(cfg))


@functools.lru_cache(maxsize=8)
def _sampler(cfg: DigitsConfig, guided: bool) -> Any:
    """The compiled sampler of a config, plain or guided (cached: one compilation per process)."""
    config = KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0)
    state = set_timesteps(config, cfg.sample_steps, "karras")
    apply_fn = denoiser(cfg)
    if guided:
        apply_fn = classifier_free_guidance(apply_fn, NULL_CLASS)
    return make_sampler(apply_fn, state, config, IMAGE_SHAPE)


def train_digits(out: str | Path, cfg: DigitsConfig = DigitsConfig(), *, progress: bool = True,
                 checkpoint_every: int = 200, snapshot_every: int | None = None) -> Any:
    """Trains (or resumes training) into ``out``; returns the :class:`karras_jax.TrainingRun`.

    ``out`` is created if missing; it and ``checkpoint_every`` are checked before anything is
    loaded or compiled. With ``cfg.ema_profiles`` and ``snapshot_every`` the run writes EMA
    snapshots to ``out/snapshots/`` for post-hoc EMA (:func:`sweep_ema`).

    Raises:
      OSError: ``out`` is a file, lies below one, or cannot be written.
      ValueError: ``checkpoint_every`` is not an int >= 1, ``cfg.batch`` exceeds the training
        images, or ``out`` holds a checkpoint of other settings or past ``cfg.steps``
        (see :func:`karras_jax.fit`).
    """
    checkpoint_every = check_count("checkpoint_every", checkpoint_every)
    out = check_writable_folder(out)
    x_train, y_train, _, _ = load_split()
    images, labels = jnp.asarray(to_model(x_train)), jnp.asarray(y_train, jnp.int32)
    n = images.shape[0]
    per_epoch = n // cfg.batch
    if per_epoch < 1:
        raise ValueError(f"batch must be at most the {n} training images, got {cfg.batch}.")
    apply_fn = denoiser(cfg)

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array], key: jax.Array) -> jax.Array:
        x, y = batch
        return edm_loss(apply_fn, params, x, key, y, sigma_data=cfg.sigma_data,
                        cond_drop_prob=cfg.cond_drop_prob, null_cond=NULL_CLASS)

    step_fn = make_train_step(loss_fn, _optimizer(cfg), ema_sigma_rel=cfg.ema_sigma_rel)
    orders: dict[int, np.ndarray] = {}

    def batch_at(step: int) -> tuple[jax.Array, jax.Array]:
        # epoch e visits the images in permutation(seed, e), the last partial batch dropped
        epoch, offset = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        index = orders[epoch][offset * cfg.batch:(offset + 1) * cfg.batch]
        return images[index], labels[index]

    # resuming reads the weights into the state's shapes: no need to initialise (and compile) anything
    resuming = (out / CHECKPOINT_FILE).exists()
    start = _state_template(cfg) if resuming else _initial_state(cfg)
    return fit(step_fn, start, batch_at, jax.random.key(cfg.seed), cfg.steps, folder=out,
               checkpoint_every=checkpoint_every, metadata={"example": "digits", **cfg.settings()},
               batch_size=cfg.batch, progress=progress, model=RECIPE, model_args=cfg.settings(),
               snapshot_every=snapshot_every)


def load_model(folder: str | Path) -> tuple[DigitsConfig, Any]:
    """``(config, ema_params)`` of a digits checkpoint folder (its ``model.json`` and checkpoint).

    Raises:
      FileNotFoundError: no checkpoint in ``folder``.
      ValueError: the checkpoint is not a digits model, or its files are damaged (named).
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {folder} (expected {path}); train one with "
                                "`karras-jax train-digits --out DIR`.")
    try:
        function, settings = load_model_recipe(folder)
    except FileNotFoundError:
        raise ValueError(f"{path} is not a digits checkpoint: {folder} has no {MODEL_FILE} naming "
                         f"{RECIPE}.") from None
    if function != RECIPE:
        raise ValueError(f"{path} is not a digits checkpoint: its {MODEL_FILE} names {function}, "
                         f"not {RECIPE}.")
    try:
        cfg = DigitsConfig.from_dict(settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{Path(folder) / MODEL_FILE} holds settings that are not a digits config: "
                         f"{err}") from None
    return cfg, load_params(folder, jax.eval_shape(lambda: _init_params(cfg)))


def sample_digits(cfg: DigitsConfig, params: Any, n: int, *, labels: np.ndarray | None = None,
                  guidance: float | None = None, seed: int = 0, batch: int = 1000) -> np.ndarray:
    """``(n, 8, 8)`` float32 digits on the 0..16 scale.

    ``labels`` (n,) conditions each sample on a class (guided with scale ``guidance``,
    default the config's); None samples the unconditional model (the null class). Sample i
    uses key ``jax.random.fold_in(jax.random.key(seed), i)``, so it does not depend on ``batch``.

    Raises:
      ValueError: ``n`` / ``batch`` not ints >= 1, ``seed`` not an int >= 0, ``labels`` not
        ``(n,)`` integer classes in 0..9, ``guidance`` not finite and >= 0.
      TypeError: ``guidance`` is not a real number.
    """
    n, batch, seed = check_count("n", n), check_count("batch", batch), check_count("seed", seed, minimum=0)
    if labels is not None:
        given = np.asarray(labels)
        if (given.shape != (n,) or given.dtype.kind not in "iu" or np.any(given < 0)
                or np.any(given >= NUM_CLASSES)):
            raise ValueError(f"labels must be ({n},) integer classes in 0..{NUM_CLASSES - 1}, got "
                             f"{given.dtype}{list(given.shape)}"
                             + (f" with values {given.min()}..{given.max()}." if given.size else "."))
    if guidance is not None:
        check_real("guidance", guidance, ">= 0", lambda v: v >= 0)
    scale = cfg.guidance if guidance is None else float(guidance)
    if labels is None or scale == 1.0:  # w = 1 is the conditional denoiser: half the network rows
        sampler = _sampler(cfg, guided=False)
        weights: Any = params
        cond = np.full((n,), NULL_CLASS, np.int32) if labels is None else np.asarray(labels, np.int32)
    else:
        sampler = _sampler(cfg, guided=True)
        weights = (params, Guidance(scale=scale))
        cond = np.asarray(labels, np.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))
    out = [to_pixels(sampler(weights, keys[index], jnp.asarray(cond[index])))[:count]
           for index, count in padded_chunks(n, min(batch, n))]
    return np.concatenate(out)


def _classifier(x_train: np.ndarray, y_train: np.ndarray) -> Any:
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0)
    return clf.fit(x_train.reshape(len(x_train), -1) / PIXEL_MAX, y_train)


def _hidden(clf: Any, pixels: np.ndarray) -> np.ndarray:
    """The classifier's hidden-layer (ReLU) features of 0..16 ``pixels`` (N, 8, 8), float64."""
    flat = np.asarray(pixels, np.float64).reshape(len(pixels), -1) / PIXEL_MAX
    return np.maximum(flat @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def _feature_stats(clf: Any, pixels: np.ndarray) -> FeatureStats:
    """The statistics of the classifier's hidden-layer (ReLU) features of ``pixels``."""
    features = _hidden(clf, pixels)
    return FeatureStats.empty(features.shape[1]).update(features)


@functools.lru_cache(maxsize=1)
def _fitted_classifier() -> Any:
    x_train, y_train, _, _ = load_split()
    return _classifier(x_train, y_train)


def classifier_features(pixels: Any) -> np.ndarray:
    """The features of the example's Frechet distances: (N, 64) float32 for 0..16 pixels (N, 8, 8).

    The hidden layer of the classifier :func:`evaluate` fits on the training split (fitted
    once per process, a few seconds), for ``karras-jax generate --model DIR --features
    karras_jax.examples.digits:classifier_features``; ``karras-jax fd`` then compares its
    ``stats.npz`` with any other set's.
    """
    return _hidden(_fitted_classifier(), pixels).astype(np.float32)


def gaussian_baseline(x_train: np.ndarray, y_train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` digits from a per-class Gaussian fit (class frequencies as in training), clipped to 0..16."""
    rng = np.random.default_rng(seed)
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    classes = rng.choice(y_train, size=n)
    out = np.empty((n, flat.shape[1]))
    for c in range(NUM_CLASSES):
        rows = classes == c
        members = flat[y_train == c]
        out[rows] = rng.multivariate_normal(members.mean(0), np.cov(members, rowvar=False), rows.sum())
    return np.clip(out, 0, PIXEL_MAX).reshape(n, 8, 8).astype(np.float32)


def balanced_labels(n: int) -> np.ndarray:
    """``(n,)`` int64 classes 0, 1, ..., 9, 0, 1, ...: balanced over the 10 classes."""
    return np.arange(n, dtype=np.int64) % NUM_CLASSES


def evaluate(guided: np.ndarray, guided_labels: np.ndarray, unguided: np.ndarray,
             unguided_labels: np.ndarray) -> dict[str, Any]:
    """The quality figures of the module docstring, as a JSON-ready dict."""
    x_train, y_train, x_test, y_test = load_split()
    clf = _classifier(x_train, y_train)
    flat = lambda a: np.asarray(a).reshape(len(a), -1) / PIXEL_MAX  # noqa: E731
    test_stats = _feature_stats(clf, x_test)
    floor = frechet_distance(_feature_stats(clf, x_train), test_stats)
    baseline = gaussian_baseline(x_train, y_train, len(unguided))
    return {
        "classifier_test_accuracy": float(clf.score(flat(x_test), y_test)),
        "guided_accuracy": float(np.mean(clf.predict(flat(guided)) == guided_labels)),
        "unguided_accuracy": float(np.mean(clf.predict(flat(unguided)) == unguided_labels)),
        "unguided_class_histogram": np.bincount(clf.predict(flat(unguided)), minlength=NUM_CLASSES).tolist(),
        "frechet_unguided_vs_test": frechet_distance(_feature_stats(clf, unguided), test_stats),
        "frechet_train_vs_test_floor": floor,
        "frechet_gaussian_baseline_vs_test": frechet_distance(_feature_stats(clf, baseline), test_stats),
        "guided_samples": len(guided),
        "unguided_samples": len(unguided),
    }


def _png(path: Path, fig: Any) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_grid(path: Path, pixels: np.ndarray, rows: int, title: str) -> None:
    """A ``rows`` x (len / rows) grid of digits as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(pixels) // rows
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4))
    for ax, img in zip(np.ravel(axes), pixels, strict=False):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=PIXEL_MAX)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    _png(path, fig)
    plt.close(fig)


def plot_losses(path: Path, losses: np.ndarray) -> None:
    """The per-step loss and its 50-step running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.5, alpha=0.4, label="batch loss")
    window = min(50, len(losses))
    ax.plot(np.arange(window - 1, len(losses)), np.convolve(losses, np.ones(window) / window, "valid"),
            label=f"{window}-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    _png(path, fig)
    plt.close(fig)


def run_example(out: str | Path, cfg: DigitsConfig = DigitsConfig(), *, guided: int = 500,
                unguided: int = 1000, progress: bool = True, checkpoint_every: int = 200) -> dict[str, Any]:
    """``karras-jax train-digits``: train, sample, score, write the figures; returns the metrics.

    ``guided`` and ``unguided`` (sample counts, each >= 10: one row per class in the figures)
    are checked before training, with everything :func:`train_digits` checks.
    """
    guided = check_count("guided", guided, minimum=NUM_CLASSES)
    unguided = check_count("unguided", unguided, minimum=NUM_CLASSES)
    out = Path(out)
    began = time.perf_counter()
    run = train_digits(out, cfg, progress=progress, checkpoint_every=checkpoint_every)
    trained = time.perf_counter()
    params = run.state.ema
    labels, free_labels = balanced_labels(guided), balanced_labels(unguided)
    with_w = sample_digits(cfg, params, guided, labels=labels, seed=cfg.seed)
    free = sample_digits(cfg, params, unguided, labels=free_labels, guidance=1.0, seed=cfg.seed + 1)
    sampled = time.perf_counter()
    metrics = evaluate(with_w, labels, free, free_labels)
    metrics.update(train_seconds=trained - began, sample_seconds=sampled - trained,
                   total_seconds=time.perf_counter() - began, steps=cfg.steps, batch=cfg.batch,
                   final_loss_50=float(np.nanmean(run.losses[-50:])), resumed_from=run.resumed_from)
    metrics["frechet_ratio_to_floor"] = (metrics["frechet_unguided_vs_test"]
                                         / metrics["frechet_train_vs_test_floor"])
    def rows(pixels: np.ndarray, classes: np.ndarray) -> np.ndarray:  # a row of up to 10 per class
        per_class = min(10, len(classes) // NUM_CLASSES)  # balanced labels: every class has that many
        return np.concatenate([pixels[classes == c][:per_class] for c in range(NUM_CLASSES)])

    plot_grid(out / "guided.png", rows(with_w, labels), NUM_CLASSES,
              f"guided (w = {cfg.guidance}), one row per class")
    plot_grid(out / "unguided.png", rows(free, free_labels), NUM_CLASSES,
              "unguided (w = 1), one row per class")
    plot_losses(out / "loss.png", run.losses)
    write_json(out / "metrics.json", metrics)
    return metrics


def sweep_ema(folder: str | Path, sigma_rels: Any = (0.02, 0.035, 0.05, 0.07, 0.1, 0.14, 0.2), *,
              n: int = 1000, png: str | Path | None = None) -> dict[str, Any]:
    """Post-hoc EMA on a digits run: the Frechet distance of the EMA of each width in ``sigma_rels``.

    Each width is rebuilt from the run's EMA snapshots at the last one
    (:func:`karras_jax.reconstruct_ema_from_folder`; train with
    ``DigitsConfig(ema_profiles=(0.05, 0.1))`` and ``train_digits(..., snapshot_every=N)``),
    samples ``n`` unguided digits (w = 1, classes balanced, the seeds of :func:`run_example`'s
    unguided samples) and is scored as in :func:`evaluate`: the Frechet distance to the test
    split in the classifier's features. ``png`` gets the plot of distance against sigma_rel,
    with the floor (training vs test split).

    Returns:
      ``{"sigma_rel": [...], "frechet_vs_test": [...], "frechet_train_vs_test_floor": float,
      "step": int, "snapshots": int, "n": n}`` (JSON-ready).

    Raises:
      FileNotFoundError: ``folder`` has no checkpoint or no snapshots.
      ValueError: not a digits folder, ``sigma_rels`` not distinct widths in (0, 0.2887), ``n``
        not an int >= 10 (a balanced set of classes), a damaged snapshot (named).
    """
    n = check_count("n", n, minimum=NUM_CLASSES)
    sigma_rels = check_sigma_rels("sigma_rels", sigma_rels)
    cfg, _ = load_model(folder)
    steps = [step for step, _ in list_ema_snapshots(folder)]
    template = jax.eval_shape(lambda: _init_params(cfg))
    rebuilt = reconstruct_ema_from_folder(folder, sigma_rels, target=template)
    x_train, y_train, x_test, _ = load_split()
    clf = _classifier(x_train, y_train)
    test_stats = _feature_stats(clf, x_test)
    labels = balanced_labels(n)
    distances = []
    for params in rebuilt.values():
        pixels = sample_digits(cfg, params, n, labels=labels, guidance=1.0, seed=cfg.seed + 1)
        distances.append(frechet_distance(_feature_stats(clf, pixels), test_stats))
    result = {"sigma_rel": list(sigma_rels), "frechet_vs_test": distances,
              "frechet_train_vs_test_floor": frechet_distance(_feature_stats(clf, x_train), test_stats),
              "tracked": list(cfg.ema_profiles), "step": steps[-1], "snapshots": len(steps), "n": n}
    if png is not None:
        plot_sweep(Path(png), result)
    return result


def plot_sweep(path: Path, result: dict[str, Any]) -> None:
    """:func:`sweep_ema`'s Frechet distance against the EMA width (log scale), with the floor, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = result["sigma_rel"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(widths, result["frechet_vs_test"], "o-", label=f"unguided (w = 1), {result['n']} samples")
    ax.axhline(result["frechet_train_vs_test_floor"], color="gray", ls="--", label="floor: train vs test")
    ax.set_xscale("log")
    ax.set_xticks(widths, [f"{s:g}" for s in widths])
    ax.minorticks_off()
    ax.set_xlabel("EMA width sigma_rel (post-hoc)")
    ax.set_ylabel("Frechet distance to the test split")
    tracked = ", ".join(f"{s:g}" for s in result["tracked"])
    ax.set_title(f"one run: {result['snapshots']} snapshots of ({tracked}), rebuilt at step {result['step']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _png(path, fig)
    plt.close(fig)
