"""kj.sample(schedule="diffusers") equals diffusers' own KarrasVe pipeline loop (PyTorch).

The loop below is copied from diffusers' (removed, still shipped) KarrasVePipeline.__call__
(pipelines/deprecated/stochastic_karras_ve/pipeline_stochastic_karras_ve.py), with the
torch KarrasVeScheduler and an analytic model F in the eq. (213) convention:

    model_output = (sigma / 2) * F((x + 1) / 2, sigma / 2),   D = x + sigma * model_output.

Both sides get the same noise: x_0 and each step's standard normals from karras_jax's
noise-stream contract; diffusers draws its churn normals with ``randn_tensor`` (and
multiplies them by s_noise itself), which is patched to return the pre-computed ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import keys_for, standard_normals

import karras_jax as kj

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
scheduling_karras_ve = pytest.importorskip("diffusers.schedulers.deprecated.scheduling_karras_ve")

DATA_MEAN = 0.6  # in the model's [0, 1] image space
DATA_STD = 0.15


def model_torch(y, s):
    """F(y, s): the score of N(DATA_MEAN, DATA_STD^2) at noise s, plus a bounded nonlinearity."""
    return -(y - DATA_MEAN) / (DATA_STD**2 + s**2) - 0.3 * torch.tanh(3 * y) / (1 + s**2)


def model_jax(y, s):
    return -(y - DATA_MEAN) / (DATA_STD**2 + s**2) - 0.3 * jnp.tanh(3 * y) / (1 + s**2)


def denoise_fn(x, sigma, cond):
    """D(x; sigma) = x + sigma * model_output with eq. (213)'s model_output."""
    model_output = (sigma / 2) * model_jax((x + 1) / 2, sigma / 2)
    return x + sigma * model_output


SHAPE = (3, 4, 4)  # (C, H, W) like the pipeline's images


@jax.jit
def run(keys, state, cfg):  # cfg is the state's own config
    return kj.sample(denoise_fn, keys, state, None, SHAPE)


def diffusers_pipeline_loop(scheduler, z0, step_normals, num_inference_steps, monkeypatch):
    """KarrasVePipeline.__call__'s loop, verbatim but for the model call and the noise."""
    normals = iter(step_normals)

    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        z = next(normals)
        assert tuple(shape) == z.shape
        return torch.from_numpy(z)

    monkeypatch.setattr(scheduling_karras_ve, "randn_tensor", fake_randn_tensor)
    model = model_torch

    # sample x_0 ~ N(0, sigma_0^2 * I)
    sample = torch.from_numpy(z0) * scheduler.init_noise_sigma

    scheduler.set_timesteps(num_inference_steps)

    for t in scheduler.timesteps:
        # here sigma_t == t_i from the paper
        sigma = scheduler.schedule[t]
        sigma_prev = scheduler.schedule[t - 1] if t > 0 else 0

        # 1. Select temporarily increased noise level sigma_hat
        # 2. Add new noise to move from sample_i to sample_hat
        sample_hat, sigma_hat = scheduler.add_noise_to_input(sample, sigma, generator=None)

        # 3. Predict the noise residual given the noise magnitude `sigma_hat`
        # The model inputs and output are adjusted by following eq. (213) in [1].
        model_output = (sigma_hat / 2) * model((sample_hat + 1) / 2, sigma_hat / 2)

        # 4. Evaluate dx/dt at sigma_hat
        # 5. Take Euler step from sigma to sigma_prev
        step_output = scheduler.step(model_output, sigma_hat, sigma_prev, sample_hat)

        if sigma_prev != 0:
            # 6. Apply 2nd order correction
            # The model inputs and output are adjusted by following eq. (213) in [1].
            model_output = (sigma_prev / 2) * model((step_output.prev_sample + 1) / 2, sigma_prev / 2)
            step_output = scheduler.step_correct(
                model_output,
                sigma_hat,
                sigma_prev,
                sample_hat,
                step_output.prev_sample,
                step_output["derivative"],
            )
        sample = step_output.prev_sample

    assert next(normals, None) is None, "one churn draw per step"
    image = (sample / 2 + 0.5).clamp(0, 1)
    return sample.numpy(), image.numpy()


@pytest.mark.parametrize(
    ("s_churn", "s_min", "s_max", "n"),
    [
        (80.0, 0.05, 50.0, 10),  # diffusers' defaults: churn on at 4 of the 10 levels
        (0.0, 0.05, 50.0, 10),  # deterministic
        (3.0, 0.5, 2000.0, 20),  # gamma 0.15 on a wide window up to the 1e3 levels
    ],
)
def test_sample_equals_diffusers_pipeline_loop(monkeypatch, s_churn, s_min, s_max, n):
    values = dict(sigma_min=0.02, sigma_max=100.0, s_noise=1.007, s_churn=s_churn, s_min=s_min,
                  s_max=s_max)
    cfg = kj.KarrasVeConfig(**values)
    state = kj.set_timesteps(cfg, n, "diffusers")
    keys = keys_for(30, 2)

    ours = np.asarray(run(keys, state, cfg))

    z0, step_normals = standard_normals(keys, SHAPE, n)
    scheduler = scheduling_karras_ve.KarrasVeScheduler(**values)
    theirs, image = diffusers_pipeline_loop(scheduler, z0, list(step_normals), n, monkeypatch)

    assert theirs.dtype == np.float32 and theirs.shape == ours.shape
    # Float32 on both sides with levels up to 1e4 (start noise std 100): round-off ~1e-5.
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(np.clip(ours / 2 + 0.5, 0, 1), image, atol=1e-4)
    # The comparison is not vacuous: the samples are spread, not all clipped.
    # The comparison is not vacuous: most pixels are inside (0, 1), not clipped.
    assert float(np.mean((image > 0) & (image < 1))) > 0.3
