"""The debug mode of the sampler (``check_finite=True``): where the first NaN or inf came from.

The loop records the first failing check itself, in program order, in a small carried
:class:`FirstFailure` (``jax.experimental.checkify`` merges the errors of different check
sites in a loop by site, not by time, so it could name a later step). After the loop one
checkify check per kind reports it, and :func:`raise_if_not_finite` turns that into a
``FloatingPointError`` on the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

__all__ = ["INPUT", "OUTPUT", "START", "UPDATE", "FirstFailure", "raise_if_not_finite"]

START, INPUT, OUTPUT, UPDATE = range(4)

_MESSAGES = {
    START: "x_init holds NaN or inf",
    INPUT: "non-finite value in the denoiser's input at step {step} (sigma_hat={sigma_hat}, evaluated "
           "at sigma={sigma}) after the cast to {dtype}",
    OUTPUT: "non-finite value in the denoiser's output at step {step} (sigma_hat={sigma_hat}, evaluated "
            "at sigma={sigma}); its input was finite",
    UPDATE: "non-finite value in the update of step {step} (sigma_hat={sigma_hat}); the denoiser's "
            "inputs and outputs were finite",
}


class FirstFailure(NamedTuple):
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


def raise_if_not_finite(error: checkify.Error, out: Any) -> Any:
    """``out``, after raising ``FloatingPointError`` if the checkify ``error`` holds one.

    Raises:
      FloatingPointError: the recorded failure.
      ValueError: the error is traced (the call was made inside ``jit``/``vmap``).
    """
    try:
        message = error.get()
    except jax.errors.JAXTypeError:  # a tracer somewhere: the call was inside jit / vmap
        raise ValueError(
            "check_finite=True runs its own checked program and raises on the host: call "
            "kj.sample(..., check_finite=True) outside jax.jit / jax.vmap, or use "
            "kj.make_sampler(..., check_finite=True)."
        ) from None
    if message is not None:
        raise FloatingPointError(message.replace(" (`check` failed)", ""))
    return out
