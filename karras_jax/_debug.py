"""The sampler's debug mode (``check_finite=True``): where the first NaN or inf came from.

:func:`watch` wraps one step of a solver: it checks the denoiser's input (after the cast to
the network's dtype) and output at every evaluation and the step's update, and records the
first failure, in program order, in a small carried :class:`FirstFailure`
(``jax.experimental.checkify`` merges the errors of different check sites in a loop by site,
not by time, so it could name a later step). After the loop :meth:`FirstFailure.check` makes
one checkify check per kind, and :func:`run_checked` compiles the checkified program, runs it
and raises ``FloatingPointError`` on the host. The default program contains none of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import checkify

Denoise = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = ["TRACED_MESSAGE", "FirstFailure", "run_checked", "start", "watch"]

START, INPUT, OUTPUT, UPDATE = range(4)

TRACED_MESSAGE = ("check_finite=True runs its own checked program and raises on the host: call "
                  "kj.sample(..., check_finite=True) outside jax.jit / jax.vmap, or use "
                  "kj.make_sampler(..., check_finite=True).")

_MESSAGES = {
    START: "x_init holds NaN or inf",
    INPUT: "non-finite value in the denoiser's input at step {step} (sigma_hat={sigma_hat}, evaluated "
           "at sigma={sigma}) after the cast to {dtype}",
    OUTPUT: "non-finite value in the denoiser's output at step {step} (sigma_hat={sigma_hat}, evaluated "
            "at sigma={sigma}); its input was finite",
    UPDATE: "non-finite value in the update of step {step} (sigma_hat={sigma_hat}); the denoiser's "
            "inputs and outputs were finite",
}


@struct.dataclass
class FirstFailure:
    """The first failed check so far (``step == -1``: none), carried through the loop."""

    step: jax.Array  # int32 ()
    kind: jax.Array  # int32 ()
    sigma_hat: jax.Array  # ()
    sigma: jax.Array  # ()

    @classmethod
    def none(cls, dtype: Any) -> FirstFailure:
        """No failure yet."""
        zero = jnp.zeros((), dtype)
        return cls(jnp.asarray(-1, jnp.int32), jnp.asarray(0, jnp.int32), zero, zero)

    def record(self, ok: jax.Array, kind: int, step: Any, sigma_hat: jax.Array,
               sigma: jax.Array) -> FirstFailure:
        """The new failure if ``ok`` is False and none was recorded before, else this record."""
        new = (self.step < 0) & ~ok
        candidate = FirstFailure(jnp.asarray(step, jnp.int32), jnp.asarray(kind, jnp.int32),
                                 jnp.asarray(sigma_hat, self.sigma_hat.dtype),
                                 jnp.asarray(sigma, self.sigma.dtype))
        return jax.tree_util.tree_map(lambda c, s: jnp.where(new, c, s), candidate, self)

    def check(self, dtype_name: str) -> None:
        """One checkify check per kind; only the recorded one can fail."""
        for kind, message in _MESSAGES.items():
            failed = (self.step >= 0) & (self.kind == kind)
            checkify.check(~failed, message.replace("{dtype}", dtype_name), step=self.step,
                           sigma_hat=self.sigma_hat, sigma=self.sigma)


def all_finite(x: jax.Array) -> jax.Array:
    """Whether every element of ``x`` is finite, a scalar bool."""
    return jnp.all(jnp.isfinite(x))


def start(x0: jax.Array, sigma_hat: jax.Array, sigma: jax.Array) -> FirstFailure:
    """The record before the loop: a failure at step 0 if the start sample is not finite."""
    return FirstFailure.none(sigma_hat.dtype).record(all_finite(x0), START, 0, sigma_hat, sigma)


def watch(advance: Callable[..., tuple[jax.Array, jax.Array, Any]], denoise: Denoise,
          dtype: jnp.dtype) -> Callable[..., tuple[Any, ...]]:
    """``advance(denoise, x_hat, levels, s, noise)`` -> ``f(x_hat, levels, s, failure, i, noise)``.

    The returned step records failures and also returns the updated :class:`FirstFailure`.
    """
    def step(x_hat: jax.Array, levels: Any, solver_state: Any, failure: FirstFailure,
             i: jax.Array, noise: Any) -> tuple[Any, ...]:
        seen: list[tuple[jax.Array, int, jax.Array]] = []  # this step's checks, in program order

        def watched(x: jax.Array, sigma: jax.Array) -> jax.Array:
            seen.append((all_finite(x.astype(dtype)), INPUT, sigma))
            out = denoise(x, sigma)
            seen.append((all_finite(out), OUTPUT, sigma))
            return out

        x_next, denoised, solver_state = advance(watched, x_hat, levels, solver_state, noise)
        seen.append((all_finite(x_next), UPDATE, levels.sigma_hat))
        for ok, kind, sigma in seen:
            failure = failure.record(ok, kind, i, levels.sigma_hat, sigma)
        return x_next, denoised, solver_state, failure

    return step


def run_checked(program: Callable[..., Any], **jit_options: Any) -> Callable[..., Any]:
    """``program`` compiled with its checks; calling it raises ``FloatingPointError`` at a failure.

    ``.lower`` is the checkified program's, for inspection.

    Raises:
      FloatingPointError: the recorded failure.
      ValueError: the call was made inside ``jit``/``vmap`` (the error is traced).
    """
    checked = jax.jit(checkify.checkify(program, errors=checkify.user_checks), **jit_options)

    def run(*args: Any, **kwargs: Any) -> Any:
        error, out = checked(*args, **kwargs)
        try:
            message = error.get()
        except jax.errors.JAXTypeError:  # a tracer somewhere: the call was inside jit / vmap
            raise ValueError(TRACED_MESSAGE) from None
        if message is not None:
            raise FloatingPointError(message.replace(" (`check` failed)", ""))
        return out

    run.lower = checked.lower  # type: ignore[attr-defined]
    return run
