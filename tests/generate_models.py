"""A MODEL for ``karras-jax generate --model generate_models:gaussian_images`` in the tests.

Images (4, 4, 1), written as (4, 4), from Gaussian data N(mean_c, 0.5^2 I) with class
c = seed % 3 shifting the mean (class 3 = no class, mean 0): an exact conditional
denoiser, so guidance, postprocessing and PNG writing can be tested without a trained
network.
"""

import jax.numpy as jnp
import numpy as np

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
        image_range=(-2.0, 2.0))


def not_a_model():
    return 42
