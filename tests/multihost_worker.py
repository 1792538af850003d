"""One process of the two-process sampling test (run by tests/test_sampler_sharding.py).

    python multihost_worker.py PROCESS_ID PORT OUT.npz

Joins a 2-process JAX cluster on 127.0.0.1:PORT (4 CPU devices each, 8 in all), builds the
global batch of keys and conditioning from global seed indices with
``jax.make_array_from_process_local_data``, samples it with ``kj.make_sharded_sampler``
over an 8-device mesh, then again with a tensor-parallel MLP whose weights are split over the
model axis of a (data=2, model=4) mesh, and writes this process's addressable shards of both
with their batch offsets to OUT.npz. Not a test module (no ``test_`` prefix); everything runs under
``__main__`` so that importing it (pytest's doctest collection) has no effect.
"""

import os
import sys

GLOBAL_BATCH = 16
NUM_STEPS = 5
SEED = 1234
SAMPLE_SHAPE = (3,)
CONFIG = dict(sigma_min=0.002, sigma_max=80.0, s_noise=1.007, s_churn=10.0, s_min=0.05, s_max=50.0)
MEAN = (-1.0, 0.5, 2.0)
STD = 0.7


def global_keys_and_cond(indices):
    """Keys and conditioning of the given global sample indices (same on every process)."""
    import jax
    import jax.numpy as jnp

    indices = jnp.asarray(indices, jnp.uint32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(SEED), i))(indices)
    shift = 0.1 * indices.astype(jnp.float32)
    return keys, shift


def mlp_params():
    """The tensor-parallel MLP's weights, as NumPy float32 (the same on every process)."""
    rng = __import__("numpy").random.default_rng(7)
    return {"w1": rng.normal(size=(3, 64)).astype("float32") / 3**0.5,
            "w2": rng.normal(size=(64, 3)).astype("float32") / 8.0}


def mlp_apply(params, x, sigma, cond):
    """A two-layer denoiser: column-split first kernel, row-split second (an all-reduce)."""
    import jax.numpy as jnp

    return x / (1 + sigma**2) + 0.1 * (jnp.tanh(x @ params["w1"]) @ params["w2"])


def apply_fn(params, x, sigma, cond):
    """Gaussian data N(mean + cond_b, std^2 I): an elementwise, per-sample denoiser."""
    mean, std = params
    var = std**2
    mu = mean[None, :] + cond[:, None]
    return (var * x + sigma**2 * mu) / (var + sigma**2)


def main(process_id: int, port: int, out_path: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    import jax.numpy as jnp
    import numpy as np

    import karras_jax as kj

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = jax.make_mesh((8,), ("data",))
    sharding = kj.batch_sharding(mesh)
    per_process = GLOBAL_BATCH // jax.process_count()
    local_indices = np.arange(process_id * per_process, (process_id + 1) * per_process)
    local_keys, local_shift = global_keys_and_cond(local_indices)
    raw = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(local_keys)))
    keys = jax.random.wrap_key_data(raw)
    cond = jax.make_array_from_process_local_data(sharding, np.asarray(local_shift))
    assert keys.shape == (GLOBAL_BATCH,) and not keys.is_fully_addressable

    cfg = kj.KarrasVeConfig(**CONFIG)
    state = kj.set_timesteps(cfg, NUM_STEPS, "karras")
    sampler = kj.make_sharded_sampler(apply_fn, state, cfg, SAMPLE_SHAPE, mesh)
    params = (jnp.asarray(MEAN, jnp.float32), jnp.asarray(STD, jnp.float32))
    out = sampler(params, keys, cond)
    assert out.shape == (GLOBAL_BATCH, *SAMPLE_SHAPE)
    assert out.sharding.is_equivalent_to(sharding, out.ndim), out.sharding

    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    pod = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    specs = {"w1": P(None, "model"), "w2": P("model", None)}
    weights = {name: jax.make_array_from_callback(w.shape, NamedSharding(pod, specs[name]),
                                                  lambda i, w=w: w[i]) for name, w in mlp_params().items()}
    pod_keys = jax.random.wrap_key_data(jax.make_array_from_process_local_data(
        NamedSharding(pod, P("data")), np.asarray(jax.random.key_data(local_keys))))
    tp = kj.make_sharded_sampler(mlp_apply, state, cfg, SAMPLE_SHAPE, pod)(weights, pod_keys)
    assert {name: w.sharding.spec for name, w in weights.items()} == specs

    def local_blocks(array):
        shards = {s.index[0].start: np.asarray(s.data) for s in array.addressable_shards}
        return np.asarray(sorted(shards)), np.stack([shards[k] for k in sorted(shards)])

    starts, blocks = local_blocks(out)
    tp_starts, tp_blocks = local_blocks(tp)
    np.savez(out_path, starts=starts, blocks=blocks, tp_starts=tp_starts, tp_blocks=tp_blocks,
             process_index=jax.process_index())
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
