"""kj.fit: a training run killed at any moment and resumed ends bitwise where an uninterrupted one does."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import karras_jax as kj

WORKER = Path(__file__).with_name("fit_worker.py")
STEPS = 14


def _run(folder, *args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(WORKER), str(folder), str(STEPS), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def _final(folder):
    with np.load(Path(folder) / "final.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    done = _run(folder)
    assert done.returncode == 0, done.stderr
    return _final(folder)


KILLS = [(0, "step"), (6, "step"), (8, "step"), (8, "write"), (14, "write")]


@pytest.mark.parametrize("kill_at, where", KILLS)
def test_sigkill_then_resume_gives_bitwise_the_uninterrupted_parameters(tmp_path, uninterrupted, kill_at,
                                                                         where):
    killed = _run(tmp_path, kill_at, where)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".*.tmp"))  # a temporary file left by the kill is cleared on resume
    final = _final(tmp_path)
    expected_resume = {"step": kill_at // 4 * 4, "write": (kill_at - 1) // 4 * 4}[where]
    assert int(final["resumed_from"]) == expected_resume
    assert final.keys() == uninterrupted.keys()
    for name in final:
        if name != "resumed_from":
            np.testing.assert_array_equal(final[name], uninterrupted[name], err_msg=name)


def _setup():
    params = {"w": jnp.ones((2,)), "b": jnp.zeros(())}
    optimizer = optax.sgd(0.05)
    loss_fn = lambda p, batch, key: (batch * p["w"] + p["b"] - 3.0) ** 2  # noqa: E731
    step_fn = kj.make_train_step(lambda p, b, k: loss_fn(p, b, k).sum(1), optimizer)
    return kj.TrainState.create(params, optimizer), step_fn


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path):
    state, step_fn = _setup()
    batch_at = lambda s: jnp.ones((4, 2))  # noqa: E731
    kj.fit(step_fn, state, batch_at, jax.random.key(0), 3, folder=tmp_path, metadata={"lr": 0.1},
           progress=False)
    with pytest.raises(ValueError, match=r"lr \(saved 0.1, now 0.2\)"):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), 3, folder=tmp_path, metadata={"lr": 0.2},
               progress=False)
    with pytest.raises(ValueError, match="another key"):
        kj.fit(step_fn, state, batch_at, jax.random.key(1), 3, folder=tmp_path, metadata={"lr": 0.1},
               progress=False)


def test_a_finished_run_resumes_to_the_same_state_without_training(tmp_path):
    state, step_fn = _setup()
    calls = []

    def batch_at(s):
        calls.append(s)
        return jnp.ones((4, 2))

    first = kj.fit(step_fn, state, batch_at, jax.random.key(0), 5, folder=tmp_path, progress=False)
    again = kj.fit(step_fn, state, batch_at, jax.random.key(0), 5, folder=tmp_path, progress=False)
    assert calls == [0, 1, 2, 3, 4] and again.resumed_from == 5
    np.testing.assert_array_equal(again.losses, first.losses)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.state.params, first.state.params)


def test_fit_without_a_folder_trains_and_records_every_loss():
    state, step_fn = _setup()
    run = kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 6, progress=False)
    assert int(run.state.step) == 6 and run.losses.shape == (6,) and np.all(np.diff(run.losses) < 0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_step_counts_are_named(bad):
    state, step_fn = _setup()
    with pytest.raises(ValueError, match="num_steps"):
        kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), bad, progress=False)


def test_fit_records_the_model_recipe_and_a_resume_must_name_the_same_model(tmp_path):
    state, step_fn = _setup()
    batch_at = lambda s: jnp.ones((4, 2))  # noqa: E731
    kj.fit(step_fn, state, batch_at, jax.random.key(0), 2, folder=tmp_path, progress=False,
           model="my_models:build", model_args={"sizes": (2, 3)})
    assert kj.load_model_recipe(tmp_path) == ("my_models:build", {"sizes": [2, 3]})  # as JSON holds it
    again = kj.fit(step_fn, state, batch_at, jax.random.key(0), 4, folder=tmp_path, progress=False,
                   model="my_models:build", model_args={"sizes": (2, 3)})
    assert again.resumed_from == 2
    with pytest.raises(ValueError, match=r"another model: model.json records my_models:build"):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), 4, folder=tmp_path, progress=False,
               model="my_models:build", model_args={"sizes": (2, 4)})
    assert kj.load_model_recipe(tmp_path) == ("my_models:build", {"sizes": [2, 3]})


def test_a_model_without_a_folder_is_refused():
    state, step_fn = _setup()
    with pytest.raises(ValueError, match="folder"):
        kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 2, progress=False,
               model="my_models:build")


def test_the_progress_bar_counts_images_from_where_a_resumed_run_starts(tmp_path, capsys):
    state, step_fn = _setup()
    batch_at = lambda s: jnp.ones((4, 2))  # noqa: E731
    kj.fit(step_fn, state, batch_at, jax.random.key(0), 10, folder=tmp_path, progress=False)
    kj.fit(step_fn, state, batch_at, jax.random.key(0), 20, folder=tmp_path, batch_size=4, label="train ")
    err = capsys.readouterr().err
    assert "train:" in err and " 40/80" in err and "80/80" in err and "img" in err and "loss=" in err
