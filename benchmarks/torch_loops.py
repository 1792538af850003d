"""The PyTorch peers: diffusers' ``KarrasVeScheduler`` pipeline loop and a plain Algorithm 2
loop in the style of k-diffusion's ``sample_heun``. Both are host-side Python loops."""

from __future__ import annotations

from typing import Any

import numpy as np


def diffusers_scheduler(config: Any, schedule: np.ndarray, device: str = "cpu") -> Any:
    """diffusers' own ``KarrasVeScheduler`` with karras_jax's config and noise levels.

    ``schedule`` is ``state.schedule`` (ascending in t, diffusers' layout): it replaces the
    scheduler's own ``t_i`` levels so that all three loops use the same sigmas.
    """
    import torch
    from diffusers.schedulers.deprecated.scheduling_karras_ve import KarrasVeScheduler

    sched = KarrasVeScheduler(
        sigma_min=float(config.sigma_min),
        sigma_max=float(config.sigma_max),
        s_noise=float(config.s_noise),
        s_churn=float(config.s_churn),
        s_min=float(config.s_min),
        s_max=float(config.s_max),
    )
    sched.set_timesteps(len(schedule), device=device)
    sched.schedule = torch.tensor(np.asarray(schedule), dtype=torch.float32, device=device)
    return sched


def diffusers_loop(model: Any, sched: Any, x0: Any, generator: Any) -> Any:
    """``KarrasVePipeline.__call__``'s loop (without its progress bar), ``model_output = (D - x)/sigma``."""
    import torch

    sample = x0
    with torch.no_grad():
        for t in sched.timesteps:
            sigma = sched.schedule[t]
            sigma_prev = sched.schedule[t - 1] if t > 0 else 0
            sample_hat, sigma_hat = sched.add_noise_to_input(sample, sigma, generator=generator)
            model_output = (model(sample_hat, sigma_hat) - sample_hat) / sigma_hat
            out = sched.step(model_output, sigma_hat, sigma_prev, sample_hat)
            if sigma_prev != 0:
                model_output = (model(out.prev_sample, sigma_prev) - out.prev_sample) / sigma_prev
                out = sched.step_correct(
                    model_output, sigma_hat, sigma_prev, sample_hat, out.prev_sample, out.derivative
                )
            sample = out.prev_sample
    return sample


def heun_loop(model: Any, sigmas: Any, x0: Any, config: Any, generator: Any) -> Any:
    """Algorithm 2 as k-diffusion's ``sample_heun`` writes it; ``sigmas`` a (N+1,) tensor."""
    import torch

    s_churn, s_min, s_max = float(config.s_churn), float(config.s_min), float(config.s_max)
    s_noise = float(config.s_noise)
    n = len(sigmas) - 1
    x = x0
    s_in = x.new_ones([x.shape[0]])
    with torch.no_grad():
        for i in range(n):
            gamma = min(s_churn / n, 2**0.5 - 1) if s_min <= sigmas[i] <= s_max else 0.0
            eps = torch.randn(x.shape, generator=generator, device=x.device) * s_noise
            sigma_hat = sigmas[i] * (gamma + 1)
            if gamma > 0:
                x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
            denoised = model(x, sigma_hat * s_in)
            d = (x - denoised) / sigma_hat
            dt = sigmas[i + 1] - sigma_hat
            if sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                denoised_2 = model(x_2, sigmas[i + 1] * s_in)
                d_2 = (x_2 - denoised_2) / sigmas[i + 1]
                x = x + (d + d_2) / 2 * dt
    return x


def network_loop(model: Any, sigmas: Any, x0: Any) -> Any:
    """The 2N - 1 network evaluations of Heun's method back to back, nothing else."""
    import torch

    x = x0
    s_in = x.new_ones([x.shape[0]])
    with torch.no_grad():
        for j in range(2 * (len(sigmas) - 1) - 1):
            x = model(x, sigmas[j // 2] * s_in)
    return x
