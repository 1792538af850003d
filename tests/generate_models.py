"""MODELs for ``karras-jax generate --model ...`` in the tests.

``generate_models:gaussian_images``: images (4, 4, 1), written as (4, 4), from Gaussian data
N(mean_c, 0.5^2 I) with class c = seed % 3 shifting the mean (class 3 = no class, mean 0): an
exact conditional denoiser, so guidance, postprocessing and PNG writing can be tested without
a trained network.

``generate_models:nan_at_seed_7`` / ``inf_at_seeds_3_and_12``: a unit Gaussian's exact denoiser
that returns NaN (inf) for those seeds: a model that breaks on some seeds.

``generate_models:tiny_mlp``: a small EDM-preconditioned MLP on 2-D points, the model a
``kj.fit`` folder records (its ``params`` are shapes only: the checkpoint fills them in).

``generate_models:tp_mlp`` / ``tp_mlp_sharded`` / ``tp_mlp_local_sharded``: one Megatron-style
MLP denoiser (column-split first kernel, row-split second) with the same weights, replicated
(NumPy params), split over the "model" axis of a (data=2, model=n/2) mesh of ``jax.devices()``
(every process's devices), or of this process's ``jax.local_devices()``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import karras_jax as kj

MEANS = np.asarray([-1.0, 0.0, 1.0, 0.0], np.float32)
STD = 0.5


def _denoise(params, x, sigma, cond):
    mean = jnp.asarray(params)[cond].reshape((-1, 1, 1, 1))
    return (x * STD**2 + mean * sigma**2) / (STD**2 + sigma**2)


def gaussian_images():
    return kj.GenerateModel(
        apply_fn=_denoise, params=MEANS, sample_shape=(4, 4, 1),
        config=kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=10.0),
        schedule="karras", steps=8,
        cond_fn=lambda seeds: jnp.asarray(np.asarray(seeds) % 3, jnp.int32), null_cond=3,
        postprocess=lambda x: x[..., 0],  # written as (4, 4) images
        image_range=(-2.0, 2.0), preprocess=lambda x: x[..., None])


def _breaks_at(seeds, value):
    bad = jnp.asarray(seeds)

    def denoise(params, x, sigma, cond):
        broken = jnp.any(cond[:, None] == bad[None, :], axis=1)[:, None]
        return jnp.where(broken, value, x / (1 + sigma**2))

    return kj.GenerateModel(
        apply_fn=denoise, params=None, sample_shape=(2,),
        config=kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0), schedule="karras", steps=4,
        cond_fn=lambda seeds: jnp.asarray(seeds, jnp.int32), identity=f"breaks_at:{seeds}:{value}")


def nan_at_seed_7():
    return _breaks_at([7], jnp.nan)


def inf_at_seeds_3_and_12():
    return _breaks_at([3, 12], jnp.inf)


def not_a_model():
    return 42


class _MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x, c_noise):
        h = jnp.concatenate([x, jnp.broadcast_to(jnp.reshape(c_noise, (-1, 1)), (x.shape[0], 1))], -1)
        return nn.Dense(2)(nn.silu(nn.Dense(self.hidden)(h)))


def tiny_mlp(hidden=8):
    net = _MLP(hidden)
    return kj.GenerateModel(
        apply_fn=kj.precondition(lambda p, x, c, cond: net.apply(p, x, c), "edm", sigma_shape="batch"),
        params=jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,))),
        sample_shape=(2,), config=kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=0.0),
        schedule="karras", steps=6)


def tiny_mlp_params(hidden=8, seed=0):
    """Real initial weights of :func:`tiny_mlp` (what a fit starts from)."""
    return _MLP(hidden).init(jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))


TP_DIM, TP_HIDDEN = 4, 64
TP_SPECS = {"w1": P(None, "model"), "w2": P("model", None)}


def tp_weights():
    """The tensor-parallel MLP's weights as NumPy float32 (the same in every process)."""
    rng = np.random.default_rng(11)
    return {"w1": (rng.normal(size=(TP_DIM, TP_HIDDEN)) / TP_DIM**0.5).astype(np.float32),
            "w2": (rng.normal(size=(TP_HIDDEN, TP_DIM)) / TP_HIDDEN**0.5).astype(np.float32)}


def _tp_apply(params, x, sigma, cond):
    hidden = jnp.tanh(x @ params["w1"])
    return x / (1 + sigma**2) + 0.3 * (hidden @ params["w2"])


def tp_mlp():
    return kj.GenerateModel(
        apply_fn=_tp_apply, params=tp_weights(), sample_shape=(TP_DIM,),
        config=kj.KarrasVeConfig(sigma_min=0.002, sigma_max=80.0, s_churn=10.0), schedule="karras", steps=6)


def tp_mesh(devices):
    """A (data=2, model=n/2) mesh of ``devices`` (n even; else data=1) with automatic (GSPMD) axes."""
    data = 2 if len(devices) % 2 == 0 else 1
    return jax.make_mesh((data, len(devices) // data), ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def place(weights, mesh, specs=TP_SPECS):
    """``weights`` (host arrays, the same in every process) placed on ``mesh`` as ``specs`` say."""
    def put(value, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return {name: put(value, specs[name]) for name, value in weights.items()}


def tp_mlp_sharded():
    return tp_mlp()._replace(params=place(tp_weights(), tp_mesh(jax.devices())))


def tp_mlp_local_sharded():
    return tp_mlp()._replace(params=place(tp_weights(), tp_mesh(jax.local_devices())))


def square_features(samples):
    """Features of the mixture's 2-D samples for ``generate(features=...)``: (x, x**2), dim 4."""
    samples = np.asarray(samples)
    return np.concatenate([samples, samples**2], axis=1)


def nan_features(samples):
    """Features that are NaN where the first coordinate is above 1 (a feature function that breaks)."""
    samples = np.asarray(samples, np.float32)
    return np.where(samples[:, :1] > 1.0, np.nan, samples)


def in_place_features(samples):
    """A feature function that tries to change the samples it is given (it must not be able to)."""
    samples *= 0.0
    return samples


def complex_features(samples):
    return np.asarray(samples) * (1 + 1j)


def one_dim_features(samples):
    return np.asarray(samples)[:, 0]
