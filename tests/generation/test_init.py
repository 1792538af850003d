"""Image-to-image jobs: ``kj.generate(init=..., strength=...)`` and ``generate --init --strength``.

Seed s edits image ``s % M``; a job's sample is ``kj.make_sampler(..., strength=s)`` run on
that image with seed s's key, whatever the batch; the images come as arrays, ``.npz`` files
(a shard of another job) or folders of PNGs; the manifest records them, and a resume with
other images or another strength is refused.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from shard_files import read_shards

import karras_jax as kj
from karras_jax.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models

IMAGES = np.asarray([[1.0, -1.0], [0.5, 0.25], [-2.0, 3.0]], np.float32)  # M = 3 "images" of the mixture


def _direct(seeds, images, strength):
    model = kj.load_generate_model("mixture")
    state = kj.set_timesteps(model.config, model.steps, model.schedule)
    sampler = kj.make_sampler(model.apply_fn, state, model.config, (2,), strength=strength)
    seeds = np.asarray(seeds)
    return np.asarray(sampler(None, kj.seed_keys(seeds), None, images[seeds % len(images)]))


@pytest.mark.parametrize("batch", [4, 32])
def test_seed_s_edits_image_s_mod_m_as_make_sampler_does_whatever_the_batch(tmp_path, batch):
    kj.generate("mixture", "0-9", tmp_path, batch=batch, init=IMAGES, strength=0.5, progress=False)
    seeds, samples = read_shards(tmp_path)
    np.testing.assert_allclose(samples, _direct(seeds, IMAGES, 0.5), rtol=1e-5, atol=1e-6)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["strength"] == 0.5 and manifest["init"]["count"] == 3 and kj.verify(tmp_path)["ok"]


def test_strength_zero_writes_the_images_and_one_starts_from_noise(tmp_path):
    kj.generate("mixture", "0-5", tmp_path / "zero", init=IMAGES, strength=0.0, progress=False)
    np.testing.assert_array_equal(read_shards(tmp_path / "zero")[1], IMAGES[np.arange(6) % 3])
    kj.generate("mixture", "0-5", tmp_path / "one", init=IMAGES, strength=1.0, progress=False)
    kj.generate("mixture", "0-5", tmp_path / "plain", progress=False)
    np.testing.assert_array_equal(read_shards(tmp_path / "one")[1], read_shards(tmp_path / "plain")[1])


def test_a_shard_of_another_job_is_an_init_file(tmp_path):
    kj.generate("mixture", "0-7", tmp_path / "first", progress=False)
    shard = tmp_path / "first" / "shard-000000.npz"
    kj.generate("mixture", "0-7", tmp_path / "edit", init=shard, strength=0.3, progress=False)
    images = read_shards(tmp_path / "first")[1]
    np.testing.assert_allclose(read_shards(tmp_path / "edit")[1], _direct(np.arange(8), images, 0.3),
                               rtol=1e-5, atol=1e-6)


def test_a_folder_of_pngs_is_read_in_file_name_order_and_scaled_by_the_image_range(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    pixels = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 255, 51)])
    (tmp_path / "pics").mkdir()
    for name, picture in zip(("b.png", "c.png", "a.png"), pixels, strict=True):
        Image.fromarray(picture).save(tmp_path / "pics" / name)
    kj.generate("generate_models:gaussian_images", "0-2", tmp_path / "out", init=tmp_path / "pics",
                strength=0.0, progress=False)
    written = read_shards(tmp_path / "out")[1]  # a.png (51 -> -1.2), b.png (0 -> -2), c.png (255 -> 2)
    np.testing.assert_allclose(written[:, 0, 0], [-1.2, -2.0, 2.0], rtol=1e-6)
    assert written.shape == (3, 4, 4)


def test_a_resume_with_other_images_or_another_strength_is_refused(tmp_path):
    kj.generate("mixture", "0-5", tmp_path, init=IMAGES, strength=0.5, progress=False)
    with pytest.raises(ValueError, match="init"):
        kj.generate("mixture", "0-5", tmp_path, init=IMAGES + 1, strength=0.5, progress=False)
    with pytest.raises(ValueError, match="strength"):
        kj.generate("mixture", "0-5", tmp_path, init=IMAGES, strength=0.6, progress=False)
    with pytest.raises(ValueError, match="init"):
        kj.generate("mixture", "0-5", tmp_path, progress=False)
    again = kj.generate("mixture", "0-5", tmp_path, init=IMAGES.copy(), strength=0.5, progress=False)
    assert again.skipped == again.shards


@pytest.mark.parametrize("kwargs, match", [
    (dict(init=IMAGES), "both init"),
    (dict(strength=0.5), "both init"),
    (dict(init=IMAGES, strength=1.5), "strength must be a number in \\[0, 1\\]"),
    (dict(init=IMAGES[:, :1], strength=0.5), "init must hold M >= 1 samples"),
    (dict(init=np.zeros((0, 2)), strength=0.5), "init must hold M >= 1 samples"),
    (dict(init=np.asarray([[np.nan, 0.0]]), strength=0.5), "NaN"),
    (dict(init="no/such/file.npz", strength=0.5), "neither a folder"),
])
def test_bad_init_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kj.generate("mixture", "0-5", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_postprocessed_model_without_preprocess_is_refused(tmp_path):
    model = kj.load_generate_model("generate_models:gaussian_images")._replace(preprocess=None)
    with pytest.raises(ValueError, match="no preprocess"):
        kj.generate(model, "0-2", tmp_path, init=np.zeros((1, 4, 4)), strength=0.5, progress=False)


def test_the_cli_takes_init_and_strength(tmp_path, capsys):
    np.savez(tmp_path / "images.npz", samples=IMAGES)
    assert main(["generate", "--model", "mixture", "--seeds", "0-5", "--out", str(tmp_path / "out"),
                 "--init", str(tmp_path / "images.npz"), "--strength", "0.5", "--no-progress"]) == 0
    np.testing.assert_allclose(read_shards(tmp_path / "out")[1], _direct(np.arange(6), IMAGES, 0.5),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit):
        main(["generate", "--model", "mixture", "--seeds", "0-5", "--out", str(tmp_path / "x"),
              "--init", str(tmp_path / "images.npz"), "--strength", "2"])
    assert "expected a number in [0, 1]" in capsys.readouterr().err


def test_an_npy_array_is_an_init_file_and_other_files_are_refused_naming_init(tmp_path):
    np.save(tmp_path / "images.npy", IMAGES)
    kj.generate("mixture", "0-5", tmp_path / "out", init=tmp_path / "images.npy", strength=0.0,
                progress=False)
    np.testing.assert_array_equal(read_shards(tmp_path / "out")[1], IMAGES[np.arange(6) % 3])
    (tmp_path / "notes.txt").write_text("not an array")
    with pytest.raises(ValueError, match="init file .*notes.txt"):
        kj.generate("mixture", "0-5", tmp_path / "bad", init=tmp_path / "notes.txt", strength=0.5,
                    progress=False)
    np.save(tmp_path / "objects.npy", np.asarray([object()]), allow_pickle=True)
    with pytest.raises(ValueError, match="init file .*objects.npy"):
        kj.generate("mixture", "0-5", tmp_path / "bad", init=tmp_path / "objects.npy", strength=0.5,
                    progress=False)


def test_a_16_bit_png_is_refused_instead_of_clipped(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    (tmp_path / "pics").mkdir()
    Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096).save(tmp_path / "pics" / "a.png")
    with pytest.raises(ValueError, match="mode 'I;16'"):
        kj.generate("generate_models:gaussian_images", "0-2", tmp_path / "out", init=tmp_path / "pics",
                    strength=0.5, progress=False)
