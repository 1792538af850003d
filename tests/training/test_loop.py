"""kj.fit: a training run killed at any moment and resumed ends bitwise where an uninterrupted one does."""

import os
import re
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


# --- checked before the first step (issue 16) -----------------------------------------------


def _counting():
    calls = []

    def batch_at(s):
        calls.append(s)
        return jnp.ones((4, 2))

    return batch_at, calls


def test_a_missing_folder_is_created_like_mkdir_p(tmp_path):
    state, step_fn = _setup()
    for folder in (tmp_path / "run", tmp_path / "a" / "b" / "c"):
        run = kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 2, folder=folder,
                     progress=False)
        assert int(run.state.step) == 2 and (folder / kj.CHECKPOINT_FILE).is_file()


@pytest.mark.parametrize("below", ["", "sub", "sub/deeper"])
def test_a_folder_that_is_a_file_or_below_one_is_refused_before_any_step(tmp_path, below):
    state, step_fn = _setup()
    (tmp_path / "file").write_text("mine")
    folder = tmp_path / "file" / below if below else tmp_path / "file"
    batch_at, calls = _counting()
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "file"))):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), 3, folder=folder, progress=False)
    assert calls == [] and (tmp_path / "file").read_text() == "mine"


def test_an_unwritable_folder_is_refused_before_any_step(tmp_path, monkeypatch):
    import tempfile

    state, step_fn = _setup()
    batch_at, calls = _counting()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only folder does to the write probe
    with pytest.raises(OSError, match=re.escape(str(tmp_path))):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), 3, folder=tmp_path, progress=False)
    assert calls == []


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_num_steps_below_the_checkpoints_step_is_refused_saying_how_to_continue(tmp_path, num_steps):
    state, step_fn = _setup()
    kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 4, folder=tmp_path, progress=False)
    saved = (tmp_path / kj.CHECKPOINT_FILE).read_bytes()
    batch_at, calls = _counting()
    with pytest.raises(ValueError, match=rf"num_steps={num_steps} but the checkpoint in .* is at step 4: "
                                         r"pass num_steps >= 4 .* or use another folder"):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), num_steps, folder=tmp_path, progress=False)
    assert calls == [] and (tmp_path / kj.CHECKPOINT_FILE).read_bytes() == saved
    again = kj.fit(step_fn, state, batch_at, jax.random.key(0), 4, folder=tmp_path, progress=False)
    assert calls == [] and int(again.state.step) == 4  # num_steps = 4 returns the run as saved


def test_without_a_checkpoint_the_run_starts_at_the_states_step_and_refuses_a_state_past_num_steps():
    state, step_fn = _setup()
    whole = kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 5, progress=False)
    first = kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 3, progress=False)
    batch_at, calls = _counting()
    rest = kj.fit(step_fn, first.state, batch_at, jax.random.key(0), 5, progress=False)
    assert calls == [3, 4] and rest.resumed_from == 3 and int(rest.state.step) == 5
    jax.tree_util.tree_map(np.testing.assert_array_equal, rest.state.params, whole.state.params)
    with pytest.raises(ValueError, match=r"num_steps=2 but the state is already at step 3"):
        kj.fit(step_fn, first.state, batch_at, jax.random.key(0), 2, progress=False)
    with pytest.raises(ValueError, match="abstract"):
        kj.fit(step_fn, jax.eval_shape(lambda: state), batch_at, jax.random.key(0), 2, progress=False)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:-1], lambda b: b"\xff" * 40])
def test_a_damaged_checkpoint_is_named_before_any_step_and_left_as_it_is(tmp_path, damage):
    state, step_fn = _setup()
    kj.fit(step_fn, state, lambda s: jnp.ones((4, 2)), jax.random.key(0), 2, folder=tmp_path, progress=False)
    damaged = damage((tmp_path / kj.CHECKPOINT_FILE).read_bytes())
    (tmp_path / kj.CHECKPOINT_FILE).write_bytes(damaged)
    batch_at, calls = _counting()
    path = re.escape(str(tmp_path / kj.CHECKPOINT_FILE))
    with pytest.raises(ValueError, match=path + " is not a (readable|karras_jax) "):
        kj.fit(step_fn, state, batch_at, jax.random.key(0), 4, folder=tmp_path, progress=False)
    assert calls == [] and (tmp_path / kj.CHECKPOINT_FILE).read_bytes() == damaged


@pytest.mark.parametrize("arguments, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"batch_size": -3}, ValueError, "batch_size"),
    ({"key": 0}, TypeError, "key must be one PRNG key"),
    ({"key": jax.random.split(jax.random.key(0), 2)}, TypeError, "key must be one PRNG key"),
    ({"metadata": {"losses": [1.0]}}, ValueError, "metadata must not hold the key 'losses'"),
    ({"metadata": {"lr": float("nan")}}, ValueError, "metadata must not hold NaN"),
    ({"metadata": {"f": object()}}, TypeError, "metadata must be JSON-serialisable"),
    ({"metadata": [("lr", 1.0)]}, TypeError, "metadata must be a dict"),
    ({"model": "m:f", "model_args": {"f": object()}}, TypeError, "model_args must be JSON-serialisable"),
    ({"train_step": None}, TypeError, "train_step must be callable"),
    ({"batch_at": lambda: None}, TypeError, r"batch_at is called as batch_at\(step\)"),
])
def test_bad_arguments_are_refused_before_any_step_and_nothing_is_written(tmp_path, arguments, error, match):
    state, step_fn = _setup()
    batch_at, calls = _counting()
    call = {"train_step": step_fn, "state": state, "batch_at": batch_at, "key": jax.random.key(0),
            "num_steps": 3, "folder": tmp_path, "progress": False, **arguments}
    with pytest.raises(error, match=match):
        kj.fit(**call)
    assert calls == [] and os.listdir(tmp_path) == []


def test_metadata_resumes_as_json_holds_it_and_a_raw_key_as_its_typed_key(tmp_path):
    state, step_fn = _setup()
    batch_at = lambda s: jnp.ones((4, 2))  # noqa: E731
    kj.fit(step_fn, state, batch_at, jax.random.PRNGKey(0), 2, folder=tmp_path, metadata={"sizes": (2, 3)},
           progress=False)
    again = kj.fit(step_fn, state, batch_at, jax.random.key(0), 3, folder=tmp_path,
                   metadata={"sizes": (2, 3)}, progress=False)
    assert again.resumed_from == 2 and int(again.state.step) == 3
