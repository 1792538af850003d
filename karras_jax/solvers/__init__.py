"""ODE solvers for the sampling loop, and the registry of their names.

A new solver is one file in this folder defining a factory that returns a
:class:`~karras_jax.solvers.base.Solver`, plus one line in ``_REGISTRY`` below (or pass
the :class:`Solver` itself as ``solver=`` without registering it).
"""

from __future__ import annotations

from collections.abc import Callable

from karras_jax.solvers.base import Levels, Solver
from karras_jax.solvers.dpmpp_2m import dpmpp_2m
from karras_jax.solvers.euler import euler
from karras_jax.solvers.heun import heun
from karras_jax.solvers.restart import restart

__all__ = ["SOLVERS", "Levels", "Solver", "dpmpp_2m", "euler", "get_solver", "heun", "restart"]

# One entry per solver: name -> factory of its Solver.
_REGISTRY: dict[str, Callable[[], Solver]] = {"heun": heun, "euler": euler, "dpmpp_2m": dpmpp_2m}

SOLVERS = tuple(_REGISTRY)


def get_solver(solver: str | Solver) -> Solver:
    """The :class:`Solver` for a registered name, or ``solver`` itself.

    Raises:
      ValueError: neither a registered name nor a :class:`Solver` (the message lists the
        registered names).
    """
    if isinstance(solver, Solver):
        return solver
    if isinstance(solver, str) and solver in _REGISTRY:
        return _REGISTRY[solver]()
    raise ValueError(f"solver must be one of {SOLVERS} or a kj.Solver, got {solver!r}.")
