"""A sample depends only on its own key (and cond): alone, anywhere in a batch, on 1 or 8
devices, and on two processes joined by jax.distributed."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import multihost_worker as worker
import numpy as np
import pytest
from jax.sharding import NamedSharding
from sampler_utils import (
    GAUSS,
    edm_config,
    fast_sample,
    float32_tolerance,
    gauss_denoise,
    keys_for,
    mix_denoise,
)

import karras_jax as kj
from karras_jax.analytic import GaussianData

COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")

CFG = edm_config()
STATE = kj.set_timesteps(CFG, 7, "karras")


# --- batch independence -------------------------------------------------------------------


# Bitwise or not? GaussianData's denoiser is elementwise, so every sample goes through the same
# arithmetic whatever the batch. Within one compiled program (same batch size) results are
# bitwise equal wherever a key sits. Across batch sizes XLA's CPU backend emits differently
# vectorised loops (full vectors vs a scalar tail) and LLVM contracts a*b + c into fused
# multiply-adds in one and not the other: the results then differ by float32 round-off
# (a few ulps, amplified by Heun's (x - D) / sigma at small sigma). Without FMA instructions
# (--xla_cpu_max_isa=AVX) they are bitwise equal again: test_bitwise_without_fma checks that
# in a subprocess.


def test_gaussian_sample_at_any_position_in_a_batch_of_64_bitwise():
    keys = keys_for(20, 64)
    full = np.asarray(fast_sample(gauss_denoise, keys, STATE, CFG, (3,)))
    # Every key at another position (a permutation), and next to different companions.
    perm = np.random.default_rng(0).permutation(64)
    permuted = np.asarray(fast_sample(gauss_denoise, keys[perm], STATE, CFG, (3,)))
    np.testing.assert_array_equal(permuted, full[perm])
    others = keys_for(21, 64).at[perm[:5]].set(keys[perm[:5]])
    mixed = np.asarray(fast_sample(gauss_denoise, others, STATE, CFG, (3,)))
    np.testing.assert_array_equal(mixed[perm[:5]], full[perm[:5]])
    assert not np.allclose(np.delete(mixed, perm[:5], axis=0), np.delete(full, perm[:5], axis=0))


def test_gaussian_sample_alone_equals_its_place_in_a_batch_of_64():
    keys = keys_for(20, 64)
    full = np.asarray(fast_sample(gauss_denoise, keys, STATE, CFG, (3,)))
    tol = float32_tolerance(kj.initial_noise(keys, STATE, (3,)))
    for b in (0, 17, 63):
        alone = np.asarray(fast_sample(gauss_denoise, keys[b:b + 1], STATE, CFG, (3,)))
        np.testing.assert_allclose(alone[0], full[b], rtol=1e-5, atol=tol)  # see above


def test_mixture_sample_alone_equals_any_position_in_a_batch_of_64():
    # The mixture's denoiser reduces over components and dimensions; XLA's CPU backend picks
    # different (vectorised) reduction kernels for different batch sizes, so results agree to
    # float32 round-off rather than bitwise (also without FMA).
    keys = keys_for(22, 64)
    full = np.asarray(fast_sample(mix_denoise, keys, STATE, CFG, (2,)))
    for b in (0, 31, 63):
        alone = np.asarray(fast_sample(mix_denoise, keys[b:b + 1], STATE, CFG, (2,)))
        np.testing.assert_allclose(alone[0], full[b], rtol=1e-5, atol=1e-5)
    perm = np.random.default_rng(1).permutation(64)
    permuted = np.asarray(fast_sample(mix_denoise, keys[perm], STATE, CFG, (2,)))
    np.testing.assert_allclose(permuted, full[perm], rtol=1e-5, atol=1e-5)


BITWISE_SCRIPT = """
import jax, numpy as np, karras_jax as kj
from sampler_utils import edm_config, fast_sample, gauss_denoise, keys_for
assert jax.device_count() == 8
cfg = edm_config()
state = kj.set_timesteps(cfg, 5, "karras")
keys = keys_for(20, 64)
full = np.asarray(fast_sample(gauss_denoise, keys, state, cfg, (3,)))
for b in (0, 17, 63):
    alone = np.asarray(fast_sample(gauss_denoise, keys[b:b + 1], state, cfg, (3,)))
    np.testing.assert_array_equal(alone[0], full[b])
mesh = jax.make_mesh((8,), ("data",))
out = kj.sample_sharded(gauss_denoise, keys[:16], state, cfg, (3,), mesh)  # 2 per device
np.testing.assert_array_equal(np.asarray(out), full[:16])
print("BITWISE OK")
"""


def test_bitwise_without_fma():
    # The contract's "bitwise where the network is batch-independent", with the one
    # compiler freedom that breaks it (FMA contraction) taken away.
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parent),
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX")
    result = subprocess.run([sys.executable, "-c", BITWISE_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).parent)
    assert result.returncode == 0 and "BITWISE OK" in result.stdout, result.stderr[-3000:]


def test_sample_depends_on_its_own_cond_only():
    def denoise(x, sigma, cond):
        mu = GAUSS.mean[None, :] + cond["shift"][:, None]
        return (GAUSS.std**2 * x + sigma**2 * mu) / (GAUSS.std**2 + sigma**2)

    run = jax.jit(lambda k, c: kj.sample(denoise, k, STATE, CFG, (3,), c))
    keys = keys_for(23, 8)
    shift = jnp.arange(8.0)
    full = np.asarray(run(keys, {"shift": shift}))
    perm = np.random.default_rng(2).permutation(8)
    permuted = np.asarray(run(keys[perm], {"shift": shift[perm]}))
    np.testing.assert_array_equal(permuted, full[perm])
    # Changing the other samples' cond leaves sample 0 alone.
    changed = np.asarray(run(keys, {"shift": shift.at[1:].add(10.0)}))
    np.testing.assert_array_equal(changed[0], full[0])
    assert not np.allclose(changed[1:], full[1:])
    # Each sample equals the unconditional sampler run alone with that sample's mean.
    alone = jax.jit(lambda k, m: kj.sample(GaussianData(m, GAUSS.std).denoise, k, STATE, CFG, (3,)))
    tol = float32_tolerance(kj.initial_noise(keys, STATE, (3,)))
    for b in (0, 5):
        np.testing.assert_allclose(np.asarray(alone(keys[b:b + 1], GAUSS.mean + shift[b])[0]), full[b],
                                   rtol=1e-5, atol=tol)


# --- 8 devices ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 host CPU devices"
    return jax.make_mesh((8,), ("data",))


def _assert_batch_sharded(out, mesh):
    assert isinstance(out.sharding, NamedSharding)
    assert out.sharding.mesh.shape == mesh.shape
    assert out.sharding.spec[0] == "data"
    assert out.sharding.is_equivalent_to(kj.batch_sharding(mesh), out.ndim)
    assert len(out.addressable_shards) == 8
    assert {shard.data.shape for shard in out.addressable_shards} == {(out.shape[0] // 8, *out.shape[1:])}


def _blockwise(run, keys, block):
    """The one-device result computed in the per-device block size: the same code as each device runs."""
    return np.concatenate([np.asarray(run(keys[i:i + block])) for i in range(0, keys.shape[0], block)])


def test_sample_sharded_equals_one_device(mesh):
    keys = keys_for(24, 16)
    out = kj.sample_sharded(gauss_denoise, keys, STATE, CFG, (3,), mesh)
    _assert_batch_sharded(out, mesh)
    # Bitwise against one device running the same per-device batch (2 samples: same code) ...
    blocks = _blockwise(lambda k: fast_sample(gauss_denoise, k, STATE, CFG, (3,)), keys, 2)
    np.testing.assert_array_equal(np.asarray(out), blocks)
    # ... and to float32 round-off against the whole batch on one device (FMA: see above).
    one = np.asarray(fast_sample(gauss_denoise, keys, STATE, CFG, (3,)))
    np.testing.assert_allclose(np.asarray(out), one, rtol=1e-5,
                               atol=float32_tolerance(kj.initial_noise(keys, STATE, (3,))))


def test_sample_sharded_mixture_and_euler(mesh):
    keys = keys_for(25, 16)
    one = np.asarray(fast_sample(mix_denoise, keys, STATE, CFG, (2,), solver="euler"))
    out = kj.sample_sharded(mix_denoise, keys, STATE, CFG, (2,), mesh, solver="euler")
    _assert_batch_sharded(out, mesh)
    np.testing.assert_allclose(np.asarray(out), one, rtol=1e-5, atol=1e-5)  # reductions: see above


def _gauss_apply(params, x, sigma, cond):
    mean, std = params
    mu = mean[None, :] + cond[:, None]
    return (std**2 * x + sigma**2 * mu) / (std**2 + sigma**2)


def test_make_sharded_sampler(mesh):
    sampler = kj.make_sharded_sampler(_gauss_apply, STATE, CFG, (3,), mesh)
    keys = keys_for(26, 16)
    cond = jnp.linspace(-1.0, 1.0, 16)
    params = (GAUSS.mean, GAUSS.std)
    reference = kj.make_sampler(_gauss_apply, STATE, CFG, (3,))
    out = sampler(params, keys, cond)
    _assert_batch_sharded(out, mesh)
    blocks = np.concatenate([np.asarray(reference(params, keys[i:i + 2], cond[i:i + 2]))
                             for i in range(0, 16, 2)])
    np.testing.assert_array_equal(np.asarray(out), blocks)
    # Keys (and cond) already placed on the mesh, raw uint32 keys, new config: same program.
    sharding = kj.batch_sharding(mesh)
    placed = sampler(params, jax.device_put(keys, sharding), jax.device_put(cond, sharding))
    np.testing.assert_array_equal(np.asarray(placed), np.asarray(out))
    raw = sampler(params, jax.random.key_data(keys), cond)
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(out))
    new_cfg = CFG.replace(s_churn=0.0)
    no_churn = sampler((GAUSS.mean + 1, GAUSS.std), keys, cond, config=new_cfg)
    expected = reference((GAUSS.mean + 1, GAUSS.std), keys, cond, config=new_cfg)
    np.testing.assert_allclose(np.asarray(no_churn), np.asarray(expected), rtol=1e-5,
                               atol=float32_tolerance(kj.initial_noise(keys, STATE, (3,))))
    # Two programs: the churning default, and the draw-free one for the s_churn = 0 override.
    assert sampler.jitted._cache_size() == 2
    sampler(params, keys, cond, config=CFG.replace(s_churn=5.0))  # churning again: no new program
    assert sampler.jitted._cache_size() == 2


def _collectives(hlo: str) -> list:
    return [name for name in COLLECTIVES if name in hlo]


def test_sharded_program_has_no_collectives(mesh):
    keys = jax.device_put(keys_for(27, 16), kj.batch_sharding(mesh))
    cond = jax.device_put(jnp.zeros(16), kj.batch_sharding(mesh))
    params = (GAUSS.mean, GAUSS.std)
    sampler = kj.make_sharded_sampler(_gauss_apply, STATE, CFG, (3,), mesh)
    hlo = sampler.jitted.lower(params, keys, cond, None, STATE).compile().as_text()
    assert not _collectives(hlo), _collectives(hlo)
    # The detector does see a collective: a batch mean over the sharded axis needs one.
    control = jax.jit(lambda k: jnp.mean(jax.random.key_data(k).astype(jnp.float32)))
    assert _collectives(control.lower(keys).compile().as_text())


def test_sharded_sampler_bad_input(mesh):
    sampler = kj.make_sharded_sampler(_gauss_apply, STATE, CFG, (3,), mesh)
    params = (GAUSS.mean, GAUSS.std)
    with pytest.raises(ValueError, match="keys"):
        sampler(params, keys_for(0, 12), jnp.zeros(12))  # 12 does not divide over 8 devices
    with pytest.raises(ValueError, match="cond"):
        sampler(params, keys_for(0, 16), jnp.zeros(8))
    with pytest.raises(ValueError, match="cond must have leading dimension B=16"):
        sampler(params, keys_for(0, 16), jnp.float32(1.0))  # a scalar cannot be split over the mesh
    with pytest.raises(ValueError, match="axis_name"):
        kj.make_sharded_sampler(_gauss_apply, STATE, CFG, (3,), mesh, axis_name="model")(
            params, keys_for(0, 16), jnp.zeros(16))
    with pytest.raises(ValueError, match="keys"):
        sampler(params, jax.random.key(0), jnp.zeros(16))


# --- two processes ------------------------------------------------------------------------


def _free_port(rng) -> int:
    """A free port outside the kernel's ephemeral range (32768-60999 on Linux), so that no
    outgoing connection is handed it between this check and the coordinator's bind."""
    while True:
        port = int(rng.integers(20000, 32000))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _run_two_processes(tmp_path, rng):
    """Starts both workers; returns (returncodes, logs, output paths). A worker that fails
    brings the other down at once instead of leaving it waiting for its peer."""
    script = Path(__file__).with_name("multihost_worker.py")
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    port = _free_port(rng)
    outs = [tmp_path / f"port{port}_process{i}.npz" for i in range(2)]
    logs = [tmp_path / f"port{port}_process{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen([sys.executable, str(script), str(i), str(port), str(outs[i])],
                                              env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs], outs


def test_two_processes_equal_single_process(tmp_path):
    rng = np.random.default_rng()
    for _attempt in range(3):
        codes, logs, outs = _run_two_processes(tmp_path, rng)
        # Retry only when the coordinator's port was taken meanwhile (another job on the
        # machine); any other failure is a failure.
        if codes != [0, 0] and "Failed to start RPC server" in logs[0]:
            continue
        break
    assert codes == [0, 0], "\n\n".join(f"process {i} (exit {c}):\n{log[-3000:]}"
                                         for i, (c, log) in enumerate(zip(codes, logs, strict=True)))

    # The single-process result for the same global seed indices, on one device: bitwise when
    # computed in the per-device block size (2 samples, the same code), to float32 round-off
    # for the whole batch at once (FMA contraction differs: see the top of this file).
    cfg = kj.KarrasVeConfig(**worker.CONFIG)
    state = kj.set_timesteps(cfg, worker.NUM_STEPS, "karras")
    keys, shift = worker.global_keys_and_cond(np.arange(worker.GLOBAL_BATCH))
    params = (jnp.asarray(worker.MEAN, jnp.float32), jnp.asarray(worker.STD, jnp.float32))
    sampler = kj.make_sampler(worker.apply_fn, state, cfg, worker.SAMPLE_SHAPE)
    whole = np.asarray(sampler(params, keys, shift))
    tol = float32_tolerance(kj.initial_noise(keys, state, worker.SAMPLE_SHAPE))

    covered = []
    for i, path in enumerate(outs):
        data = np.load(path)
        assert int(data["process_index"]) == i
        assert len(data["starts"]) == 4  # 4 local devices, 2 samples each
        for start, block in zip(data["starts"], data["blocks"], strict=True):
            stop = start + len(block)
            np.testing.assert_array_equal(block, np.asarray(sampler(params, keys[start:stop],
                                                                    shift[start:stop])))
            np.testing.assert_allclose(block, whole[start:stop], rtol=1e-5, atol=tol)
            covered += range(start, stop)
    assert sorted(covered) == list(range(worker.GLOBAL_BATCH))

    # Weights split over the model axis across both processes: the one-device run, to 1e-5.
    tp_one = np.asarray(kj.make_sampler(worker.mlp_apply, state, cfg, worker.SAMPLE_SHAPE)(
        jax.tree.map(jnp.asarray, worker.mlp_params()), keys))
    tp_covered = []
    for path in outs:
        data = np.load(path)
        for start, block in zip(data["tp_starts"], data["tp_blocks"], strict=True):
            want = tp_one[start:start + len(block)]
            assert np.max(np.abs(block - want)) <= 1e-5 * np.max(np.abs(tp_one))
            tp_covered += range(start, start + len(block))
    assert sorted(tp_covered) == list(range(worker.GLOBAL_BATCH))


def test_one_device_mesh_and_unsharded_inputs_are_placed_for_the_user():
    # A single-device array counts as "equivalent" to any sharding over a 1-device mesh, but
    # shard_map with explicit mesh axes compares specs: the helper must place keys and cond.
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    data = GaussianData(mean=jnp.float32(0.2), std=jnp.float32(0.4))
    sampler = kj.make_sharded_sampler(lambda p, x, s, c: data.denoise(x, s) + 0 * c, STATE, CFG,
                                      (3,), mesh)
    keys = jax.random.split(jax.random.key(4), 4)
    out = sampler(None, keys, jnp.zeros((4, 1)))
    want = kj.sample(lambda x, s, c: data.denoise(x, s), keys, STATE, CFG, (3,))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_sharded_sampler_inside_the_callers_jit(mesh):
    data = GaussianData(mean=jnp.float32(0.2), std=jnp.float32(0.4))
    sampler = kj.make_sharded_sampler(lambda p, x, s, c: data.denoise(x, s) + p * c, STATE, CFG,
                                      (3,), mesh)
    keys = jax.random.split(jax.random.key(4), 16)
    cond = jnp.zeros((16, 1))
    inside = jax.jit(lambda p, k, c: sampler(p, k, c))(jnp.float32(1.0), keys, cond)
    np.testing.assert_allclose(inside, sampler(jnp.float32(1.0), keys, cond), rtol=1e-6, atol=1e-6)


def test_make_sharded_sampler_inpaints_with_a_shared_or_a_per_sample_mask(mesh):
    state = kj.set_timesteps(CFG.replace(s_churn=0.0), 8, "karras")
    apply_fn = lambda p, x, s, c: gauss_denoise(x, s)  # noqa: E731
    keys = keys_for(28, 16)
    mask, known = jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([2.0, 0.0, 0.0])
    masks = jnp.tile(mask, (16, 1)).at[3].set(jnp.asarray([0.0, 1.0, 0.0]))
    for jump in (None, (3, 2)):
        sampler = kj.make_sharded_sampler(apply_fn, state, None, (3,), mesh, jump=jump)
        reference = kj.make_sampler(apply_fn, state, None, (3,), jump=jump)
        for m in (mask, masks):  # shared: replicated; (B, *sample_shape): split along the batch
            out = sampler(None, keys, mask=m, known=known)
            _assert_batch_sharded(out, mesh)
            blocks = np.concatenate([np.asarray(reference(None, keys[i:i + 2], mask=m if m.ndim == 1 else
                                                          m[i:i + 2], known=known)) for i in range(0, 16, 2)])
            np.testing.assert_array_equal(np.asarray(out), blocks)
        assert np.asarray(out)[3, 1] == 0.0 and np.all(np.asarray(out)[[0, 4, 15], 0] == 2.0)
    rbg = jax.random.split(jax.random.key(5, impl="rbg"), 16)  # the shard_map path: specs for mask, known
    np.testing.assert_array_equal(np.asarray(sampler(None, rbg, mask=masks, known=known)),
                                  np.asarray(reference(None, rbg, mask=masks, known=known)))
