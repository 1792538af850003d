"""kj.generate with weights a factory placed on a mesh: tensor-parallel over "model" on a (data=2,
model=4) mesh of the 8 CPU devices, the batch split over "data"; the shards equal the replicated
run's, verify and resume work, the weights hash ignores placement, bad placements are named."""

import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import karras_jax as kj
from karras_jax.generation import job
from karras_jax.generation.models import _weights_hash, load_generate_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # generate_models

import generate_models  # noqa: E402
from shard_files import read_shards  # noqa: E402

SEEDS, BATCH, SHARD = "0-39", 8, 16  # 3 shards, the last one short


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def _relative_error(out, want):
    return float(np.max(np.abs(out - want)) / np.max(np.abs(want)))


def _run(model, out, seeds=SEEDS, **kwargs):
    options = {"batch": BATCH, "shard_size": SHARD, "progress": False, **kwargs}
    return kj.generate(model, seeds, out, **options)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicated")
    _run("generate_models:tp_mlp", out)
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    result = _run("generate_models:tp_mlp_sharded", out)
    assert (result.written, result.skipped) == (3, 0)
    return out


def test_the_factory_s_weights_stay_split_over_the_model_axis():
    model = kj.load_generate_model("generate_models:tp_mlp_sharded")
    assert {name: leaf.sharding.spec for name, leaf in model.params.items()} == generate_models.TP_SPECS
    placement = job._placement(model)
    assert dict(placement.mesh.shape) == {"data": 2, "model": 4}
    assert (placement.axis, placement.size, placement.spans_processes) == ("data", 2, False)


def test_sharded_weights_write_the_shards_of_the_replicated_run(sharded, replicated):
    seeds, out = read_shards(sharded)
    want_seeds, want = read_shards(replicated)
    np.testing.assert_array_equal(seeds, want_seeds)
    assert seeds.tolist() == list(range(40))
    assert _relative_error(out, want) <= 1e-5
    assert kj.verify(sharded)["ok"]


def test_the_weights_hash_is_the_same_sharded_or_replicated(sharded, replicated):
    sharded_model = kj.load_generate_model("generate_models:tp_mlp_sharded")
    assert _weights_hash(sharded_model.params) == _weights_hash(generate_models.tp_weights())
    assert _weights_hash(sharded_model.params) != _weights_hash({**generate_models.tp_weights(), "w2": 0.0})
    # so the manifests name the same weights
    import json

    names = [json.loads((folder / kj.MANIFEST).read_text())["model"] for folder in (sharded, replicated)]
    assert names[0].rsplit(":", 1)[1] == names[1].rsplit(":", 1)[1]


def test_a_resume_after_deleting_a_shard_generates_only_it(sharded, tmp_path):
    folder = tmp_path / "gen"
    shutil.copytree(sharded, folder)
    before = _files(folder)
    (folder / "shard-000001.npz").unlink()
    assert kj.verify(folder)["missing"] == ["shard-000001.npz"]
    result = _run("generate_models:tp_mlp_sharded", folder)
    assert (result.written, result.skipped) == (1, 2)
    assert _files(folder) == before
    assert kj.verify(folder)["ok"]


def test_a_job_begun_with_replicated_weights_resumes_with_sharded_ones(replicated, tmp_path):
    # one identity for both: the hash of the weights' values, not of their placement
    weights = generate_models.tp_weights()
    identity = f"tp:{_weights_hash(weights)}"
    folder = tmp_path / "gen"
    _run(generate_models.tp_mlp()._replace(identity=identity), folder)
    (folder / "shard-000002.npz").unlink()
    model = generate_models.tp_mlp_sharded()
    result = _run(model._replace(identity=f"tp:{_weights_hash(model.params)}"), folder)
    assert (result.written, result.skipped) == (1, 2)
    assert kj.verify(folder)["ok"]
    assert _relative_error(read_shards(folder)[1], read_shards(replicated)[1]) <= 1e-5


@pytest.mark.parametrize("batch", [3, 5])
def test_a_batch_the_data_axis_does_not_divide_is_rounded_up_changing_no_sample(replicated, tmp_path, batch):
    _run("generate_models:tp_mlp_sharded", tmp_path, seeds="0-15", batch=batch)
    assert _relative_error(read_shards(tmp_path)[1], read_shards(replicated)[1][:16]) <= 1e-5


def test_the_batch_may_split_over_several_mesh_axes(replicated, tmp_path):
    model = generate_models.tp_mlp_sharded()._replace(batch_axis=("data", "model"))
    assert job._placement(model).size == 8
    _run(model, tmp_path, seeds="0-15")
    assert _relative_error(read_shards(tmp_path)[1], read_shards(replicated)[1][:16]) <= 1e-5


def _two_meshes():
    devices = jax.devices()
    weights = generate_models.tp_weights()
    first = generate_models.place(weights, generate_models.tp_mesh(devices[:4]))
    second = generate_models.place(weights, generate_models.tp_mesh(devices[4:]))
    return generate_models.tp_mlp()._replace(params={"w1": first["w1"], "w2": second["w2"]})


@pytest.mark.parametrize("make, match", [
    (_two_meshes, r"model params are placed on 2 different meshes \(params\['w1'\] on \(data=2, model=2\)"),
    (lambda: generate_models.tp_mlp_sharded()._replace(batch_axis="batch"),
     r"model batch_axis 'batch' is not an axis of the mesh its params are placed on \(data=2, model=4\)"),
    (lambda: generate_models.tp_mlp_sharded()._replace(batch_axis=("data", "seeds")),
     r"model batch_axis \('data', 'seeds'\) is not an axis"),
], ids=["two-meshes", "no-batch-axis", "one-of-two-axes-missing"])
def test_bad_placements_are_refused_in_one_line_before_anything_is_written(tmp_path, make, match):
    with pytest.raises(ValueError, match=match) as err:
        _run(make(), tmp_path / "gen")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "gen").exists()


def test_a_fit_folder_loads_its_weights_onto_the_factory_s_placement(tmp_path):
    weights = {name: w * 2 for name, w in generate_models.tp_weights().items()}  # "trained" values
    kj.save_checkpoint(tmp_path, kj.TrainState.create(weights, optax.sgd(0.1)), position=0,
                       key=jax.random.key(0))
    kj.save_model_recipe(tmp_path, "generate_models:tp_mlp_sharded", {})
    template = generate_models.tp_mlp_sharded().params
    loaded = load_generate_model(str(tmp_path)).params
    for name, leaf in loaded.items():
        assert leaf.sharding == template[name].sharding  # split as the factory placed it
        np.testing.assert_array_equal(np.asarray(leaf), weights[name])
