"""Switches on ``kj.sample`` itself (library code, not a re-implementation).

:func:`always_draw` makes ``kj.sample`` draw the churn noise at every step (times a std of 0
when idle), never behind a ``lax.cond``, whatever the sample size: the form it takes below
``karras_jax._compiled.SKIP_IDLE_DRAW_FROM``. Imports nothing from the library but its
sampler module, so that it also works on older versions (for before/after counts).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax

from karras_jax import _compiled as kj_compiled


@contextlib.contextmanager
def always_draw() -> Iterator[None]:
    """Inside: ``kj.sample`` traces with the churn draw made at every step, never behind a cond.

    Sets every entry of ``karras_jax._compiled.SKIP_IDLE_DRAW_FROM`` out of reach and restores
    them on exit. The threshold is read when ``kj.sample`` is traced, so trace (lower, or
    call a fresh ``jax.jit`` for the first time) inside the block; a program traced before
    keeps its form.
    """
    if hasattr(kj_compiled, "SKIP_IDLE_DRAW_FROM"):
        table = kj_compiled.SKIP_IDLE_DRAW_FROM
        saved = dict(table)
        table.update({name: sys.maxsize for name in table})
        try:
            yield
        finally:
            table.clear()
            table.update(saved)
    else:
        raise RuntimeError("this karras_jax has no switch for the churn draw's form")


def compile_always_drawing(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(fn)`` lowered and compiled for ``args`` under :func:`always_draw`.

    Call the result with arguments of the same shapes and types as ``args``. ``fn`` is
    wrapped in a fresh closure first: JAX caches traces per function object, and a trace of
    ``fn`` made outside the block would be reused.
    """

    def fresh(*inner: Any) -> Any:
        return fn(*inner)

    with always_draw():
        return jax.jit(fresh).lower(*args).compile()
