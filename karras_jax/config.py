r"""The six hyperparameters of the Karras VE stochastic sampler."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import serialization
from jax.typing import ArrayLike

from karras_jax._validation import REAL, check_values, concrete_value

__all__ = ["KarrasVeConfig"]

FIELDS = ("sigma_min", "sigma_max", "s_noise", "s_churn", "s_min", "s_max")


@dataclasses.dataclass(frozen=True, init=False)
class KarrasVeConfig:
    r"""Hyperparameters of Algorithm 2 of Karras et al. (2022), diffusers' defaults.

    An immutable pytree whose six fields are all leaves, so a config can be passed to a
    jitted function and any field swept with ``jax.vmap`` without recompiling, for
    example the paper's Table 5 grid over ``s_churn``::

        jax.vmap(lambda c: run(cfg.replace(s_churn=c)))(jnp.linspace(0., 80., 9))

    The churn factor at noise level ``sigma`` with ``N`` steps is

    .. math::

        \gamma = \min(S_{churn} / N, \sqrt{2} - 1) \text{ if } S_{min} \le \sigma \le S_{max}
        \text{ else } 0

    and the added noise is ``eps ~ N(0, S_noise^2 I)``.

    Attributes:
      sigma_min: Smallest noise level of the schedule, > 0.
      sigma_max: Largest noise level of the schedule, > sigma_min.
      s_noise: Scale of the churn noise, >= 0 (the paper finds [1.000, 1.011] useful).
      s_churn: Overall amount of stochasticity, >= 0 (0 gives the deterministic sampler).
      s_min: Lower end of the noise-level window where churn is applied.
      s_max: Upper end of that window, >= s_min.

    Concrete values are checked where a user builds a config (the constructor and
    :meth:`replace`); traced values pass through, and JAX's own rebuilding of the pytree
    (``tree_map``, ``vmap``, ``jit``) checks nothing. ``None`` is allowed as a placeholder
    for configs used as ``vmap``/sharding specs; functions that compute with a config
    refuse it.

    Raises:
      ValueError: a value is not finite or out of its range (the message names it).
      TypeError: a value is not a real number.
    """

    sigma_min: ArrayLike = 0.02
    sigma_max: ArrayLike = 100.0
    s_noise: ArrayLike = 1.007
    s_churn: ArrayLike = 80.0
    s_min: ArrayLike = 0.05
    s_max: ArrayLike = 50.0

    def __init__(self, sigma_min: ArrayLike = 0.02, sigma_max: ArrayLike = 100.0, s_noise: ArrayLike = 1.007,
                 s_churn: ArrayLike = 80.0, s_min: ArrayLike = 0.05, s_max: ArrayLike = 50.0,
                 **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"KarrasVeConfig has no field {', '.join(map(repr, sorted(unknown)))}; the "
                            f"fields are {', '.join(FIELDS)}.")
        for name, value in zip(FIELDS, (sigma_min, sigma_max, s_noise, s_churn, s_min, s_max), strict=True):
            object.__setattr__(self, name, value)
        _check_values({name: getattr(self, name) for name in FIELDS})

    def __eq__(self, other: object) -> bool:
        """Equal values, whatever the config class (the facade's ``SchedulerConfig`` included)."""
        if not isinstance(other, KarrasVeConfig):
            return NotImplemented
        return tuple(getattr(self, n) for n in FIELDS) == tuple(getattr(other, n) for n in FIELDS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)  # a subclass (compat's diffusers-style config) is a pytree too

    def replace(self, **updates: Any) -> KarrasVeConfig:
        """A new config with the given fields replaced (checked like the constructor)."""
        return dataclasses.replace(self, **updates)

    def to_dict(self) -> dict[str, float]:
        """The six values as Python floats (the config must be concrete and scalar)."""
        out = {}
        for name in FIELDS:
            value = concrete_value(name, getattr(self, name))
            if value is None or value.shape != ():
                raise ValueError(f"{name} must be a concrete scalar to be written out, got "
                                 f"{getattr(self, name)!r}.")
            out[name] = float(value)
        return out


def _register(cls: type) -> None:
    """Registers a config class as a pytree (with key paths) and with flax.serialization."""
    # Why not flax.struct (the record idiom of the other pytrees): its unflatten calls
    # __init__, so the checks would run on every tree_map, vmap and jit rebuild (5 runs where
    # 2 configs were built, measured) and jax.tree.map(jnp.zeros_like, cfg) would raise
    # "sigma_min must be > 0". Values are checked where a user builds a config, not here.
    def unflatten(_: None, leaves: Any) -> KarrasVeConfig:
        config = object.__new__(cls)
        for name, leaf in zip(FIELDS, leaves, strict=True):
            object.__setattr__(config, name, leaf)
        return config

    jax.tree_util.register_pytree_with_keys(
        cls, lambda c: (tuple((jax.tree_util.GetAttrKey(n), getattr(c, n)) for n in FIELDS), None),
        unflatten, lambda c: (tuple(getattr(c, n) for n in FIELDS), None))
    # As flax.struct dataclasses do, so flax.serialization (and checkpoints built on it) round-trip.
    serialization.register_serialization_state(
        cls, lambda c: {n: serialization.to_state_dict(getattr(c, n)) for n in FIELDS},
        lambda c, state: c.replace(**{n: serialization.from_state_dict(getattr(c, n), state[n])
                                      for n in FIELDS}))


_register(KarrasVeConfig)


def check_config(config: Any, *, scalar: bool | tuple[str, ...] = False) -> KarrasVeConfig:
    """Returns ``config`` after checking it is a config whose fields hold numbers or arrays.

    For functions that compute with a config: placeholders (None) are allowed only in
    configs used as pytree specs.

    Args:
      config: The config to check.
      scalar: Also require one value per field (True: every field; or the names of the
        fields that must be scalars). Inside ``jax.vmap`` the fields are scalars.

    Raises:
      TypeError: ``config`` is not a :class:`KarrasVeConfig`, or a field holds None or
        another non-numeric object.
      ValueError: ``scalar`` and a field holds an array of values.
    """
    if not isinstance(config, KarrasVeConfig):
        raise TypeError(f"config must be a KarrasVeConfig, got {type(config).__name__}.")
    for name in FIELDS:
        value = getattr(config, name)
        if not isinstance(value, REAL):
            raise TypeError(f"config.{name} must be a real number or an array, got {type(value).__name__} "
                            f"{value!r}.")
        if (scalar is True or name in (scalar or ())) and np.ndim(value) != 0:
            raise ValueError(f"config.{name} holds an array of shape {np.shape(value)} where one value "
                             f"belongs; to run several values, jax.vmap over them, e.g. jax.vmap(lambda v: "
                             f"run(cfg.replace({name}=v)))(values).")
    return config


def _check_values(given: dict[str, Any]) -> None:
    """The constructor's checks (a name of its own, so a test can count when they run)."""
    check_values(given)
