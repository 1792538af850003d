"""Bringing trained networks to the sampler.

Preconditioning, discrete-time and flow-matching models, guidance, a small UNet and a small DiT,
and FID's Inception-v3 (features to measure samples with).
"""

from karras_jax.models.discrete import discrete_sigmas, discrete_time_denoiser
from karras_jax.models.dit import DIT_AXIS_RULES, DiT, dit_shardings
from karras_jax.models.flow import FLOW_PREDICTIONS, flow_denoiser
from karras_jax.models.guidance import Guidance, autoguidance, classifier_free_guidance
from karras_jax.models.inception import (
    INCEPTION_DIM,
    INCEPTION_SIZE,
    inception_features,
    inception_params_from_torch,
)
from karras_jax.models.precondition import (
    PRECONDITIONINGS,
    precondition,
    precondition_coefficients,
)
from karras_jax.models.unet import UNet

__all__ = [
    "DIT_AXIS_RULES",
    "FLOW_PREDICTIONS",
    "INCEPTION_DIM",
    "INCEPTION_SIZE",
    "PRECONDITIONINGS",
    "DiT",
    "Guidance",
    "UNet",
    "autoguidance",
    "classifier_free_guidance",
    "discrete_sigmas",
    "discrete_time_denoiser",
    "dit_shardings",
    "flow_denoiser",
    "inception_features",
    "inception_params_from_torch",
    "precondition",
    "precondition_coefficients",
]
