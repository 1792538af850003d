"""Bringing trained networks to the sampler: preconditioning, discrete-time models, guidance."""

from karras_jax.models.discrete import discrete_sigmas, discrete_time_denoiser
from karras_jax.models.guidance import Guidance, autoguidance, classifier_free_guidance
from karras_jax.models.precondition import (
    PRECONDITIONINGS,
    precondition,
    precondition_coefficients,
)

__all__ = [
    "PRECONDITIONINGS",
    "Guidance",
    "autoguidance",
    "classifier_free_guidance",
    "discrete_sigmas",
    "discrete_time_denoiser",
    "precondition",
    "precondition_coefficients",
]
