"""The ``karras-jax demo`` command: runs offline, writes its files, rejects bad flags in one line."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from karras_jax.cli import main


def test_demo_writes_samples_and_reports_a_distance_near_the_floor(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "512", "--steps", "12", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line[:5] in ("heun ", "euler", "true ")}
    assert rows["heun"][1:3] == ["12", "23"]  # N and 2N - 1 network evaluations
    assert rows["euler"][1:3] == ["12", "12"]
    heun_dist, floor = float(rows["heun"][-1]), float(rows["true"][1])
    assert heun_dist < 10 * floor + 0.02
    with np.load(out / "samples.npz") as data:
        assert data["heun"].shape == (512, 2) and np.all(np.isfinite(data["heun"]))
        assert data["true"].shape == (512, 2)
        assert data["sigmas"][-1] == 0.0 and data["sigmas"].shape == (13,)
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "demo.png").exists() == has_matplotlib
    if not has_matplotlib:
        assert "pip install 'karras-jax[demo]'" in text


def test_demo_compares_any_registered_solvers(tmp_path, capsys):
    argv = ["demo", "--seeds", "256", "--steps", "10", "--s-churn", "0", "--solvers", "dpmpp_2m,heun",
            "--out", str(tmp_path), "--no-plot"]
    assert main(argv) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("heun ", "dpmpp_2m", "euler"))}
    assert rows["dpmpp_2m"][1:3] == ["10", "10"] and rows["heun"][1:3] == ["10", "19"]
    assert "euler" not in rows
    with np.load(tmp_path / "samples.npz") as data:
        assert set(data.files) == {"dpmpp_2m", "heun", "true", "sigmas"}


def test_demo_heun_beats_euler_without_churn(tmp_path, capsys):
    main(["demo", "--seeds", "1024", "--steps", "8", "--s-churn", "0", "--out", str(tmp_path), "--no-plot"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("heun ", "euler"))}
    assert float(rows["heun"][-1]) < float(rows["euler"][-1])
    assert not (tmp_path / "demo.png").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--steps", "many"], "--steps"),
        (["demo", "--seeds", "-3"], "--seeds"),
        (["demo", "--s-churn", "-1"], "--s-churn"),
        (["demo", "--s-noise", "nan"], "--s-noise"),
        (["demo", "--schedule", "cosine"], "--schedule"),
        (["demo", "--solvers", "heun,rk4"], "--solvers"),
        (["demo", "--solvers", ","], "--solvers"),
        (["demo", "--bogus"], "--bogus"),
        (["sample-everything"], "sample-everything"),
    ],
)
def test_bad_flags_give_one_line_and_exit_code_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("karras-jax: error:")
    assert fragment in err


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "karras_jax", "demo", "--steps", "-2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--steps" in result.stderr


def test_an_output_folder_that_cannot_be_created_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(blocker / "inside")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err
