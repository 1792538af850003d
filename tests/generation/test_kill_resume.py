"""Killed, interrupted, disk-full, memory-limited and multi-process generation runs (subprocesses)
against an uninterrupted one."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shard_files import read_shards

TESTS = Path(__file__).resolve().parent.parent
WORKER = TESTS / "generate_worker.py"
SEEDS, BATCH = "0-239", 48  # 5 shards


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(TESTS)}
    env.pop("XLA_FLAGS", None)  # one CPU device unless the worker asks for more
    return env


def _worker(out, *args, seeds=SEEDS, batch=BATCH):
    return subprocess.run([sys.executable, str(WORKER), str(out), seeds, str(batch), *map(str, args)],
                          env=_env(), capture_output=True, text=True, timeout=300)


def _files(folder):
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run = _worker(out)
    assert run.returncode == 0, run.stderr
    return _files(out)


@pytest.mark.parametrize("kill_at, where", [(0, "sample"), (3, "sample"), (0, "write"), (2, "write"),
                                            (4, "write"), (2, "record")])
def test_sigkill_at_any_point_then_resume_leaves_exactly_the_files_of_an_uninterrupted_run(
        tmp_path, whole, kill_at, where):
    killed = _worker(tmp_path, "--kill-at", kill_at, "--where", where)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "manifest.json").exists()
    resumed = _worker(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _files(tmp_path) == whole


def test_a_full_disk_stops_with_one_line_and_keeps_the_earlier_shards(tmp_path, whole):
    for name in ("manifest.json", "shard-000000.npz", "shard-000001.npz"):  # a run that lost shards 2-4
        (tmp_path / name).write_bytes(whole[name])
    limit = len(whole["shard-000000.npz"]) // 2  # RLIMIT_FSIZE: no further shard fits
    args = ["generate", "--model", "mixture", "--seeds", SEEDS, "--batch", str(BATCH), "--out", str(tmp_path),
            "--no-progress"]
    code = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"sys.argv = ['karras-jax', *{args!r}]; runpy.run_module('karras_jax', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("karras-jax: error: cannot write")
    assert "shard-00000" in lines[0] and "File too large" in lines[0]
    for name in ("shard-000000.npz", "shard-000001.npz"):
        assert (tmp_path / name).read_bytes() == whole[name]
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = _worker(tmp_path)  # with space again, the same command finishes the job
    assert resumed.returncode == 0, resumed.stderr
    assert _files(tmp_path) == whole


def test_ctrl_c_is_one_line_exit_130_and_a_rerun_completes_the_job(tmp_path, whole):
    interrupted = _worker(tmp_path, "--kill-at", 2, "--where", "sample", "--signal", "INT")
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines() == [
        "karras-jax: interrupted; files written so far are complete, none half-written"]
    assert "shard-000000.npz" in _files(tmp_path)  # finished before Ctrl-C (shard 1 was still in flight)
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = _worker(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _files(tmp_path) == whole


def test_a_2_32_seed_job_plans_and_starts_in_bounded_memory(tmp_path):
    # RLIMIT_AS 3 GiB: materialising 2**32 seeds (32 GiB) or one entry per seed anywhere fails.
    limit, seeds = str(3 << 30), "0-4294967295"
    dry = _worker(tmp_path, "--as-limit", limit, "--dry-run", "--shard-size", 8, seeds=seeds, batch=4)
    assert dry.returncode == 0, dry.stderr
    assert "4,294,967,296 seeds in 536,870,912 shards; would write 536,870,912" in dry.stdout
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # a dry run writes nothing
    stopped = _worker(tmp_path, "--as-limit", limit, "--shard-size", 8, "--kill-at", 2, "--signal", "INT",
                      seeds=seeds, batch=4)
    assert stopped.returncode == 130, stopped.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["seeds"] == seeds
    with np.load(tmp_path / "shard-000000.npz") as shard:  # finished before Ctrl-C
        assert shard["seeds"].tolist() == list(range(8)) and shard["samples"].shape == (8, 2)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out, *args, seeds=SEEDS, batch=BATCH):
    cmd = [sys.executable, str(WORKER), str(out), seeds, str(batch), "--processes", "2",
           "--port", str(_free_port()), *args]
    procs = [subprocess.Popen([*cmd, "--process", str(i)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def test_two_processes_write_the_shards_of_one_process(tmp_path, whole):
    _two_processes(tmp_path)
    files = _files(tmp_path)
    assert sorted(files) == sorted(whole)
    for name in files:
        if name.startswith("shard-"):
            with np.load(tmp_path / name) as mine:
                import io

                with np.load(io.BytesIO(whole[name])) as ref:
                    np.testing.assert_array_equal(mine["seeds"], ref["seeds"])
                    np.testing.assert_allclose(mine["samples"], ref["samples"], rtol=1e-5, atol=1e-6)


TP_SEEDS, TP_BATCH = "0-63", 16  # 4 shards: two written by each process


@pytest.fixture(scope="module")
def whole_tp(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole_tp")
    run = _worker(out, "--model", "generate_models:tp_mlp", seeds=TP_SEEDS, batch=TP_BATCH)
    assert run.returncode == 0, run.stderr
    return read_shards(out)


@pytest.mark.parametrize("model, resume", [("tp_mlp_sharded", True), ("tp_mlp_local_sharded", False)],
                         ids=["one-mesh-over-both-processes", "a-mesh-per-process"])
def test_two_processes_with_sharded_weights_write_the_replicated_run(tmp_path, whole_tp, model, resume):
    # tp_mlp_sharded: one (data=2, model=2) mesh of both processes' 4 devices, a global program;
    # tp_mlp_local_sharded: each process's own (data=2, model=1) mesh, no collectives between them
    args = ("--model", f"generate_models:{model}")
    _two_processes(tmp_path, *args, seeds=TP_SEEDS, batch=TP_BATCH)
    seeds, samples = read_shards(tmp_path)
    np.testing.assert_array_equal(seeds, whole_tp[0])
    assert np.max(np.abs(samples - whole_tp[1])) <= 1e-5 * np.max(np.abs(whole_tp[1]))
    if resume:  # one shard of each process gone: both processes plan and sample them together again
        before = _files(tmp_path)
        for name in ("shard-000001.npz", "shard-000002.npz"):
            (tmp_path / name).unlink()
        _two_processes(tmp_path, *args, seeds=TP_SEEDS, batch=TP_BATCH)
        assert _files(tmp_path) == before
