"""MODEL strings: a kj.fit folder loads through the model.json it records, the same way for any model."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import karras_jax as kj
from karras_jax.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models

import generate_models  # noqa: E402

RECIPE = "generate_models:tiny_mlp"


def _fit(folder, steps=3, hidden=8, model=RECIPE):
    params = generate_models.tiny_mlp_params(hidden)
    apply_fn = generate_models.tiny_mlp(hidden).apply_fn
    optimizer = optax.adam(1e-2)
    step_fn = kj.make_train_step(lambda p, b, k: kj.edm_loss(apply_fn, p, b, k), optimizer)
    data = np.random.default_rng(0).normal(0.5, 0.3, (16, 2)).astype(np.float32)
    return kj.fit(step_fn, kj.TrainState.create(params, optimizer), lambda s: jnp.asarray(data),
                  jax.random.key(0), steps, folder=folder, progress=False, model=model,
                  model_args={"hidden": hidden})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    return folder, _fit(folder)


def test_a_fit_folder_records_the_function_and_arguments_that_rebuild_its_model(fitted):
    folder, _ = fitted
    assert json.loads((folder / kj.MODEL_FILE).read_text())["function"] == RECIPE
    assert kj.load_model_recipe(folder) == (RECIPE, {"hidden": 8})


def test_generate_model_dir_samples_the_folders_ema_weights(fitted, tmp_path, capsys):
    folder, run = fitted
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(folder), "--seeds", "0-9", "--batch", "5", "--out", str(out),
                 "--no-progress"]) == 0
    assert "2 shards (2 written now" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"].startswith(f"{RECIPE}:") and manifest["steps"] == 6
    with np.load(out / "shard-000001.npz") as f:
        seeds, samples = f["seeds"], f["samples"]
    model = generate_models.tiny_mlp(8)
    state = kj.set_timesteps(model.config, model.steps, model.schedule)
    direct = kj.make_sampler(model.apply_fn, state, model.config, (2,))(run.state.ema, kj.seed_keys(seeds))
    np.testing.assert_allclose(samples, direct, rtol=1e-5, atol=1e-6)


def test_the_loaded_model_is_the_recorded_functions_with_the_checkpoints_weights(fitted):
    folder, run = fitted
    model = kj.load_generate_model(str(folder))
    jax.tree_util.tree_map(np.testing.assert_array_equal, model.params, run.state.ema)
    differ = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), run.state.ema, run.state.params)
    assert any(jax.tree_util.tree_leaves(differ))  # so the check above tells the EMA from the raw weights
    assert model.sample_shape == (2,) and model.steps == 6


def test_a_folder_without_a_recipe_is_refused_naming_model_json(tmp_path):
    _fit(tmp_path, model=None)
    with pytest.raises(ValueError, match="no model.json"):
        kj.load_generate_model(str(tmp_path))


def test_a_recipe_whose_weights_do_not_match_the_checkpoint_is_refused(fitted, tmp_path):
    folder, _ = fitted
    for name in (kj.CHECKPOINT_FILE, kj.MODEL_FILE):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    kj.save_model_recipe(tmp_path, RECIPE, {"hidden": 16})
    with pytest.raises(ValueError, match="does not match"):
        kj.load_generate_model(str(tmp_path))


def test_a_recipe_naming_a_missing_function_is_refused(fitted, tmp_path):
    folder, _ = fitted
    (tmp_path / kj.CHECKPOINT_FILE).write_bytes((folder / kj.CHECKPOINT_FILE).read_bytes())
    kj.save_model_recipe(tmp_path, "generate_models:no_such_model")
    with pytest.raises(ValueError, match="cannot load 'no_such_model'"):
        kj.load_generate_model(str(tmp_path))
