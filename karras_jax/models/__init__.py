"""Bringing trained networks to the sampler: preconditioning (Table 1)."""

from karras_jax.models.precondition import (
    PRECONDITIONINGS,
    iddpm_levels,
    precondition,
    precondition_coefficients,
)

__all__ = ["PRECONDITIONINGS", "iddpm_levels", "precondition", "precondition_coefficients"]
