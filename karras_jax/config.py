"""The six hyperparameters of the Karras VE stochastic sampler."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np
from flax import struct

from karras_jax._validation import concrete_value

__all__ = ["KarrasVeConfig"]


@struct.dataclass
class KarrasVeConfig:
    """Hyperparameters of Algorithm 2 of Karras et al. (2022), diffusers' defaults.

    Every field is a pytree leaf, so a config can be passed to a jitted function
    and any field swept with ``jax.vmap`` without recompiling, for example the
    paper's Table 5 grid over ``s_churn``::

        jax.vmap(lambda c: run(cfg.replace(s_churn=c)))(jnp.linspace(0., 80., 9))

    The churn factor at noise level ``sigma`` with ``N`` steps is

    .. math::

        \\gamma = \\min(S_{churn} / N, \\sqrt{2} - 1) \\text{ if } S_{min} \\le \\sigma \\le S_{max}
        \\text{ else } 0

    and the added noise is ``eps ~ N(0, S_noise^2 I)``.

    Attributes:
      sigma_min: Smallest noise level of the schedule, > 0.
      sigma_max: Largest noise level of the schedule, > sigma_min.
      s_noise: Scale of the churn noise, >= 0 (the paper finds [1.000, 1.011] useful).
      s_churn: Overall amount of stochasticity, >= 0 (0 gives the deterministic sampler).
      s_min: Lower end of the noise-level window where churn is applied.
      s_max: Upper end of that window, >= s_min.

    Concrete values are checked when the config is built; traced values pass through.

    Raises:
      ValueError: a value is not finite or out of its range (the message names it).
      TypeError: a value is not a real number.
    """

    sigma_min: Any = 0.02
    sigma_max: Any = 100.0
    s_noise: Any = 1.007
    s_churn: Any = 80.0
    s_min: Any = 0.05
    s_max: Any = 50.0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple, dict, set)):
                raise TypeError(
                    f"{name} must be a real number or an array, got {type(value).__name__} {value!r}; "
                    "wrap a sweep of values in jnp.asarray."
                )
        values = {name: concrete_value(name, getattr(self, name)) for name in _FIELDS}
        for name, value in values.items():
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}.")
        _require(values, "sigma_min", lambda v: v > 0, "must be > 0")
        _require(values, "s_churn", lambda v: v >= 0, "must be >= 0")
        _require(values, "s_noise", lambda v: v >= 0, "must be >= 0")
        lo, hi = values["sigma_min"], values["sigma_max"]
        if lo is not None and hi is not None and not np.all(hi > lo):
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_max={self.sigma_max!r} and "
                f"sigma_min={self.sigma_min!r}."
            )
        lo, hi = values["s_min"], values["s_max"]
        if lo is not None and hi is not None and not np.all(lo <= hi):
            raise ValueError(
                f"s_min must be <= s_max, got s_min={self.s_min!r} and s_max={self.s_max!r}."
            )

    def check_numeric(self) -> KarrasVeConfig:
        """Returns self after checking every field is a number, an array or a tracer.

        Placeholders such as None are allowed in a config used as a pytree spec (vmap
        ``in_axes``, shardings); a config that enters the arithmetic must hold numbers.

        Raises:
          TypeError: a field holds None or another non-numeric object.
        """
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
                raise TypeError(
                    f"config.{name} must be a real number or an array, got {type(value).__name__} "
                    f"{value!r}."
                )
        return self

    def __getitem__(self, name: str) -> Any:
        """``config["sigma_max"]``, as diffusers' FrozenDict configs allow."""
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def keys(self) -> tuple[str, ...]:
        """The six field names, so ``dict(**config)`` and ``KarrasVeScheduler(**config)`` work."""
        return _FIELDS

    def to_dict(self) -> dict[str, float]:
        """The six values as Python floats (the config must be concrete and scalar)."""
        out = {}
        for name in _FIELDS:
            value = concrete_value(name, getattr(self, name))
            if value is None or value.shape != ():
                raise ValueError(
                    f"{name} must be a concrete scalar to be written out, got {getattr(self, name)!r}."
                )
            out[name] = float(value)
        return out


_FIELDS = ("sigma_min", "sigma_max", "s_noise", "s_churn", "s_min", "s_max")


def _require(values: dict, name: str, ok, what: str) -> None:
    value = values[name]
    if value is not None and not np.all(ok(value)):
        raise ValueError(f"{name} {what}, got {_show(value)}.")


def _show(value: np.ndarray) -> str:
    return repr(float(value)) if value.shape == () else repr(value.tolist())

