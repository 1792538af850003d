"""Bringing trained networks to the sampler: preconditioning (Table 1) and guidance."""

from karras_jax.models.guidance import Guidance, autoguidance, classifier_free_guidance
from karras_jax.models.precondition import (
    PRECONDITIONINGS,
    iddpm_levels,
    precondition,
    precondition_coefficients,
)

__all__ = [
    "PRECONDITIONINGS",
    "Guidance",
    "autoguidance",
    "classifier_free_guidance",
    "iddpm_levels",
    "precondition",
    "precondition_coefficients",
]
