"""Checked records: frozen dataclasses that check their fields where a user builds them.

A ``flax.struct`` dataclass rebuilds itself through ``__init__`` on every ``tree_map``,
``jit``, ``vmap`` and ``grad``, so checks in its ``__post_init__`` would also judge
gradients, zeros and sharding specs (a gradient of a standard deviation may well be
negative). A checked record runs its ``__post_init__`` only where it is built by name or
``.replace``d; JAX's own rebuilding skips it, as :class:`karras_jax.KarrasVeConfig` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
from flax import serialization

__all__ = ["checked_record"]

T = TypeVar("T")


def checked_record(cls: type[T]) -> type[T]:
    """Makes ``cls`` a frozen dataclass and a pytree (every field a leaf, with key paths).

    Its ``__post_init__`` (the checks) runs on construction and :meth:`replace`, never on
    unflattening. Registered with ``flax.serialization`` as ``flax.struct`` classes are.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(field.name for field in dataclasses.fields(cls))

    def replace(self: T, **updates: Any) -> T:
        """A copy with ``updates`` applied (checked like the constructor)."""
        return dataclasses.replace(self, **updates)

    def unflatten(_: None, leaves: Any) -> T:
        record = object.__new__(cls)
        for name, leaf in zip(names, leaves, strict=True):
            object.__setattr__(record, name, leaf)
        return record

    cls.replace = replace  # type: ignore[attr-defined]
    jax.tree_util.register_pytree_with_keys(
        cls, lambda r: (tuple((jax.tree_util.GetAttrKey(n), getattr(r, n)) for n in names), None),
        unflatten, lambda r: (tuple(getattr(r, n) for n in names), None))
    serialization.register_serialization_state(
        cls, lambda r: {n: serialization.to_state_dict(getattr(r, n)) for n in names},
        lambda r, state: unflatten(None, [serialization.from_state_dict(getattr(r, n), state[n])
                                          for n in names]))
    return cls
