"""The background shard writer and its PNG files (encoded by Pillow, written atomically)."""

import numpy as np
import pytest

from karras_jax.generation._writer import ShardWriter, shard_bytes, write_png

Image = pytest.importorskip("PIL.Image", reason="PNG files need Pillow (the png extra)")


def test_a_png_is_an_8_bit_grayscale_image_of_the_scaled_clipped_pixels(tmp_path):
    image = np.asarray([[0.0, 1.0], [0.5, 2.0], [-1.0, 0.25]])  # 2.0 clips to 255, -1.0 to 0
    path = write_png(tmp_path / "a.png", image, 0.0, 1.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "L", (2, 3))
        assert np.asarray(png).tolist() == [[0, 255], [128, 255], [0, 64]]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_one_channel_image_is_grayscale_and_three_channels_are_rgb(tmp_path):
    rgb = np.random.default_rng(0).uniform(-1, 1, size=(3, 5, 3))
    with Image.open(write_png(tmp_path / "rgb.png", rgb, -1.0, 1.0)) as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), np.round((rgb + 1) / 2 * 255).astype(np.uint8))
    with Image.open(write_png(tmp_path / "gray.png", rgb[..., :1], -1.0, 1.0)) as png:
        assert png.mode == "L" and png.size == (5, 3)


def test_a_failed_png_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_png(tmp_path / "a.png", np.zeros((2, 2)), 0.0, 1.0)
    before = path.read_bytes()

    def broken_save(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="a.png"):
        write_png(path, np.ones((2, 2)), 0.0, 1.0)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


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


def test_the_writer_puts_one_png_per_seed_in_edms_folder_layout(tmp_path):
    writer = ShardWriter(tmp_path, lambda name, sha: None, png_range=(0.0, 1.0))
    writer.put("shard-000000.npz", np.asarray([999, 1000, 2001]), np.full((3, 4, 4), 0.5, np.float32))
    writer.close()
    pngs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert pngs == ["000000/000999.png", "001000/001000.png", "002000/002001.png"]
    with Image.open(tmp_path / "001000" / "001000.png") as png:
        assert png.size == (4, 4) and np.all(np.asarray(png) == 128)


def test_a_writer_error_reaches_the_caller_and_earlier_shards_stay(tmp_path):
    writer = ShardWriter(tmp_path, lambda name, sha: None)
    writer.put("shard-000000.npz", np.arange(2), np.zeros((2, 1), np.float32))
    writer.put("missing-folder/shard-000001.npz", np.arange(2), np.zeros((2, 1), np.float32))
    with pytest.raises(OSError, match="shard-000001"):
        writer.close()
    assert (tmp_path / "shard-000000.npz").exists() and not list(tmp_path.glob(".*.tmp"))
