"""The digits example: data split, a shortened training run that learns, and its CLI commands."""

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits example needs the digits extra (scikit-learn)")

import karras_jax as kj  # noqa: E402
from karras_jax.cli import main  # noqa: E402
from karras_jax.examples import digits  # noqa: E402

# about 50 s of training on 2 cores; the full example (2400 steps of 64) takes about 3 minutes
SMALL = dataclasses.replace(digits.DigitsConfig(), steps=500, batch=32, warmup_steps=50, learning_rate=5e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    metrics = digits.run_example(out, SMALL, guided=200, unguided=200, progress=False)
    return out, metrics


def test_the_split_is_scikit_learns_stratified_30_percent_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x_train, y_train, x_test, y_test = digits.load_split()
    x, y = load_digits(return_X_y=True)
    expected = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    assert x_train.shape == (1257, 8, 8) and x_test.shape == (540, 8, 8)
    np.testing.assert_array_equal(x_train.reshape(1257, 64), expected[0])
    np.testing.assert_array_equal(y_test, expected[3])


def test_pixels_round_trip_through_the_networks_scale():
    pixels = digits.load_split()[0][:5]
    x = digits.to_model(pixels)
    assert x.shape == (5, 8, 8, 1) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(digits.to_pixels(x), pixels, atol=1e-5)


def test_a_shortened_run_learns(trained):
    out, m = trained
    losses = np.asarray(json.loads((out / "metrics.json").read_text())["final_loss_50"])
    assert losses < 0.8  # starts near 1.1 (the network outputs 0 at initialisation)
    assert m["guided_accuracy"] > 0.3  # chance is 0.1; about 0.5 after these 500 steps, 0.996 after 2400
    assert m["frechet_unguided_vs_test"] < m["frechet_gaussian_baseline_vs_test"] * 3
    for name in ("checkpoint.msgpack", "guided.png", "unguided.png", "loss.png", "metrics.json"):
        assert (out / name).stat().st_size > 0


def test_frechet_floor_is_the_distance_between_the_real_splits(trained):
    _, m = trained
    assert 0.1 < m["frechet_train_vs_test_floor"] < 0.3  # 0.188 with this classifier
    assert m["classifier_test_accuracy"] > 0.95


def test_sample_digits_writes_balanced_labelled_samples_on_the_pixel_scale(trained, tmp_path):
    out, _ = trained
    path = tmp_path / "s.npz"
    assert main(["sample-digits", "--checkpoint", str(out), "--out", str(path), "--n", "23"]) == 0
    with np.load(path) as f:
        assert sorted(f.files) == ["labels", "samples"]
        samples, labels = f["samples"], f["labels"]
    assert samples.shape == (23, 8, 8) and samples.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(23)]
    assert samples.min() >= 0 and samples.max() <= 16


def test_sample_digits_is_reproducible_and_unconditional_labels_are_minus_one(trained, tmp_path):
    out, _ = trained
    runs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.npz"
        assert main(["sample-digits", "--checkpoint", str(out), "--out", str(path), "--n", "12",
                     "--unconditional", "--seed", "3"]) == 0
        with np.load(path) as f:
            runs.append((f["samples"], f["labels"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1].tolist() == [-1] * 12


def test_sample_i_does_not_depend_on_the_batch_it_is_drawn_in(trained):
    out, _ = trained
    cfg, params = digits.load_model(out)
    labels = digits.balanced_labels(7)
    whole = digits.sample_digits(cfg, params, 7, labels=labels, guidance=1.0, batch=7)
    chunked = digits.sample_digits(cfg, params, 7, labels=labels, guidance=1.0, batch=3)
    np.testing.assert_allclose(whole, chunked, atol=1e-4)


def test_sample_digits_errors_are_one_line(trained, tmp_path, capsys):
    out, _ = trained
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["sample-digits", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.npz"), "--n", "2"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.msgpack").write_bytes((out / "checkpoint.msgpack").read_bytes())
    kj.save_model_recipe(tmp_path / "other", "generate_models:tiny_mlp")
    with pytest.raises(SystemExit, match="not a digits checkpoint"):
        main(["sample-digits", "--checkpoint", str(tmp_path / "other"), "--out", str(tmp_path / "x.npz"),
              "--n", "2"])
    with pytest.raises(SystemExit, match=r"\.npz"):
        main(["sample-digits", "--checkpoint", str(out), "--out", str(tmp_path / "x.txt"), "--n", "2"])
    with pytest.raises(SystemExit):
        main(["sample-digits", "--checkpoint", str(out), "--out", str(tmp_path / "x.npz"), "--n", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_train_digits_command_trains_writes_a_checkpoint_and_resumes(tmp_path, capsys):
    args = ["train-digits", "--out", str(tmp_path), "--steps", "4", "--batch", "16", "--channels", "4",
            "--checkpoint-every", "2", "--no-eval"]
    assert main(args) == 0
    assert "trained 4 steps (resumed at 0)" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.msgpack").exists()
    function, settings = kj.load_model_recipe(tmp_path)  # how `generate --model DIR` rebuilds it
    assert function == digits.RECIPE and settings["channels"] == 4 and settings["steps"] == 4
    assert digits.load_model(tmp_path)[0] == dataclasses.replace(digits.DigitsConfig(), steps=4, batch=16,
                                                                 channels=4)
    assert main(args) == 0
    assert "resumed at 4" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="batch"):
        main([*args[:-1], "--batch", "32", "--no-eval"])


def test_a_digits_checkpoint_is_a_model_for_generate(trained, tmp_path):
    out, _ = trained
    result = kj.generate(str(out), "0-19", tmp_path, batch=10, guidance=2.0, png=True, progress=False)
    assert result.shards == 2 and kj.verify(tmp_path)["ok"]
    with np.load(tmp_path / "shard-000001.npz") as f:
        assert f["samples"].shape == (10, 8, 8) and f["samples"].min() >= 0 and f["samples"].max() <= 16
    assert (tmp_path / "000000" / "000019.png").exists()
    again = kj.generate(str(out), "0-19", tmp_path, batch=10, guidance=2.0, png=True, progress=False)
    assert again.written == 0  # resumes: the digits shards pass their own checks
