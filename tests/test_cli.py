"""The ``karras-jax demo`` command: runs offline, writes its files, rejects bad flags in one line."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import karras_jax as kj
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


@pytest.mark.parametrize("flags", [[], ["--s-churn", "0", "--steps", "7", "--seed", "1000"]])
def test_demo_and_generate_sample_the_mixture_alike_for_the_same_seeds_and_settings(tmp_path, capsys, flags):
    # one record of the mixture's defaults (s_noise, s_churn, steps, schedule), and seed s -> key(s) on both
    assert main(["demo", "--seeds", "40", "--solvers", "heun", "--out", str(tmp_path / "demo"), "--no-plot",
                 *flags]) == 0
    first = int(flags[flags.index("--seed") + 1]) if "--seed" in flags else 0
    settings = [f for f in flags if f not in ("--seed", str(first))]
    assert main(["generate", "--model", "mixture", "--seeds", f"{first}-{first + 39}", "--out",
                 str(tmp_path / "gen"), "--no-progress", *settings]) == 0
    shard = tmp_path / "gen" / "shard-000000.npz"
    with np.load(tmp_path / "demo" / "samples.npz") as demo, np.load(shard) as gen:
        assert gen["seeds"].tolist() == list(range(first, first + 40))
        np.testing.assert_allclose(demo["heun"], gen["samples"], rtol=1e-5, atol=1e-6)
    capsys.readouterr()


def test_the_mixtures_defaults_are_its_models(capsys):
    config = kj.load_generate_model("mixture").config
    assert (float(config.s_noise), float(config.s_churn)) == (1.0, 40.0)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "(default: the mixture's, 1.0" in " ".join(capsys.readouterr().out.split())


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


def test_demo_eta_reaches_the_stochastic_solvers_only(tmp_path, capsys):

    import karras_jax as kj
    from karras_jax.analytic import default_mixture

    argv = ["demo", "--seeds", "64", "--steps", "6", "--s-churn", "0", "--solvers",
            "euler_ancestral,heun", "--eta", "0.3", "--out", str(tmp_path), "--no-plot"]
    assert main(argv) == 0
    assert "eta=0.3" in capsys.readouterr().out
    state = kj.set_timesteps(kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0), 6, "karras")
    keys = kj.seed_keys(np.arange(64))  # the demo's seeds 0..63, as generate keys them
    want = kj.sample(default_mixture().denoise, keys, state, None, (2,), solver=kj.euler_ancestral(eta=0.3))
    with np.load(tmp_path / "samples.npz") as data:
        np.testing.assert_allclose(data["euler_ancestral"], want, rtol=1e-5, atol=1e-5)
        heun = kj.sample(default_mixture().denoise, keys, state, None, (2,), solver="heun")
        np.testing.assert_allclose(data["heun"], heun, rtol=1e-5, atol=1e-5)


def test_demo_counts_one_evaluation_for_the_flow_schedules_limit_step(tmp_path, capsys):
    argv = ["demo", "--seeds", "64", "--steps", "5", "--s-churn", "0", "--schedule", "flow", "--solvers",
            "heun,euler", "--out", str(tmp_path), "--no-plot"]
    assert main(argv) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("heun ", "euler"))}
    assert rows["heun"][1:3] == ["5", "8"] and rows["euler"][1:3] == ["5", "5"]  # heun: 1 + 2 * 4 - 1


@pytest.mark.parametrize("argv", [["demo", "--solvers", "heun,euler", "--eta", "0.5"],
                                  ["generate", "--model", "mixture", "--seeds", "0-3", "--solver", "heun",
                                   "--eta", "0.5"],
                                  ["demo", "--solvers", "euler_ancestral", "--eta", "-1"]])
def test_eta_for_a_solver_without_one_is_a_usage_error(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "eta" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_generate_records_eta_and_refuses_to_resume_with_another(tmp_path, capsys):
    out = tmp_path / "job"
    argv = ["generate", "--model", "mixture", "--seeds", "0-7", "--out", str(out), "--solver",
            "dpmpp_2m_sde", "--batch", "8", "--no-progress"]
    assert main([*argv, "--eta", "0.5"]) == 0
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["solver"], manifest["eta"]) == ("dpmpp_2m_sde", 0.5)
    assert main([*argv, "--eta", "0.5"]) == 0  # resumes: nothing to do
    with pytest.raises(SystemExit) as exit_info:
        main(argv)  # eta left out: the solver's default 1.0, another job
    assert exit_info.value.code == 2 and "eta (folder 0.5, now None)" in capsys.readouterr().err


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
        (["demo", "--steps", "10000000000"], "--steps"),
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


# --- checked before it works; no traceback for a user error; files atomic ------------------------


def _one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("karras-jax: error:"), err
    return err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1e3"])
def test_seed_outside_the_key_range(seed, capsys):
    assert "--seed" in _one_line_exit_2(["demo", "--seed", seed], capsys)


def test_seeds_that_would_not_fit_in_memory_are_refused_with_the_estimate(capsys):
    err = _one_line_exit_2(["demo", "--seeds", str(10**12)], capsys)
    assert "--seeds" in err and "GiB" in err and "available" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "karras-jax 0.1.0"


def test_an_unwritable_output_folder_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    import karras_jax.cli as cli

    sampled = []
    monkeypatch.setattr(cli, "_demo", lambda args: sampled.append(1) or 0)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # root ignores permission bits
    err = _one_line_exit_2(["demo", "--out", str(tmp_path)], capsys)
    assert "--out" in err and "Permission denied" in err and not sampled


def test_a_folder_in_the_way_of_an_output_file(tmp_path, capsys):
    (tmp_path / "samples.npz").mkdir()
    err = _one_line_exit_2(["demo", "--out", str(tmp_path)], capsys)
    assert "samples.npz is a folder" in err


def test_ctrl_c_while_writing_is_one_line_exit_130_and_no_partial_file(tmp_path, capsys, monkeypatch):
    main(["demo", "--seeds", "64", "--steps", "3", "--out", str(tmp_path), "--no-plot"])
    before = (tmp_path / "samples.npz").read_bytes()
    real_savez = np.savez

    def interrupted_mid_write(file, **arrays):
        real_savez(file, **arrays)  # the bytes are in the temporary file ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives, before the rename

    monkeypatch.setattr(np, "savez", interrupted_mid_write)
    assert main(["demo", "--seeds", "64", "--steps", "3", "--seed", "3", "--out", str(tmp_path),
                 "--no-plot"]) == 130
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err
    assert (tmp_path / "samples.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


def _demo_with_file_size_limit(limit, argv):
    """``karras-jax`` run in a child process whose files may not grow beyond ``limit`` bytes."""
    script = (
        "import resource, sys\n"
        "from karras_jax.cli import main\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)


def test_a_full_disk_keeps_the_previous_outputs_byte_for_byte(tmp_path):
    main(["demo", "--seeds", "64", "--steps", "4", "--out", str(tmp_path), "--no-plot"])
    before = (tmp_path / "samples.npz").read_bytes()
    result = _demo_with_file_size_limit(
        2000, ["demo", "--seeds", "512", "--steps", "4", "--seed", "5", "--out", str(tmp_path)])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "samples.npz" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "samples.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


def test_columns_never_run_together():
    from karras_jax.cli import _row

    row = _row([("heun", 7, "<"), ("123456789", 5, ">"), ("1,234,567,890", 12, ">")])
    assert row.split() == ["heun", "123456789", "1,234,567,890"]
    assert _row([("heun", 7, "<"), ("18", 5, ">")]) == "heun      18"  # unchanged when it fits


def test_energy_distance_uses_a_bounded_subsample(tmp_path, capsys):
    from karras_jax.cli import EVAL_POINTS

    main(["demo", "--seeds", str(EVAL_POINTS + 100), "--steps", "3", "--solvers", "euler",
          "--out", str(tmp_path), "--no-plot"])
    assert f"energy distance on the first {EVAL_POINTS} samples" in capsys.readouterr().out


def test_diffusers_schedule_prints_the_levels_it_uses(tmp_path, capsys):
    main(["demo", "--seeds", "64", "--steps", "3", "--schedule", "diffusers", "--out", str(tmp_path),
          "--no-plot"])
    out = capsys.readouterr().out
    assert "sigma_min=0.02, sigma_max=100" in out and "10000" in out


def test_a_failed_plot_keeps_the_previous_png_byte_for_byte(tmp_path):
    pytest.importorskip("matplotlib")
    main(["demo", "--seeds", "256", "--steps", "4", "--out", str(tmp_path)])
    before = (tmp_path / "demo.png").read_bytes()
    assert len(before) > 40_000  # larger than the limit below; samples.npz is smaller
    result = _demo_with_file_size_limit(
        30_000, ["demo", "--seeds", "256", "--steps", "4", "--seed", "9", "--out", str(tmp_path)])
    assert result.returncode == 1, result.stderr
    assert "demo.png" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "demo.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png", "samples.npz"]


# --- one rule for every command: usage errors exit 2, runtime errors 1, one line naming the culprit ---


GEN = ["generate", "--model", "mixture", "--seeds", "0-3", "--no-progress"]


@pytest.mark.parametrize("seeds", ["0-x", "5-2", "4294967296", "0-3,2", ""])
def test_malformed_seeds_exit_2_like_every_bad_flag(seeds, tmp_path, capsys):
    argv = ["generate", "--model", "mixture", "--seeds", seeds, "--out", str(tmp_path)]
    err = _one_line_exit_2(argv, capsys)
    assert "argument --seeds" in err


def _bad_out(tmp_path, make):
    (tmp_path / "f").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    return {"file": tmp_path / "f", "below a file": tmp_path / "f" / "x",
            "dangling symlink": tmp_path / "link"}[make]


@pytest.mark.parametrize("make", ["file", "below a file", "dangling symlink"])
@pytest.mark.parametrize("command", [["demo"], GEN, ["train-digits", "--no-eval"]])
def test_an_out_that_cannot_be_a_folder_is_a_usage_error_naming_the_path(tmp_path, capsys, make, command):
    out = _bad_out(tmp_path, make)
    err = _one_line_exit_2([*command, "--out", str(out)], capsys)
    assert f"argument --out: {out} " in err and "Traceback" not in err


def test_a_read_only_out_folder_is_named_for_generate(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # root ignores permission bits
    err = _one_line_exit_2([*GEN, "--out", str(tmp_path / "ro")], capsys)
    assert f"argument --out: cannot write in the folder {tmp_path / 'ro'}: Permission denied" in err


@pytest.mark.parametrize("error", [ValueError("Unpack failed: incomplete input"),
                                   PermissionError(13, "Permission denied", "CKPT/checkpoint.msgpack"),
                                   None])
def test_a_checkpoint_that_does_not_load_is_one_line_naming_it(tmp_path, capsys, monkeypatch, error):
    import karras_jax.examples.digits as digits

    checkpoint = tmp_path / "run"
    if error is not None:
        def fail(folder):
            if isinstance(error, OSError):
                raise type(error)(error.errno, error.strerror, error.filename.replace("CKPT", str(folder)))
            raise error

        monkeypatch.setattr(digits, "load_model", fail)
    err = _one_line_exit_2(["sample-digits", "--checkpoint", str(checkpoint), "--out",
                            str(tmp_path / "s.npz"), "--n", "2"], capsys)
    assert "argument --checkpoint: " in err and f"{checkpoint}" in err


def test_a_damaged_manifest_is_a_usage_error_saying_how_to_start_over(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("[]")
    err = _one_line_exit_2([*GEN, "--out", str(tmp_path)], capsys)
    assert f"{tmp_path / 'manifest.json'} is damaged or foreign" in err and f"delete {tmp_path}" in err


def test_png_for_samples_that_are_not_images_is_a_usage_error(tmp_path, capsys):
    err = _one_line_exit_2([*GEN, "--png", "--out", str(tmp_path / "out")], capsys)
    assert "--png" in err and "(H, W)" in err and "(2,)" in err and not (tmp_path / "out").exists()


@pytest.fixture
def nan_model(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # generate_models
    return ["generate", "--model", "generate_models:nan_at_seed_7", "--seeds", "0-11", "--batch", "4",
            "--no-progress"]


def test_a_non_finite_sample_is_a_runtime_error_naming_the_seed(tmp_path, capsys, nan_model):
    assert main([*nan_model, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("karras-jax: error: the model gave non-finite samples")
    assert "seed 7;" in err and "shard-000001.npz was not written" in err
    assert main(["generate", "--verify", str(tmp_path)]) == 1  # verify agrees: shard 1 is missing
    assert "2 missing: seeds 4-11" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, nan_model, where):
    flag = ["--debug"]
    with pytest.raises(ValueError, match="is a file"):
        main([*flag, *GEN, "--out", str(_bad_out(tmp_path, "file"))] if where == "before"
             else [*GEN, "--out", str(_bad_out(tmp_path, "file")), *flag])
    with pytest.raises(FloatingPointError, match="seed 7"):
        main([*flag, *nan_model, "--out", str(tmp_path / "nan")] if where == "before"
             else [*nan_model, "--out", str(tmp_path / "nan"), *flag])


def test_debug_is_not_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--debug" not in capsys.readouterr().out


# --- likelihood ------------------------------------------------------------------------------------


def _mixture_points(tmp_path, n=10, dims=2, **extra):
    import jax

    from karras_jax.analytic import default_mixture

    x = np.asarray(default_mixture().sample(jax.random.key(3), n), np.float32)
    if dims != 2:
        x = np.zeros((n, dims), np.float32)
    path = tmp_path / "points.npz"
    np.savez(path, x=x, **extra)
    return path, x


def test_likelihood_prints_the_mean_of_kj_log_likelihood(tmp_path, capsys):
    import karras_jax as kj
    from karras_jax.analytic import default_mixture
    from karras_jax.generation import load_generate_model

    path, x = _mixture_points(tmp_path)
    argv = ["likelihood", "--model", "mixture", "--data", str(path), "--steps", "8", "--batch", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("log-likelihood:"))
    printed = float(line.split()[1])
    model = load_generate_model("mixture")
    state = kj.set_timesteps(model.config, 8, model.schedule)
    want = kj.log_likelihood(lambda y, s, c: default_mixture().denoise(y, s), x, state)
    assert printed == pytest.approx(float(np.mean(want)), abs=2e-6)
    bits = float(next(line for line in out.splitlines() if line.startswith("bits per dim:")).split()[3])
    assert bits == pytest.approx(float(np.mean(kj.bits_per_dim(want, 2))), abs=2e-6)
    assert list(tmp_path.iterdir()) == [path]  # nothing written without --out


def test_likelihood_out_writes_the_per_sample_values(tmp_path, capsys):
    import karras_jax as kj
    from karras_jax.analytic import default_mixture
    from karras_jax.generation import load_generate_model

    path, x = _mixture_points(tmp_path, n=5, labels=np.arange(5))
    out = tmp_path / "ll.npz"
    argv = ["likelihood", "--model", "mixture", "--data", str(path), "--key", "x", "--steps", "6",
            "--trace", "hutchinson", "--probes", "2", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_generate_model("mixture")
    state = kj.set_timesteps(model.config, 6, model.schedule)
    want = kj.log_likelihood(lambda y, s, c: default_mixture().denoise(y, s), x, state,
                             _probe_key(4, 0), trace="hutchinson", probes=2)
    with np.load(out) as written:
        assert set(written.files) == {"nats", "bits_per_dim"}
        np.testing.assert_allclose(written["nats"], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(written["bits_per_dim"], kj.bits_per_dim(want, 2), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ll.npz", "points.npz"]  # no temporary left


def _probe_key(seed, index):
    import jax

    return jax.random.fold_in(jax.random.key(seed), index)


@pytest.mark.parametrize("case, flag", [("shape", "--data"), ("missing", "--data"), ("two arrays", "--key"),
                                        ("no such key", "--key"), ("probes", "--probes"),
                                        ("model", "--model"), ("out", "--out")])
def test_likelihood_usage_errors_name_the_flag(tmp_path, capsys, case, flag):
    path, _ = _mixture_points(tmp_path, dims=3 if case == "shape" else 2,
                              **({"labels": np.arange(10)} if case == "two arrays" else {}))
    argv = ["likelihood", "--model", "mixture", "--data", str(path)]
    if case == "missing":
        argv[-1] = str(tmp_path / "absent.npz")
    argv += {"no such key": ["--key", "y"], "probes": ["--probes", "3"], "model": ["--model", "nowhere:f"],
             "out": ["--out", str(tmp_path / "no" / "ll.npz")]}.get(case, [])
    err = _one_line_exit_2(argv, capsys)
    assert f"argument {flag}" in err
    if case == "shape":
        assert "(10, 3)" in err and "(n, 2)" in err
    if case == "missing":
        assert "absent.npz" in err
