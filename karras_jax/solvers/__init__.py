"""ODE solvers for the sampling loop, and the registry of their names.

A new solver is one file in this folder defining a factory that returns a
:class:`~karras_jax.solvers.base.Solver`, plus one line in ``_REGISTRY`` below (or pass
the :class:`Solver` itself as ``solver=`` without registering it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from karras_jax.solvers.base import Levels, Solver
from karras_jax.solvers.dpmpp_2m import dpmpp_2m
from karras_jax.solvers.dpmpp_2m_sde import dpmpp_2m_sde
from karras_jax.solvers.dpmpp_3m_sde import dpmpp_3m_sde
from karras_jax.solvers.euler import euler
from karras_jax.solvers.euler_ancestral import euler_ancestral
from karras_jax.solvers.heun import heun
from karras_jax.solvers.restart import restart

__all__ = ["SOLVERS", "Levels", "Solver", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "euler",
           "euler_ancestral", "get_solver", "heun", "restart", "takes_eta"]

# One entry per solver: name -> factory of its Solver (with its default hyperparameters).
_REGISTRY: dict[str, Callable[[], Solver]] = {
    "heun": heun,
    "euler": euler,
    "dpmpp_2m": dpmpp_2m,
    "euler_ancestral": euler_ancestral,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": functools.partial(dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_3m_sde": dpmpp_3m_sde,
}

SOLVERS = tuple(_REGISTRY)


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """The :class:`Solver` for a registered name (built with ``options``), or ``solver`` itself.

    >>> get_solver("euler_ancestral", eta=0.5).name
    'euler_ancestral'

    Raises:
      ValueError: neither a registered name nor a :class:`Solver` (the message lists the
        registered names), or an option the named solver does not take (e.g. ``eta`` for
        ``"heun"``; the message names it), or options given with a :class:`Solver`.
    """
    if isinstance(solver, Solver) and not options:
        return solver
    if not (isinstance(solver, str) and solver in _REGISTRY):
        if isinstance(solver, Solver):
            raise ValueError(f"options {sorted(options)} apply to a solver's name, not to a built kj.Solver.")
        raise ValueError(f"solver must be one of {SOLVERS} or a kj.Solver, got {solver!r}.")
    factory = _REGISTRY[solver]
    takes = inspect.signature(factory).parameters
    fixed = getattr(factory, "keywords", {})  # what the name itself sets ("dpmpp_2m_sde_heun")
    unknown = sorted(set(options) - set(takes) | set(options) & set(fixed))
    if unknown:
        raise ValueError(f"solver {solver!r} takes no option {', '.join(unknown)}; solvers taking "
                         f"eta: {', '.join(takes_eta())}.")
    return factory(**options)


def takes_eta() -> tuple[str, ...]:
    """The registered solvers with an ``eta`` (their stochasticity), for the CLI's ``--eta``."""
    return tuple(name for name, f in _REGISTRY.items() if "eta" in inspect.signature(f).parameters)
