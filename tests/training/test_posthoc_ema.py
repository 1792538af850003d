"""Post-hoc EMA: EDM2's coefficients (against a float64 transcription of its solver), the EMA
of any width rebuilt from snapshots of two, and snapshots that survive a kill whole."""

import functools
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import karras_jax as kj
import karras_jax.training as kt
import karras_jax.training.loop as loop_module
from karras_jax.training import posthoc_ema as posthoc_module

# ----------------------------------------------------------------------------------------------
# The oracle: EDM2's training/phema.py (std_to_exp, power_function_correlation,
# solve_posthoc_coefficients) written out element by element in float64.


@functools.cache
def edm2_exponent(sigma_rel):
    """EDM2's std_to_exp: the largest real root of g^3 + 7 g^2 + (16 - s^-2) g + 12 - s^-2."""
    t = float(sigma_rel) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def edm2_correlation(t_a, s_a, t_b, s_b):
    """EDM2's power_function_correlation of one pair of profiles (eq. 151)."""
    g_a, g_b = edm2_exponent(s_a), edm2_exponent(s_b)
    exponent = g_b if t_a < t_b else -g_a
    return (g_a + 1) * (g_b + 1) * (t_a / t_b) ** exponent / ((g_a + g_b + 1) * max(t_a, t_b))


def edm2_coefficients(in_steps, in_stds, out_steps, out_stds):
    """EDM2's solve_posthoc_coefficients: np.linalg.solve(A, B), then each column scaled to sum 1."""
    n, m = len(in_steps), len(out_steps)
    a = np.empty((n, n))
    b = np.empty((n, m))
    for i in range(n):
        for j in range(n):
            a[i, j] = edm2_correlation(float(in_steps[i]), in_stds[i], float(in_steps[j]), in_stds[j])
        for j in range(m):
            b[i, j] = edm2_correlation(float(in_steps[i]), in_stds[i], float(out_steps[j]), out_stds[j])
    x = np.linalg.solve(a, b)
    return x / np.sum(x, axis=0)


def snapshot_grid(every, last, sigma_rels=(0.05, 0.10)):
    steps = [s for s in range(every, last + 1, every) for _ in sigma_rels]
    return steps, [s for _ in range(every, last + 1, every) for s in sigma_rels]


# ----------------------------------------------------------------------------------------------
# The coefficients


CASES = {
    "two profiles, 10 snapshots": (*snapshot_grid(100, 1000), [1000, 1000, 700], [0.07, 0.15, 0.03]),
    "EDM2's default pair, 40 snapshots": (*snapshot_grid(10, 400), [400], [0.07]),
    "three profiles, uneven steps": ([3, 8, 8, 20, 31, 31, 50], [0.2, 0.05, 0.1, 0.02, 0.05, 0.25, 0.1],
                                     [50, 31], [0.12, 0.04]),
    "one snapshot": ([500], [0.1], [500, 400], [0.05, 0.1]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_coefficients_equal_a_float64_transcription_of_edm2s_solver(case):
    in_steps, in_stds, out_steps, out_stds = CASES[case]
    got = kt.posthoc_ema_coefficients(in_steps, in_stds, out_steps, out_stds)
    want = edm2_coefficients(in_steps, in_stds, out_steps, out_stds)
    assert got.dtype == np.float64 and got.shape == (len(in_steps), len(out_steps))
    # measured: bitwise equal (the same float64 operations in another order of loops)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(got.sum(0), 1.0, rtol=1e-12)


def test_the_coefficients_broadcast_scalars_as_edm2s_do():
    steps, _ = snapshot_grid(50, 200, (0.1,))
    got = kt.posthoc_ema_coefficients(steps, 0.1, 200, [0.05, 0.07])
    np.testing.assert_allclose(got, edm2_coefficients(steps, [0.1] * 4, [200, 200], [0.05, 0.07]), atol=1e-12)


def test_a_profile_that_was_snapshotted_is_its_own_snapshot():
    steps, stds = snapshot_grid(100, 1000)
    x = kt.posthoc_ema_coefficients(steps, stds, [1000, 500], [0.10, 0.05])
    np.testing.assert_allclose(x[:, 0], np.eye(len(steps))[steps.index(1000) + 1], atol=1e-10)
    np.testing.assert_allclose(x[:, 1], np.eye(len(steps))[steps.index(500)], atol=1e-10)


def test_only_ratios_of_steps_matter_so_counting_images_gives_the_same_coefficients():
    steps, stds = snapshot_grid(10, 100)
    np.testing.assert_allclose(kt.posthoc_ema_coefficients(np.asarray(steps) * 64, stds, 6400, 0.08),
                               kt.posthoc_ema_coefficients(steps, stds, 100, 0.08), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arguments, match", [
    (([100, 200], [0.05, 0.1, 0.2], 200, 0.1), "in_steps and in_sigma_rels must have the same length"),
    (([100, 200], 0.1, [200, 100], [0.1, 0.05, 0.2]), "out_steps and out_sigma_rels must have the same"),
    (([0, 200], 0.1, 200, 0.1), r"in_steps must be finite and > 0"),
    (([100, np.inf], 0.1, 200, 0.1), r"in_steps must be finite and > 0"),
    (([100, 200], 0.1, -5, 0.1), r"out_steps must be finite and > 0"),
    (([100, 200], [0.05, 0.3], 200, 0.1), r"in_sigma_rels must be in \(0, 1/sqrt\(12\) = 0.2887\)"),
    (([100, 200], 0.1, 200, [0.0]), r"out_sigma_rels must be in \(0, 1/sqrt\(12\)"),
    (([100, 200], 0.1, 200, np.nan), r"out_sigma_rels must be in"),
    (([], [], 200, 0.1), "at least one profile"),
    (([[100, 200]], 0.1, 200, 0.1), "in_steps must be a number or a 1-d sequence"),
    (([100, 200, 100], [0.1, 0.1, 0.1], 200, 0.1), r"repeat the profile \(step 100, sigma_rel 0.1\)"),
])
def test_bad_coefficient_arguments_are_value_errors_naming_the_parameter_and_range(arguments, match):
    with pytest.raises(ValueError, match=match):
        kt.posthoc_ema_coefficients(*arguments)


@pytest.mark.parametrize("arguments, match", [
    ((["100"], 0.1, 200, 0.1), "in_steps must hold real numbers"),
    (([100], None, 200, 0.1), "in_sigma_rels must be a real number"),
    (([100], 0.1, True, 0.1), "out_steps must be a real number"),
    (([100], 0.1, 200, [0.1, "a"]), "out_sigma_rels must hold real numbers"),
    (([100, [1, 2]], 0.1, 200, 0.1), "in_steps must be a number or a flat sequence"),
])
def test_coefficient_arguments_that_are_not_numbers_are_type_errors(arguments, match):
    with pytest.raises(TypeError, match=match):
        kt.posthoc_ema_coefficients(*arguments)


def test_traced_coefficient_arguments_are_a_type_error_saying_why():
    with pytest.raises(TypeError, match="in_steps must be concrete numbers"):
        jax.jit(lambda t: kt.posthoc_ema_coefficients(t, 0.1, 10, 0.1))(jnp.arange(1.0, 3.0))


# ----------------------------------------------------------------------------------------------
# Training with profiles

TARGET = {"w": jnp.asarray([1.0, -1.0, 0.5]), "b": jnp.asarray(3.0)}


def quadratic_loss(params, batch, key):
    return sum(jnp.sum((params[k] - TARGET[k]) ** 2) for k in params) / 2


def smooth_run(folder, *, num_steps=400, snapshot_every=10, ema_sigma_rel=0.07, checkpoint_every=100):
    """SGD on a quadratic: every weight moves smoothly, theta_t = target + (theta_0 - target)(1 - lr)^t."""
    optimizer = optax.sgd(0.0075)  # (1 - lr)^400 = e^-3: the weights travel most of the way
    step_fn = kj.make_train_step(quadratic_loss, optimizer, ema_sigma_rel=ema_sigma_rel)
    state = kj.TrainState.create({"w": jnp.full((3,), 2.0), "b": jnp.zeros(())}, optimizer,
                                 ema_profiles=(0.05, 0.10))
    return kj.fit(step_fn, state, lambda s: 0, jax.random.key(0), num_steps, folder=folder,
                  checkpoint_every=checkpoint_every, snapshot_every=snapshot_every, progress=False)


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smooth")
    return folder, smooth_run(folder)


def test_each_profile_is_the_power_function_ema_of_its_own_width():
    optimizer = optax.sgd(0.1)
    state = kj.TrainState.create({"w": jnp.ones(3)}, optimizer, ema_profiles=(0.07, 0.2))
    assert state.ema_sigma_rels == (0.07, 0.2) and len(state.ema_profiles) == 2
    step_fn = kj.make_train_step(lambda p, b, k: jnp.sum((p["w"] - b) ** 2), optimizer, ema_sigma_rel=0.07)
    by_hand = list(state.ema_profiles)
    for t in range(1, 6):
        state, _ = step_fn(state, jnp.arange(3.0) * t, jax.random.key(t))
        by_hand = [kj.ema_update(e, state.params, t, kj.ema_gamma(s))
                   for e, s in zip(by_hand, (0.07, 0.2), strict=True)]
    for got, want in zip(state.ema_profiles, by_hand, strict=True):
        np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
    np.testing.assert_array_equal(state.ema_profiles[0]["w"], state.ema["w"])  # the same width: the same EMA


def test_sigma_rel_0_07_rebuilt_from_40_snapshots_of_0_05_and_0_10_is_the_directly_tracked_ema_to_1e_5(
        smooth):
    # 40 snapshots of each width, every 10 of 400 steps, a smooth weight trajectory; the
    # reference is state.ema, averaged with sigma_rel 0.07 during training. Measured: 6e-7.
    folder, run = smooth
    snapshots = kt.load_ema_snapshots(folder)
    assert [s.step for s in snapshots] == list(range(10, 401, 10))
    assert all(s.sigma_rels == (0.05, 0.10) for s in snapshots)
    rebuilt = kt.reconstruct_ema(snapshots, 0.07)
    for name in ("w", "b"):
        assert rebuilt[name].dtype == np.float32
        np.testing.assert_allclose(rebuilt[name], run.state.ema[name], rtol=1e-5)
    # and it is not any of the inputs: 0.05 and 0.10 end elsewhere
    assert np.abs(np.asarray(run.state.ema_profiles[1]["w"]) - rebuilt["w"]).max() > 1e-3


def test_a_snapshotted_width_rebuilt_at_its_own_snapshot_step_is_that_snapshot(smooth):
    folder, _ = smooth
    snapshots = kt.load_ema_snapshots(folder)
    at_200 = next(s for s in snapshots if s.step == 200)
    for i, sigma_rel in enumerate((0.05, 0.10)):
        rebuilt = kt.reconstruct_ema(snapshots, sigma_rel, step=200)
        for name in ("w", "b"):
            np.testing.assert_allclose(rebuilt[name], at_200.profiles[i][name], rtol=1e-6, atol=1e-7)


def test_the_folder_reconstruction_streams_the_files_to_the_same_weights(smooth):
    folder, run = smooth
    snapshots = kt.load_ema_snapshots(folder)
    got = kt.reconstruct_ema_from_folder(folder, [0.07, 0.1], step=300)
    assert list(got) == [0.07, 0.1]
    for sigma_rel, weights in got.items():
        want = kt.reconstruct_ema(snapshots, sigma_rel, step=300)
        for name in ("w", "b"):
            np.testing.assert_array_equal(weights[name], want[name])
    template = jax.eval_shape(lambda: {"w": jnp.zeros(3), "b": jnp.zeros(())})
    typed = kt.reconstruct_ema_from_folder(folder, (0.07,), target=template)[0.07]
    np.testing.assert_allclose(typed["w"], run.state.ema["w"], rtol=1e-5)


def test_the_written_reconstructions_load_like_a_checkpoint_folder(smooth, tmp_path):
    folder, run = smooth
    kj.save_model_recipe(folder, "my_models:build", {"width": 3})
    try:
        written = kt.write_posthoc_ema(folder, tmp_path / "out", (0.07, 0.1))
    finally:
        (folder / kj.MODEL_FILE).unlink()
    assert [p.name for p in written] == ["ema-0.070", "ema-0.100"]
    params = kj.load_params(written[0], {"w": jnp.zeros(3), "b": jnp.zeros(())})
    np.testing.assert_allclose(params["w"], run.state.ema["w"], rtol=1e-5)
    assert kj.load_model_recipe(written[1]) == ("my_models:build", {"width": 3})
    position, _, metadata = posthoc_module.checkpoint_fields(written[1])
    assert position == 400 and metadata["posthoc_ema"]["sigma_rel"] == 0.1
    assert metadata["posthoc_ema"]["snapshots"] == 40 and "losses" not in metadata
    with pytest.raises(ValueError, match="does not match the state being restored"):  # not a train state
        kj.load_checkpoint(written[0], kj.TrainState.create(params, optax.sgd(0.1)))
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_the_reconstruct_ema_command_writes_the_same_folders(smooth, tmp_path, capsys):
    from karras_jax.cli import main

    folder, run = smooth
    assert main(["reconstruct-ema", "--checkpoint", str(folder), "--sigma-rel", "0.07,0.1", "--out",
                 str(tmp_path / "cli"), "--step", "300"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'cli' / 'ema-0.070'}",
                                                    f"wrote {tmp_path / 'cli' / 'ema-0.100'}"]
    params = kj.load_params(tmp_path / "cli" / "ema-0.070", {"w": jnp.zeros(3), "b": jnp.zeros(())})
    want = kt.reconstruct_ema_from_folder(folder, [0.07], step=300)[0.07]
    np.testing.assert_array_equal(params["w"], want["w"])
    for argv, message in ((["--sigma-rel", "0.3"], "sigma_rel"), (["--sigma-rel", "a,b"], "--sigma-rel"),
                          (["--sigma-rel", "0.1", "--step", "7"], "step")):
        with pytest.raises(SystemExit) as refused:
            main(["reconstruct-ema", "--checkpoint", str(folder), "--out", str(tmp_path / "bad"), *argv])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reconstruct-ema", "--checkpoint", str(tmp_path), "--sigma-rel", "0.1", "--out",
              str(tmp_path / "x")])
    assert "argument --checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Checkpoints: profiles round trip, older states load as before

def test_a_state_without_profiles_checkpoints_exactly_its_four_fields_as_before(tmp_path):
    import flax.serialization

    state = kj.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1))
    assert state.ema_profiles == () and state.ema_sigma_rels == ()
    assert sorted(flax.serialization.to_state_dict(state)) == ["ema", "opt_state", "params", "step"]


def test_a_state_with_profiles_round_trips_and_refuses_other_widths(tmp_path):
    optimizer = optax.sgd(0.1)
    step_fn = kj.make_train_step(lambda p, b, k: jnp.sum((p["w"] - b) ** 2), optimizer)
    state = kj.TrainState.create({"w": jnp.ones(2)}, optimizer, ema_profiles=(0.05, 0.1))
    state, _ = step_fn(state, jnp.zeros(2), jax.random.key(0))
    kj.save_checkpoint(tmp_path, state, position=1, key=jax.random.key(0))
    back = kj.load_checkpoint(tmp_path, kj.TrainState.create({"w": jnp.zeros(2)}, optimizer,
                                                             ema_profiles=(0.05, 0.1))).state
    assert back.ema_sigma_rels == (0.05, 0.1)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, state)
    with pytest.raises(ValueError, match=r"widths \(0.05, 0.1\), the state being restored \(0.05, 0.2\)"):
        kj.load_checkpoint(tmp_path, kj.TrainState.create({"w": jnp.zeros(2)}, optimizer,
                                                          ema_profiles=(0.05, 0.2)))
    with pytest.raises(ValueError, match=r"unexpected \['ema_profiles"):
        kj.load_checkpoint(tmp_path, kj.TrainState.create({"w": jnp.zeros(2)}, optimizer))
    kj.save_checkpoint(tmp_path, kj.TrainState.create({"w": jnp.ones(2)}, optimizer), position=0,
                       key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"missing \['ema_profiles/0/w"):
        kj.load_checkpoint(tmp_path, state)


@pytest.mark.parametrize("profiles, error, match", [
    ((0.05, 0.3), ValueError, r"ema_profiles\[1\] must be in \(0, 1/sqrt\(12\) = 0.2887\)"),
    ((0.05, 0.05), ValueError, "ema_profiles must not repeat a width"),
    ((0.05, "0.1"), TypeError, r"ema_profiles\[1\] must be a real number"),
    (0.05, TypeError, "ema_profiles must be a tuple of EMA widths"),
])
def test_bad_ema_profiles_are_refused_naming_the_entry(profiles, error, match):
    with pytest.raises(error, match=match):
        kj.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1), ema_profiles=profiles)


# ----------------------------------------------------------------------------------------------
# The loop's snapshots

def test_snapshot_every_without_a_folder_or_profiles_is_refused_before_any_step(tmp_path):
    optimizer = optax.sgd(0.1)
    step_fn = kj.make_train_step(quadratic_loss, optimizer)
    plain = kj.TrainState.create(dict(TARGET), optimizer)
    tracked = kj.TrainState.create(dict(TARGET), optimizer, ema_profiles=(0.05, 0.1))
    calls = []

    def batch_at(s):
        calls.append(s)
        return 0

    with pytest.raises(ValueError, match="snapshot_every needs a state that tracks EMA profiles"):
        kj.fit(step_fn, plain, batch_at, jax.random.key(0), 4, folder=tmp_path, snapshot_every=2,
               progress=False)
    with pytest.raises(ValueError, match="give folder too"):
        kj.fit(step_fn, tracked, batch_at, jax.random.key(0), 4, snapshot_every=2, progress=False)
    with pytest.raises(ValueError, match="snapshot_every must be an int >= 1"):
        kj.fit(step_fn, tracked, batch_at, jax.random.key(0), 4, folder=tmp_path, snapshot_every=0,
               progress=False)
    assert calls == [] and not (tmp_path / kt.SNAPSHOT_FOLDER).exists()


def test_snapshots_are_written_at_every_multiple_and_hold_each_profiles_step_and_width(tmp_path):
    optimizer = optax.sgd(0.1)
    step_fn = kj.make_train_step(quadratic_loss, optimizer)
    state = kj.TrainState.create({"w": jnp.ones(3), "b": jnp.ones(())}, optimizer, ema_profiles=(0.05, 0.1))
    run = kj.fit(step_fn, state, lambda s: 0, jax.random.key(0), 10, folder=tmp_path, snapshot_every=3,
                 progress=False)
    names = sorted(p.name for p in (tmp_path / kt.SNAPSHOT_FOLDER).iterdir())
    assert names == ["snapshot-000000003.msgpack", "snapshot-000000006.msgpack", "snapshot-000000009.msgpack"]
    last = kt.load_ema_snapshots(tmp_path)[-1]
    assert last.step == 9 and last.sigma_rels == (0.05, 0.1)
    assert run.state.step == 10  # the last step, 10, is not a multiple of 3: no snapshot


def test_a_damaged_or_missing_snapshot_is_named(tmp_path, smooth):
    with pytest.raises(FileNotFoundError, match="no EMA snapshots"):
        kt.load_ema_snapshots(tmp_path)
    folder = tmp_path / "run"
    (folder / kt.SNAPSHOT_FOLDER).mkdir(parents=True)
    source = smooth[0] / kt.SNAPSHOT_FOLDER
    for name in ("snapshot-000000010.msgpack", "snapshot-000000020.msgpack"):
        (folder / kt.SNAPSHOT_FOLDER / name).write_bytes((source / name).read_bytes())
    data = (source / "snapshot-000000030.msgpack").read_bytes()
    (folder / kt.SNAPSHOT_FOLDER / "snapshot-000000030.msgpack").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"snapshot-000000030.msgpack is not a readable EMA snapshot: the "
                                         "file is truncated or corrupt"):
        kt.reconstruct_ema_from_folder(folder, [0.07])
    (folder / kt.SNAPSHOT_FOLDER / "snapshot-000000030.msgpack").write_bytes(
        (source / "snapshot-000000040.msgpack").read_bytes())
    with pytest.raises(ValueError, match="it holds step 40, its name says 30"):
        kt.load_ema_snapshots(folder)
    with pytest.raises(ValueError, match=r"step must be the step of a snapshot \(10, 20, 30\), got 15"):
        kt.reconstruct_ema_from_folder(folder, [0.07], step=15)
    with pytest.raises(ValueError, match="does not match the weights being restored"):
        kt.load_ema_snapshots(smooth[0], target={"w": jnp.zeros(4), "b": jnp.zeros(())})


def test_bad_reconstruction_arguments_are_named(smooth, tmp_path):
    folder, _ = smooth
    snapshots = kt.load_ema_snapshots(folder)[:3]
    with pytest.raises(ValueError, match=r"sigma_rel must be in \(0, 1/sqrt\(12\) = 0.2887\), got 0.5"):
        kt.reconstruct_ema(snapshots, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        kt.reconstruct_ema([], 0.1)
    with pytest.raises(TypeError, match="snapshots must be a sequence of kj.EmaSnapshot"):
        kt.reconstruct_ema(folder, 0.1)
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        kt.reconstruct_ema(snapshots, 0.1, step=0)
    with pytest.raises(ValueError, match=r"sigma_rels\[1\] must be in"):
        kt.reconstruct_ema_from_folder(folder, [0.1, 0.4])
    with pytest.raises(ValueError, match="sigma_rels must differ at 3 decimals"):
        kt.write_posthoc_ema(folder, tmp_path / "out", [0.1, 0.1001])
    assert not (tmp_path / "out").exists()


def test_save_ema_snapshot_refuses_a_state_without_profiles_or_updates(tmp_path):
    with pytest.raises(ValueError, match="state tracks no EMA profiles"):
        kt.save_ema_snapshot(tmp_path, kj.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1)))
    with pytest.raises(ValueError, match="state.step must be >= 1"):
        kt.save_ema_snapshot(tmp_path, kj.TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1),
                                                            ema_profiles=(0.1,)))
    with pytest.raises(TypeError, match="kj.TrainState with ema_profiles"):
        kt.save_ema_snapshot(tmp_path, {"w": jnp.ones(2)})


# ----------------------------------------------------------------------------------------------
# A killed run, resumed, keeps the snapshot sequence whole

class Killed(BaseException):
    """Stands for SIGKILL: nothing of fit's catches it; the files are left as a kill leaves them."""


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, c_noise):
        h = jnp.concatenate([x, jnp.broadcast_to(c_noise.reshape(-1, 1), (x.shape[0], 1))], -1)
        return nn.Dense(2)(nn.silu(nn.Dense(16)(h)))


NET = Net()
APPLY = kj.precondition(lambda p, x, c, cond: NET.apply(p, x, c), "edm")
ADAM = optax.adam(1e-2)
STEP_FN = kj.make_train_step(lambda p, b, k: kj.edm_loss(APPLY, p, b, k), ADAM)
DATA = np.random.default_rng(0).normal(0.5, 0.3, (64, 2)).astype(np.float32)
STEPS = 16  # checkpoints at 6, 12, 16; snapshots at 4, 8, 12, 16


def edm_run(folder, kill_at=None, where=None, monkeypatch=None):
    """A tiny EDM run with profiles (0.05, 0.10); ``where`` says where step ``kill_at`` is killed:
    "step" before its batch, "snapshot-write" with its snapshot half written to a temporary file,
    "after-snapshot" with its snapshot in place and its checkpoint not yet written."""
    def batch_at(step):
        if where == "step" and step == kill_at:
            raise Killed
        return jnp.asarray(DATA[np.random.default_rng([1, step]).permutation(64)[:16]])

    if where == "snapshot-write":
        real_write = posthoc_module.atomic_write

        def dying_write(path, write):
            if path.name != f"snapshot-{kill_at:09d}.msgpack":
                return real_write(path, write)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False) as f:
                write(f)
                f.truncate(f.tell() // 2)
            raise Killed

        monkeypatch.setattr(posthoc_module, "atomic_write", dying_write)
    if where == "after-snapshot":
        real_snapshot = loop_module.save_ema_snapshot

        def snapshot_then_die(folder, state):
            real_snapshot(folder, state)
            if int(state.step) == kill_at:
                raise Killed

        monkeypatch.setattr(loop_module, "save_ema_snapshot", snapshot_then_die)
    params = NET.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    state = kj.TrainState.create(params, ADAM, ema_profiles=(0.05, 0.10))
    return kj.fit(STEP_FN, state, batch_at, jax.random.key(7), STEPS, folder=folder, checkpoint_every=6,
                  snapshot_every=4, progress=False)


def _snapshots(folder):
    return {p.name: p.read_bytes() for p in sorted((Path(folder) / kt.SNAPSHOT_FOLDER).glob("snapshot-*"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    run = edm_run(folder)
    return _snapshots(folder), run.state


KILLS = [(10, "step", 6),  # snapshot 8 lies after checkpoint 6: written again
         (12, "snapshot-write", 6),  # half of snapshot 12 in a temporary file
         (12, "after-snapshot", 6)]  # snapshot 12 in place, its checkpoint not yet


@pytest.mark.parametrize("kill_at, where, resumes_at", KILLS)
def test_a_run_killed_and_resumed_has_every_snapshot_once_bitwise_as_an_uninterrupted_run(
        tmp_path, uninterrupted, monkeypatch, kill_at, where, resumes_at):
    with pytest.raises(Killed):
        edm_run(tmp_path, kill_at, where, monkeypatch)
    monkeypatch.undo()
    before = set(_snapshots(tmp_path))
    if where == "snapshot-write":
        assert list((tmp_path / kt.SNAPSHOT_FOLDER).glob(".snapshot-000000012.msgpack.*.tmp"))
    resumed = edm_run(tmp_path)
    assert resumed.resumed_from == resumes_at
    snapshots, state = uninterrupted
    got = _snapshots(tmp_path)
    assert list(got) == list(snapshots) == [f"snapshot-{s:09d}.msgpack" for s in (4, 8, 12, 16)]
    assert before < set(got)
    for name in got:
        assert got[name] == snapshots[name], name
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.state, state)
    assert not list(tmp_path.rglob(".*.tmp"))
