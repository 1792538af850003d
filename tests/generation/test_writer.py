"""The background shard writer and the PNG encoder."""

import io
import zlib

import numpy as np
import pytest

from karras_jax.generation._writer import ShardWriter, png_bytes, shard_bytes


def test_png_is_a_valid_grayscale_image_with_the_scaled_pixels():
    image = np.asarray([[0.0, 1.0], [0.5, 2.0]])  # 2.0 clips to 255
    data = png_bytes(image, 0.0, 1.0)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height, data[24], data[25]) == (2, 2, 8, 0)  # 8-bit grayscale
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    raw = zlib.decompress(data[start:start + length])
    assert list(raw) == [0, 0, 255, 0, 128, 255]  # filter byte 0, then the row


def test_png_can_be_read_back_by_matplotlib():
    plt = pytest.importorskip("matplotlib.pyplot")
    rgb = np.random.default_rng(0).uniform(size=(3, 5, 3))
    back = plt.imread(io.BytesIO(png_bytes(rgb, 0.0, 1.0)), format="png")
    np.testing.assert_allclose(back[..., :3], np.round(rgb * 255) / 255, atol=1e-6)


def test_shards_are_written_in_the_background_and_reported(tmp_path):
    written = []
    writer = ShardWriter(tmp_path, lambda name, sha: written.append((name, len(sha))))
    for i in range(3):
        writer.put(f"shard-{i:06d}.npz", np.arange(i, i + 2), np.full((2, 3), i, np.float32))
    writer.close()
    assert written == [(f"shard-{i:06d}.npz", 64) for i in range(3)]
    with np.load(tmp_path / "shard-000002.npz") as f:
        assert f["seeds"].tolist() == [2, 3] and f["samples"].dtype == np.float32
    expected = shard_bytes(np.arange(1, 3), np.ones((2, 3), np.float32))
    assert (tmp_path / "shard-000001.npz").read_bytes() == expected


def test_a_writer_error_reaches_the_caller_and_earlier_shards_stay(tmp_path):
    writer = ShardWriter(tmp_path, lambda name, sha: None)
    writer.put("shard-000000.npz", np.arange(2), np.zeros((2, 1), np.float32))
    writer.put("missing-folder/shard-000001.npz", np.arange(2), np.zeros((2, 1), np.float32))
    with pytest.raises(OSError, match="shard-000001"):
        writer.close()
    assert (tmp_path / "shard-000000.npz").exists() and not list(tmp_path.glob(".*.tmp"))
