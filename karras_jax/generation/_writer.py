"""Shards to disk on a background thread: the device never waits for the disk.

Each shard is an ``.npz`` (``seeds`` int64, ``samples`` and/or ``features``) written atomically
(temporary file in the same folder, fsync, rename); optionally one PNG per image sample in EDM's layout,
``DIR/{seed - seed % 1000:06d}/{seed:06d}.png``. The queue is bounded, so a disk slower than
the device holds the sampler back by at most ``depth`` shards' worth of memory instead of
letting them pile up; an error on the writer thread is raised in the caller at the next
:meth:`ShardWriter.put` or at :meth:`ShardWriter.close`.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from karras_jax._files import atomic_write

__all__ = ["ShardWriter", "shard_bytes", "write_png"]

PNG_HINT = 'PNG files need Pillow: pip install "karras-jax[png]"'



def shard_bytes(seeds: np.ndarray, samples: np.ndarray | None, features: np.ndarray | None = None) -> bytes:
    """The ``.npz`` file of one shard (uncompressed; each member has its zip CRC-32).

    ``samples`` or ``features`` None: that member is left out.
    """
    buffer = io.BytesIO()
    members = {name: value for name, value in (("samples", samples), ("features", features))
               if value is not None}
    np.savez(buffer, seeds=np.asarray(seeds, np.int64), **members)
    return buffer.getvalue()


def write_png(path: Path, image: np.ndarray, lo: float, hi: float) -> Path:
    """Writes ``image`` scaled from [lo, hi] as an 8-bit PNG, atomically (Pillow encodes it).

    ``(H, W)`` and ``(H, W, 1)`` images are grayscale, ``(H, W, 3)`` RGB; values outside
    [lo, hi] are clipped.

    Raises:
      ImportError: Pillow is not installed.
      OSError: the write failed; a previous file is intact.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(PNG_HINT) from err
    scaled = (np.asarray(image, np.float64) - lo) / (hi - lo) * 255
    pixels = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    picture = Image.fromarray(pixels)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


class ShardWriter:
    """Writes shards from a bounded queue on one background thread.

    Args:
      folder: The output folder.
      on_written: ``on_written(name, sha256)`` called on the writer thread after each shard
        is in place (the job records its checksum).
      png_range: ``(lo, hi)`` to also write one PNG per sample; None for none.
      depth: Shards that may wait in the queue.
    """

    def __init__(self, folder: Path, on_written: Callable[[str, str], None],
                 png_range: tuple[float, float] | None = None, depth: int = 2) -> None:
        self.folder, self.on_written, self.png_range = Path(folder), on_written, png_range
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="karras_jax-shard-writer", daemon=True)
        self._thread.start()

    def put(self, name: str, seeds: np.ndarray, samples: np.ndarray, features: np.ndarray | None = None,
            *, keep_samples: bool = True) -> None:
        """Queues a shard (blocks while the queue is full); raises a writer error, if any.

        ``features``: also written; ``keep_samples=False``: the samples only make the PNGs.
        """
        self._raise()
        self._queue.put((name, seeds, samples, features, keep_samples))

    def close(self) -> None:
        """Waits for every queued shard to be written; raises a writer error, if any."""
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: the caller stops at its next put
            name, seeds, samples, features, keep_samples = item
            try:
                if self.png_range is not None:
                    for seed, image in zip(seeds.tolist(), samples, strict=True):
                        sub = self.folder / f"{seed - seed % 1000:06d}"
                        sub.mkdir(exist_ok=True)
                        write_png(sub / f"{seed:06d}.png", image, *self.png_range)
                shard = shard_bytes(seeds, samples if keep_samples else None, features)
                atomic_write(self.folder / name, lambda f, d=shard: f.write(d))
                self.on_written(name, hashlib.sha256(shard).hexdigest())
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self._error = err
