"""Bringing trained networks to the sampler: preconditioning (Table 1) and guidance."""

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
    "precondition",
    "precondition_coefficients",
]
