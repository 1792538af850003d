r"""The solver interface: what the sampling loop needs from an ODE solver, as pure functions.

A solver advances the churned sample :math:`\hat x` at :math:`\hat\sigma_i` to
:math:`x_{i+1}` at :math:`\sigma_{i+1}`. The churn itself (Algorithm 2's noise injection)
is the loop's and is shared by every solver. In the optax idiom a solver is an immutable
:class:`Solver` of pure functions closed over its hyperparameters (if any):

* ``scalars(levels) -> coefficients``: everything per step that depends only on the noise
  levels, computed once for all N steps before the loop (vectorised over steps), so that
  the loop body holds nothing but network calls and one fused elementwise update;
* ``init(x0) -> solver_state``: the carried state (e.g. a multistep history), float32;
* ``step(denoise, x_hat, levels_i, solver_state, noise) -> (x_next, denoised, solver_state)``,
  where ``noise(draw)`` returns the step's standard normals number ``draw``
  (:func:`karras_jax.step_noise`; only a ``stochastic`` solver calls it);
* ``last_step``: the same for the final step down to sigma = 0 (Euler by default, so that
  the network is never evaluated at sigma = 0);
* ``evaluations(N)``: the network evaluations of an N-step run.

``denoise(x, sigma) -> D(x; sigma)`` takes and returns the float32 carry; the loop casts to
the network's dtype and back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from karras_jax import steps

__all__ = ["Levels", "Solver"]

Denoise = Callable[[jax.Array, jax.Array], jax.Array]
Noise = Callable[[int], jax.Array]
Step = Callable[[Denoise, jax.Array, "Levels", Any, Noise], tuple[jax.Array, jax.Array, Any]]


@struct.dataclass
class Levels:
    r"""The noise levels of one step (scalars), or of all N steps ((N,) arrays).

    Attributes:
      sigma: :math:`\sigma_i`, the level before the churn.
      sigma_hat: :math:`\hat\sigma_i`, the churned level the step starts from.
      sigma_next: :math:`\sigma_{i+1}` (0 for the last step).
      inv_sigma_hat: :math:`1/\hat\sigma_i`.
      inv_sigma_next: :math:`1/\sigma_{i+1}` (1 where :math:`\sigma_{i+1} = 0`, unused there).
      h: :math:`\sigma_{i+1} - \hat\sigma_i`, the Euler step size (negative).
      extra: The solver's own per-step coefficients, from ``Solver.scalars``.
    """

    sigma: jax.Array
    sigma_hat: jax.Array
    sigma_next: jax.Array
    inv_sigma_hat: jax.Array
    inv_sigma_next: jax.Array
    h: jax.Array
    extra: Any = None


def levels_of(sigma: jax.Array, sigma_hat: jax.Array, sigma_next: jax.Array) -> Levels:
    r"""The solver-independent :class:`Levels` of :math:`\sigma_i, \hat\sigma_i, \sigma_{i+1}`."""
    safe_next = jnp.where(sigma_next > 0, sigma_next, jnp.ones_like(sigma_next))
    return Levels(sigma=sigma, sigma_hat=sigma_hat, sigma_next=sigma_next,
                  inv_sigma_hat=1.0 / sigma_hat, inv_sigma_next=1.0 / safe_next,
                  h=sigma_next - sigma_hat)


def no_scalars(levels: Levels) -> None:
    """``Solver.scalars`` of a solver that needs nothing beyond :class:`Levels`."""
    del levels


def no_state(x0: jax.Array) -> None:
    """``Solver.init`` of a one-step solver: nothing is carried between steps."""
    del x0


def one_per_step(num_steps: int) -> int:
    """``Solver.evaluations`` of a solver with one network evaluation per step: N."""
    return num_steps


def euler_step(denoise: Denoise, x_hat: jax.Array, levels: Levels, solver_state: Any,
               noise: Noise | None = None) -> tuple[jax.Array, jax.Array, Any]:
    r"""One Euler step, :math:`x_{i+1} = \hat x + h\,(\hat x - D(\hat x;\hat\sigma))/\hat\sigma`.

    The last step of every built-in solver: at :math:`\sigma_{i+1} = 0` it returns
    :math:`D` up to rounding, with one network evaluation.
    """
    denoised = denoise(x_hat, levels.sigma_hat)
    d = steps.slope(x_hat, denoised, levels.inv_sigma_hat)
    return steps.euler_update(x_hat, d, levels.h), denoised, solver_state


class Solver(NamedTuple):
    """An ODE solver for the sampling loop: data plus pure functions (see the module doc).

    Attributes:
      name: The registered name (``"heun"``, ...), used in messages and reports.
      order: The convergence order of the deterministic solver (error ~ N^-order).
      evaluations: ``evaluations(N) -> int``, network evaluations of an N-step run.
      step: ``step(denoise, x_hat, levels, solver_state, noise) -> (x_next, denoised,
        solver_state)`` for steps 0 .. N-2; ``denoised`` is the first evaluation's D (for
        trajectories); ``noise(draw)`` gives the step's normals (see the module doc).
      init: ``init(x0) -> solver_state``, a pytree carried through the loop.
      scalars: ``scalars(levels) -> extra`` per-step coefficients ((N,) arrays, computed
        once before the loop), passed to ``step`` as ``levels.extra``.
      last_step: Like ``step``, for the last step (to sigma = 0).
      stochastic: Whether ``step`` draws noise (the loop derives the solver keys only then).
      restarts: Restart intervals (:func:`karras_jax.restart`), empty for none.
    """

    name: str
    order: int
    evaluations: Callable[[int], int]
    step: Step
    init: Callable[[jax.Array], Any] = no_state
    scalars: Callable[[Levels], Any] = no_scalars
    last_step: Step = euler_step
    stochastic: bool = False
    restarts: tuple[Any, ...] = ()
