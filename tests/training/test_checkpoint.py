"""Checkpoints: one file, written atomically; it round-trips the train state (params, optax
state, EMA, step) bitwise with the data position, the run's key and the metadata, so a resumed
run continues exactly as an uninterrupted one; bad files and mismatched targets are errors."""

import functools
import json
import os
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import karras_jax as kj

OPTIMIZER = optax.adam(1e-2)


def fresh_params():
    return {"dense": {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}, "scale": jnp.ones((), jnp.bfloat16)}


def loss_fn(params, batch, key):
    noisy = batch + 0.1 * jax.random.normal(key, batch.shape)
    out = (noisy @ params["dense"]["w"] + params["dense"]["b"]) * params["scale"].astype(jnp.float32)
    return jnp.mean((out - batch) ** 2, axis=1)


train_step = kj.make_train_step(loss_fn, OPTIMIZER)


def batch_at(position):
    return np.random.default_rng(position).normal(size=(8, 3)).astype(np.float32)


def train(state, key, position, steps):
    """``steps`` updates from ``position``, one sub-key of the run's key per update."""
    for _ in range(steps):
        key, sub = jax.random.split(key)
        state, _ = train_step(state, batch_at(position), sub)
        position += 1
    return state, key, position


@functools.cache
def trained():
    """The state after 3 updates: a non-trivial adam state and an EMA different from the params."""
    return train(kj.TrainState.create(fresh_params(), OPTIMIZER), jax.random.key(0), 0, 3)


def target():
    return kj.TrainState.create(fresh_params(), OPTIMIZER)


METADATA = {"model": {"channels": [32, 64], "dropout": 0.1}, "lr": 1e-2, "name": "digits", "ok": True}


def assert_same_tree(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def files_in(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_a_checkpoint_round_trips_state_position_key_and_metadata_bitwise(tmp_path, impl):
    state, _, position = trained()
    key = jax.random.key(1234, impl=impl)
    path = kj.save_checkpoint(tmp_path, state, position=position, key=key, metadata=METADATA)
    assert path == tmp_path / kj.CHECKPOINT_FILE and files_in(tmp_path) == [kj.CHECKPOINT_FILE]

    loaded = kj.load_checkpoint(tmp_path, target=target())
    assert isinstance(loaded, kj.Checkpoint) and isinstance(loaded.state, kj.TrainState)
    assert_same_tree(loaded.state, state)  # params, adam's count/mu/nu, ema, step: values and dtypes
    assert int(loaded.state.step) == 3 and loaded.state.params["scale"].dtype == jnp.bfloat16
    assert isinstance(loaded.position, int) and loaded.position == position
    assert jax.dtypes.issubdtype(loaded.key.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(loaded.key) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.key_data(loaded.key), jax.random.key_data(key))
    assert loaded.metadata == METADATA


def test_metadata_defaults_to_an_empty_dict(tmp_path):
    kj.save_checkpoint(tmp_path, trained()[0], position=0, key=jax.random.key(0))
    assert kj.load_checkpoint(tmp_path, target()).metadata == {}


def test_a_resumed_run_continues_bitwise_as_the_uninterrupted_one(tmp_path):
    state, key, position = trained()
    uninterrupted, _, _ = train(state, key, position, 4)

    kj.save_checkpoint(tmp_path, state, position=position, key=key)
    loaded = kj.load_checkpoint(tmp_path, target())
    resumed, _, _ = train(loaded.state, loaded.key, loaded.position, 4)
    assert_same_tree(resumed, uninterrupted)


def test_a_new_checkpoint_replaces_the_previous_one(tmp_path):
    state, key, _ = trained()
    kj.save_checkpoint(tmp_path, target(), position=0, key=key, metadata={"run": 1})
    kj.save_checkpoint(tmp_path, state, position=3, key=key, metadata={"run": 2})
    loaded = kj.load_checkpoint(tmp_path, target())
    assert (loaded.position, loaded.metadata, int(loaded.state.step)) == (3, {"run": 2}, 3)
    assert files_in(tmp_path) == [kj.CHECKPOINT_FILE]


# --- a failing write leaves the previous checkpoint intact --------------------------------


@pytest.fixture
def previous(tmp_path):
    """A folder holding a checkpoint, and that file's bytes."""
    state, key, position = trained()
    path = kj.save_checkpoint(tmp_path, state, position=position, key=key, metadata=METADATA)
    return tmp_path, path.read_bytes()


def test_metadata_that_is_not_json_fails_before_anything_is_written(previous):
    folder, old = previous
    with pytest.raises(TypeError):
        kj.save_checkpoint(folder, target(), position=0, key=jax.random.key(0), metadata={"f": object()})
    assert (folder / kj.CHECKPOINT_FILE).read_bytes() == old and files_in(folder) == [kj.CHECKPOINT_FILE]


def test_a_failed_rename_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(previous, monkeypatch):
    folder, old = previous

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="checkpoint"):
        kj.save_checkpoint(folder, target(), position=0, key=jax.random.key(0))
    monkeypatch.undo()
    assert (folder / kj.CHECKPOINT_FILE).read_bytes() == old and files_in(folder) == [kj.CHECKPOINT_FILE]
    assert kj.load_checkpoint(folder, target()).metadata == METADATA


@pytest.mark.parametrize("arguments, error", [
    ({"position": -1}, ValueError), ({"position": 1.5}, ValueError), ({"position": True}, ValueError),
    ({"key": jax.random.PRNGKey(0)}, TypeError), ({"key": 0}, TypeError),
])
def test_a_bad_position_or_key_is_rejected_and_nothing_is_written(previous, arguments, error):
    folder, old = previous
    with pytest.raises(error):
        kj.save_checkpoint(folder, target(), **{"position": 0, "key": jax.random.key(0), **arguments})
    assert (folder / kj.CHECKPOINT_FILE).read_bytes() == old and files_in(folder) == [kj.CHECKPOINT_FILE]


def test_saving_into_a_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        kj.save_checkpoint(tmp_path / "missing", target(), position=0, key=jax.random.key(0))
    assert files_in(tmp_path) == []


# --- loading: missing, unreadable and mismatched checkpoints -----------------------------


def test_loading_from_a_folder_without_a_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        kj.load_checkpoint(tmp_path, target())
    with pytest.raises(FileNotFoundError):
        kj.load_checkpoint(tmp_path / "missing", target())


@pytest.mark.parametrize("content", [
    b"", b"garbage, not msgpack \x00\xff\xfe", flax.serialization.msgpack_serialize({"state": {"a": 1}}),
    json.dumps({"format": "karras_jax.checkpoint/1"}).encode(),
])
def test_a_file_that_is_not_a_checkpoint_is_a_value_error(tmp_path, content):
    (tmp_path / kj.CHECKPOINT_FILE).write_bytes(content)
    with pytest.raises(ValueError):
        kj.load_checkpoint(tmp_path, target())


def test_a_truncated_checkpoint_is_a_value_error(previous):
    folder, old = previous
    for length in (len(old) // 2, len(old) - 1, 10):
        (folder / kj.CHECKPOINT_FILE).write_bytes(old[:length])
        with pytest.raises(ValueError):
            kj.load_checkpoint(folder, target())


@pytest.mark.parametrize("other", [
    lambda: kj.TrainState.create({**fresh_params(), "extra": jnp.zeros(2)}, OPTIMIZER),  # a parameter more
    lambda: kj.TrainState.create({"dense": {"w": jnp.zeros((3, 3)), "bias": jnp.zeros(3)},
                                  "scale": jnp.ones(())}, OPTIMIZER),  # another name
    lambda: kj.TrainState.create(fresh_params(), optax.sgd(1e-2)),  # another optimizer state
])
def test_a_target_of_another_structure_is_a_value_error(previous, other):
    folder, _ = previous
    with pytest.raises(ValueError, match="does not match"):
        kj.load_checkpoint(folder, other())


def test_a_target_lacking_some_of_the_checkpoints_parameters_is_a_value_error(previous):
    folder, _ = previous
    smaller = kj.TrainState.create({"dense": {"w": jnp.zeros((3, 3))}, "scale": jnp.ones((), jnp.bfloat16)},
                                   OPTIMIZER)
    with pytest.raises(ValueError, match="does not match"):
        kj.load_checkpoint(folder, smaller)  # not: silently drop "b"


def test_a_target_with_differently_shaped_parameters_is_a_value_error(previous):
    folder, _ = previous
    wider = kj.TrainState.create({"dense": {"w": jnp.zeros((3, 5)), "b": jnp.zeros(5)},
                                  "scale": jnp.ones((), jnp.bfloat16)}, OPTIMIZER)
    with pytest.raises(ValueError, match="does not match"):
        kj.load_checkpoint(folder, wider)  # not: return (3, 3) weights for a (3, 5) model


# --- the weights alone, and the recipe that rebuilds the model ----------------------------


@pytest.mark.parametrize("ema", [True, False])
def test_load_params_reads_the_ema_or_the_weights_into_an_abstract_target(previous, ema):
    folder, _ = previous
    state = trained()[0]
    abstract = jax.eval_shape(fresh_params)  # shapes only: no optimizer, nothing initialised
    got = kj.load_params(folder, abstract, ema=ema)
    assert_same_tree(got, state.ema if ema else state.params)


def test_load_params_into_weights_of_another_shape_is_a_value_error(previous):
    folder, _ = previous
    other = {"dense": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(3)}, "scale": jnp.ones((), jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"dense/w is saved as float32\[3, 3\], expected float32\[3, 4\]"):
        kj.load_params(folder, other)


def test_load_params_of_a_checkpoint_that_is_not_a_train_state_is_a_value_error(tmp_path):
    kj.save_checkpoint(tmp_path, {"w": jnp.zeros(2)}, position=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="no 'ema' weights"):
        kj.load_params(tmp_path, {"w": jnp.zeros(2)})
    with pytest.raises(FileNotFoundError):
        kj.load_params(tmp_path / "missing", {"w": jnp.zeros(2)})


def test_a_model_recipe_round_trips_and_is_written_atomically(tmp_path):
    path = kj.save_model_recipe(tmp_path, "my_models.net:build", {"channels": [16, 32], "dropout": 0.1})
    assert path.name == kj.MODEL_FILE and files_in(tmp_path) == [kj.MODEL_FILE]
    assert kj.load_model_recipe(tmp_path) == ("my_models.net:build", {"channels": [16, 32], "dropout": 0.1})
    kj.save_model_recipe(tmp_path, "my_models.net:build")
    assert kj.load_model_recipe(tmp_path) == ("my_models.net:build", {})


@pytest.mark.parametrize("function, arguments, error, match", [
    ("my_models.build", None, ValueError, "function must be 'package.module:function'"),
    ("my models:build", None, ValueError, "function"), (":build", None, ValueError, "function"),
    (42, None, ValueError, "function"), ("m:f", ["not", "a", "dict"], TypeError, "arguments"),
    ("m:f", {"x": object()}, TypeError, "JSON"), ("m:f", {1: 2}, TypeError, "arguments")])
def test_a_bad_recipe_is_refused_and_nothing_is_written(tmp_path, function, arguments, error, match):
    with pytest.raises(error, match=match):
        kj.save_model_recipe(tmp_path, function, arguments)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("content, match", [
    (None, "no model.json"), ("{not json", "not readable JSON"), ('{"function": "m:f"}', "not a karras_jax"),
    ('{"format": "karras_jax.model/1", "function": "nothing", "arguments": {}}', "function")])
def test_a_missing_or_bad_recipe_file_is_named(tmp_path, content, match):
    if content is not None:
        (tmp_path / kj.MODEL_FILE).write_text(content)
    with pytest.raises(FileNotFoundError if content is None else ValueError, match=match):
        kj.load_model_recipe(tmp_path)


# --- damaged files: named, with what is wrong (issue 16) ------------------------------------


def _payload_with(folder, **changes):
    payload = flax.serialization.msgpack_restore((folder / kj.CHECKPOINT_FILE).read_bytes())
    payload.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del payload[name]
    (folder / kj.CHECKPOINT_FILE).write_bytes(flax.serialization.msgpack_serialize(payload))


def test_a_truncated_checkpoint_names_its_file_and_says_it_is_truncated_or_corrupt(previous):
    folder, old = previous
    for length in (len(old) // 2, len(old) - 1, 10, 0):
        (folder / kj.CHECKPOINT_FILE).write_bytes(old[:length])
        for load in (lambda: kj.load_checkpoint(folder, target()),
                     lambda: kj.load_params(folder, fresh_params())):
            with pytest.raises(ValueError) as info:
                load()
            assert str(folder / kj.CHECKPOINT_FILE) in str(info.value)
            assert "truncated or corrupt" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("changes, match", [
    ({"position": -3}, "its position is -3, not an int >= 0"),
    ({"position": "4"}, "its position is '4'"),
    ({"key": "garbage"}, "its PRNG key cannot be read"),
    ({"key_impl": "garbage"}, "its PRNG key cannot be read"),
    ({"metadata": "{not json"}, "its metadata is not JSON"),
    ({"metadata": "[1, 2]"}, "its metadata is a list, not a JSON object"),
    ({"key": None}, "it lacks key"),
    ({"state": None, "metadata": None}, "it lacks state, metadata"),
])
def test_a_damaged_checkpoint_names_its_file_and_what_is_wrong(previous, changes, match):
    folder, _ = previous
    _payload_with(folder, **changes)
    for load in (lambda: kj.load_checkpoint(folder, target()),
                 lambda: kj.load_params(folder, fresh_params())):
        with pytest.raises(ValueError, match=match) as info:
            load()
        assert str(info.value).startswith(f"{folder / kj.CHECKPOINT_FILE} is a damaged checkpoint")


def test_a_checkpoint_path_that_cannot_be_read_is_an_os_error_naming_it(tmp_path):
    (tmp_path / kj.CHECKPOINT_FILE).mkdir()
    with pytest.raises(OSError, match="cannot read the checkpoint " + re.escape(str(tmp_path)) + "/check"):
        kj.load_checkpoint(tmp_path, target())
    (tmp_path / kj.MODEL_FILE).mkdir()
    with pytest.raises(OSError, match="cannot read the model recipe " + re.escape(str(tmp_path)) + "/model"):
        kj.load_model_recipe(tmp_path)


@pytest.mark.parametrize("content, match", [
    (b'{"format": "karras_jax.model/1", "function": "m:f", "ar', "not readable JSON \\(truncated or corrupt"),
    (b"\xff\xfe\x00", "not readable JSON"),
    (b"[1, 2]", "not a karras_jax model recipe"),
    (b'{"format": "karras_jax.model/1", "function": "m:f", "arguments": [1]}',
     "a damaged model recipe: its arguments are list, not a JSON object"),
    (b'{"format": "karras_jax.model/1", "function": "m:f", "arguments": null}', "its arguments are NoneType"),
])
def test_a_damaged_model_recipe_names_its_file_and_what_is_wrong(tmp_path, content, match):
    (tmp_path / kj.MODEL_FILE).write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        kj.load_model_recipe(tmp_path)
    assert str(info.value).startswith(str(tmp_path / kj.MODEL_FILE)) and "\n" not in str(info.value)


def test_json_that_cannot_be_written_names_the_parameter(tmp_path):
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        kj.save_checkpoint(tmp_path, target(), position=0, key=jax.random.key(0), metadata={"f": object()})
    with pytest.raises(TypeError, match="arguments must be JSON-serialisable"):
        kj.save_model_recipe(tmp_path, "m:f", {"f": {1, 2}})
    assert files_in(tmp_path) == []
