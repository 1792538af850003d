"""Bringing trained networks to the sampler.

Preconditioning, discrete-time models, guidance, and a small UNet.
"""

from karras_jax.models.discrete import discrete_sigmas, discrete_time_denoiser
from karras_jax.models.guidance import Guidance, autoguidance, classifier_free_guidance
from karras_jax.models.precondition import (
    PRECONDITIONINGS,
    precondition,
    precondition_coefficients,
)
from karras_jax.models.unet import UNet

__all__ = [
    "PRECONDITIONINGS",
    "Guidance",
    "UNet",
    "autoguidance",
    "classifier_free_guidance",
    "discrete_sigmas",
    "discrete_time_denoiser",
    "precondition",
    "precondition_coefficients",
]
