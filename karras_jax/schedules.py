r"""Noise levels sigma_0 > ... > sigma_{N-1} > 0 for the sampler (the trailing 0 is added later).

A registry of named schedules, as :mod:`karras_jax.solvers` is of solvers: each name maps to a
function ``(sigma_min, sigma_max, num_steps, **options) -> (N,) levels``, registered in
one line of ``_REGISTRY`` at the end of this module; :data:`SCHEDULES` lists the names and
:func:`get_schedule` returns the function. Eight schedules, from Karras et al. (2022),
k-diffusion or diffusers:

* ``"ve"``: the VE column of Table 1, geometric in sigma,
  :math:`\sigma_i = \sigma_{max} (\sigma_{min}/\sigma_{max})^{i/(N-1)}`.
* ``"karras"``: the EDM schedule, uniform in :math:`\sigma^{1/\rho}`,
  :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}
  (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho`.
* ``"diffusers"``: what diffusers' ``KarrasVeScheduler`` does, using the paper's time
  :math:`t_i = \sigma_{max}^2 (\sigma_{min}^2/\sigma_{max}^2)^{i/(N-1)}` itself as the
  noise level (it never takes the square root). Kept only to reproduce diffusers.
* ``"vp"``: the VP column of Table 1, :math:`\sigma_{vp}(t_i)` with
  :math:`t_i = 1 + \tfrac{i}{N-1}(\epsilon_s - 1)`, the betas refitted so the ends are
  sigma_max and sigma_min (as EDM's sampler does).
* ``"iddpm"``: the iDDPM column of Table 1, iDDPM's training levels inside
  [sigma_min, sigma_max] subsampled at :math:`\mathrm{round}((len - 1)\, i/(N-1))`.
* ``"exponential"``: k-diffusion's ``get_sigmas_exponential``, uniform in log sigma,
  :math:`\ln\sigma_i = \ln\sigma_{max} + \tfrac{i}{N-1}(\ln\sigma_{min} - \ln\sigma_{max})`.
  The same formula as ``"ve"``: the name points at :func:`ve_sigmas`.
* ``"polyexponential"``: k-diffusion's ``get_sigmas_polyexponential``, a power of the ramp in
  log sigma, :math:`\ln\sigma_i = \ln\sigma_{min} + (1 - \tfrac{i}{N-1})^\rho
  (\ln\sigma_{max} - \ln\sigma_{min})`, ``rho=1`` by default (then ``"exponential"``).
* ``"flow"``: the levels of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)`` (1000
  training steps, no dynamic shifting) as Karras levels. A flow model's sample
  :math:`x_t = (1 - t)\, x + t\, n` is :math:`(1 - t)` times a Karras sample
  :math:`x = x_t / (1 - t)` at :math:`\sigma = t / (1 - t)`. The shifted time is
  :math:`t' = s t / (1 + (s - 1) t)`, i.e. :math:`\sigma' = s\sigma`. diffusers shifts its
  training times :math:`j/1000` once, takes the smallest, :math:`t_{min} = s/(999 + s)`,
  spaces :math:`u_i = 1 + \tfrac{i}{N-1}(t_{min} - 1)` from 1 down to it, and shifts those
  again, so :math:`\sigma_i = s\, u_i / (1 - u_i)`. The first level is
  :math:`\sigma_0 = \infty` (:math:`t = 1`, pure noise): the sampler takes Euler's limit step
  there. The config's sigma_min/sigma_max are checked but not used.

With ``N == 1`` the single level is ``sigma_max`` (``sigma_max**2`` for ``"diffusers"``,
:math:`\infty` for ``"flow"``); diffusers' ``KarrasVeScheduler`` divides by zero there.

Concrete inputs are evaluated in float64 NumPy and rounded once to the level dtype, so
the levels are the correctly rounded values; traced inputs (a vmapped ``sigma_max``)
use the same formula in ``jax.numpy`` (except ``"iddpm"``, which filters a table and needs
concrete bounds).

A table of levels (``set_timesteps(config, N, sigmas=table)``) is resampled to any N by
:func:`interpolated_sigmas`, linearly in log sigma as Align Your Steps does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax._validation import (
    check_num_steps,
    check_representable_levels,
    check_sigma_range,
    concrete_value,
    level_dtype,
)

__all__ = ["SCHEDULES", "custom_sigmas", "diffusers_sigmas", "flow_sigmas", "get_schedule", "iddpm_levels",
           "iddpm_sigmas", "interpolated_sigmas", "karras_sigmas", "polyexponential_sigmas", "ve_sigmas",
           "vp_sigma", "vp_sigmas"]

FLOW_TRAIN_STEPS = 1000  # diffusers' FlowMatchEulerDiscreteScheduler default num_train_timesteps


def _ramp(xp: Any, num_steps: int) -> Any:
    """I / (N - 1) for i = 0..N-1, with the single step of N == 1 at 0."""
    return xp.zeros((1,)) if num_steps == 1 else xp.arange(num_steps) / (num_steps - 1)


def _pin_ends(xp: Any, levels: Any, hi: Any, lo: Any) -> Any:
    """Sets the first level to sigma_max and the last (N > 1) to sigma_min exactly.

    Powers and roots leave them an ulp off in float64 (``(100**(1/7))**7``), which shows
    under x64 and at a churn-window edge placed at sigma_min.
    """
    last = lo if levels.shape[0] > 1 else hi
    if xp is np:
        levels = np.array(levels, dtype=np.float64)
        levels[0], levels[-1] = hi, last
        return levels
    return levels.at[0].set(hi).at[-1].set(last)


def check_positive(name: str, value: ArrayLike) -> None:
    """Raises ValueError unless a concrete schedule option ``name`` is finite and > 0 (tracers pass)."""
    concrete = concrete_value(name, value)
    if concrete is not None and not (np.all(np.isfinite(concrete)) and np.all(concrete > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}.")


def check_rho(rho: ArrayLike) -> None:
    """Raises ValueError unless a concrete rho is finite and > 0."""
    check_positive("rho", rho)


def _levels(formula: Callable[..., Any], sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
            note: str = "", quiet: bool = True, infinite_first: bool = False,
            **options: ArrayLike) -> jax.Array:
    """The checks and evaluation every formula-defined schedule shares.

    Checks ``num_steps``, ``rho`` and ``shift`` (when given) and the range, then evaluates
    ``formula(xp, ramp, sigma_min, sigma_max, *options)`` in float64 NumPy for concrete
    inputs (checking the levels fit the level dtype; ``note`` ends that message) or in
    ``jax.numpy`` for traced ones. ``quiet`` silences NumPy's overflow warnings;
    ``infinite_first`` leaves the first level (``"flow"``'s infinite one) out of the check.
    """
    num_steps = check_num_steps(num_steps)
    for name in ("rho", "shift"):
        if name in options:
            check_positive(name, options[name])
    check_sigma_range(sigma_min, sigma_max)
    given = {"sigma_min": sigma_min, "sigma_max": sigma_max, **options}
    values = [concrete_value(name, value) for name, value in given.items()]
    xp = np if all(value is not None for value in values) else jnp  # NumPy float64 when all concrete
    values = values if xp is np else [jnp.asarray(value, level_dtype()) for value in given.values()]
    with np.errstate(all="ignore" if quiet else None):
        levels = formula(xp, _ramp(xp, num_steps), *values)
    if xp is np:  # e.g. a tiny rho overflows the interior levels to NaN
        shown = [f"{name}={value!r}" for name, value in given.items()]
        check_representable_levels(levels[1:] if infinite_first else levels,
                                   f"{', '.join(shown[:-1])} and {shown[-1]}{note}")
    return jnp.asarray(levels, level_dtype())


def ve_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int) -> jax.Array:
    """The VE schedule, sigma_i = sigma_max (sigma_min / sigma_max)^(i/(N-1)).

    Args:
      sigma_min: Last (smallest) level.
      sigma_max: First (largest) level.
      num_steps: N, the number of levels, >= 1.

    Returns:
      (N,) levels in sampling order, descending.

    >>> ve_sigmas(0.02, 100.0, 3).tolist()  # doctest: +ELLIPSIS
    [100.0, 1.414..., 0.0199...]
    """
    return _levels(lambda xp, t, lo, hi: _pin_ends(xp, hi * (lo / hi) ** t, hi, lo), sigma_min, sigma_max,
                   num_steps)


def diffusers_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int) -> jax.Array:
    """Diffusers' levels, t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1)).

    These are the paper's *times*, i.e. squared noise levels; diffusers feeds them to
    the sampler as if they were sigmas. Use only to reproduce diffusers' results.

    Returns:
      (N,) levels in sampling order, descending.
    """
    # Left exactly as diffusers' formula rounds them (no pinned ends).
    return _levels(lambda xp, t, lo, hi: hi**2 * (lo**2 / hi**2) ** t, sigma_min, sigma_max, num_steps,
                   note=" (diffusers' levels are the squares)")


def karras_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
                  rho: ArrayLike = 7.0) -> jax.Array:
    """The EDM schedule: levels evenly spaced in sigma^(1/rho).

    Args:
      sigma_min: Last (smallest) level.
      sigma_max: First (largest) level.
      num_steps: N, the number of levels, >= 1.
      rho: Warping exponent, > 0; EDM uses 7. Larger rho spends more steps near sigma_min.

    Returns:
      (N,) levels in sampling order, descending.

    Raises:
      ValueError: rho is not finite and > 0.
    """
    def formula(xp: Any, t: Any, lo: Any, hi: Any, r: Any) -> Any:
        hi_r, lo_r = hi ** (1.0 / r), lo ** (1.0 / r)
        return _pin_ends(xp, (hi_r + t * (lo_r - hi_r)) ** r, hi, lo)

    return _levels(formula, sigma_min, sigma_max, num_steps, rho=rho)


def polyexponential_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
                           rho: ArrayLike = 1.0) -> jax.Array:
    r"""k-diffusion's polyexponential schedule: a power of the ramp, linear in log sigma.

    :math:`\sigma_i = \exp\big((1 - \tfrac{i}{N-1})^\rho (\ln\sigma_{max} - \ln\sigma_{min})
    + \ln\sigma_{min}\big)`, as ``k_diffusion.sampling.get_sigmas_polyexponential``. ``rho=1``
    is the exponential (VE) schedule; a larger rho spends more steps near sigma_min. The ends
    are exactly sigma_max and sigma_min.

    Args:
      sigma_min: Last (smallest) level.
      sigma_max: First (largest) level.
      num_steps: N, the number of levels, >= 1.
      rho: The ramp's exponent, > 0 (k-diffusion's default 1).

    Returns:
      (N,) levels in sampling order, descending.

    Raises:
      ValueError: rho is not finite and > 0, or a bad range or step count.

    >>> [round(s, 4) for s in polyexponential_sigmas(0.02, 100.0, 3, rho=2.0).tolist()]
    [100.0, 0.1682, 0.02]
    """
    def formula(xp: Any, t: Any, lo: Any, hi: Any, r: Any) -> Any:
        log_lo = xp.log(lo)
        return _pin_ends(xp, xp.exp((1 - t) ** r * (xp.log(hi) - log_lo) + log_lo), hi, lo)

    return _levels(formula, sigma_min, sigma_max, num_steps, rho=rho)


def flow_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
                shift: ArrayLike = 1.0) -> jax.Array:
    r"""The levels of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)`` as Karras levels.

    A rectified-flow sample :math:`x_t = (1 - t) x + t n` (:math:`n \sim N(0, I)`) is
    :math:`(1 - t)` times the Karras sample :math:`x = x_t / (1 - t) = x + \sigma n` at
    :math:`\sigma = t / (1 - t)`. diffusers' shift maps a time :math:`t` to
    :math:`t' = s t / (1 + (s - 1) t)`, which multiplies the level: :math:`\sigma' = s\sigma`.

    At construction diffusers shifts its 1000 training times :math:`j/1000` and keeps the
    smallest, :math:`t_{min} = s / (999 + s)`; ``set_timesteps(N)`` spaces
    :math:`u_i = 1 + \tfrac{i}{N-1} (t_{min} - 1)` and shifts them again (so the last level
    is shifted twice). With :math:`d = 1 - t_{min} = 999 / (999 + s)`:

    .. math:: \sigma_i = \frac{s\, u_i}{1 - u_i} = \frac{s\,(1 - \tfrac{i}{N-1} d)}{\tfrac{i}{N-1} d},

    evaluated with :math:`1 - \tfrac{i}{N-1} d = (1 - \tfrac{i}{N-1}) + \tfrac{i}{N-1} t_{min}`
    (no cancellation) in float64 and rounded once.
    :math:`\sigma_0 = \infty` (:math:`t = 1`): the sampler holds :math:`x_0 / \sigma_0` there
    and takes Euler's limit step. N = 1 is the single level :math:`\infty`.

    Args:
      sigma_min: Checked like every schedule's range, otherwise unused.
      sigma_max: Checked, otherwise unused.
      num_steps: N, the number of levels, >= 1.
      shift: s, finite and > 0 (diffusers' default 1; SD3 uses 3).

    Returns:
      (N,) levels in sampling order, descending, the first infinite.

    Raises:
      ValueError: shift is not finite and > 0, or its levels leave the level dtype.

    >>> [round(s, 3) for s in flow_sigmas(0.02, 100.0, 3, shift=3.0).tolist()]
    [inf, 3.018, 0.009]
    """
    def formula(xp: Any, t: Any, lo: Any, hi: Any, s: Any) -> Any:
        del lo, hi
        d, t_min = (FLOW_TRAIN_STEPS - 1) / (FLOW_TRAIN_STEPS - 1 + s), s / (FLOW_TRAIN_STEPS - 1 + s)
        return s * ((1 - t) + t * t_min) / (t * d)  # 1 - t d without cancellation; t = 0 gives +inf

    return _levels(formula, sigma_min, sigma_max, num_steps, infinite_first=True, shift=shift)


def iddpm_levels(C1: float = 0.001, C2: float = 0.008, M: int = 1000) -> np.ndarray:  # noqa: N803
    r"""The noise levels of iDDPM's training schedule, :math:`u_0 > \dots > u_M = 0` (float64, Table 1).

    :math:`\bar\alpha(j) = \sin^2(\pi j / (2M(C_2+1)))`, :math:`u_M = 0`,
    :math:`u_{j-1} = \sqrt{(u_j^2+1)/\max(\bar\alpha(j-1)/\bar\alpha(j), C_1) - 1}`.
    """
    return _iddpm_table(float(C1), float(C2), int(M)).copy()


@functools.lru_cache(maxsize=8)
def _iddpm_table(C1: float, C2: float, M: int) -> np.ndarray:  # noqa: N803
    def alpha_bar(j: int) -> float:
        return float(np.sin(0.5 * np.pi * j / M / (C2 + 1)) ** 2)

    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    u.flags.writeable = False
    return u


def _sigma_vp(xp: Any, t: Any, beta_d: Any, beta_min: Any) -> Any:
    return xp.sqrt(xp.expm1(beta_d * t**2 / 2 + beta_min * t))


def vp_sigma(t: ArrayLike, beta_d: ArrayLike = 19.9, beta_min: ArrayLike = 0.1) -> jax.Array:
    r"""VP's noise level at time t (Table 1).

    :math:`\sigma_{vp}(t) = \sqrt{e^{\beta_d t^2/2 + \beta_{min} t} - 1}`.

    Elementwise, in the level dtype. Its inverse is the ``c_noise`` of
    :func:`karras_jax.precondition_coefficients` (``kind="vp"``) divided by M - 1.

    >>> round(float(vp_sigma(1.0)), 1), round(float(vp_sigma(1e-3)), 4)
    (152.2, 0.0105)
    """
    return _sigma_vp(jnp, *(jnp.asarray(value, level_dtype()) for value in (t, beta_d, beta_min)))


def vp_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
              epsilon_s: float = 1e-3) -> jax.Array:
    r"""The VP column of Table 1, with the betas refitted to [sigma_min, sigma_max] as EDM does.

    :math:`t_i = 1 + \tfrac{i}{N-1}(\epsilon_s - 1)`,
    :math:`\sigma_i = \sqrt{e^{\beta_d t_i^2/2 + \beta_{min} t_i} - 1}` with
    :math:`\beta_d = 2(\ln(\sigma_{min}^2+1)/\epsilon_s - \ln(\sigma_{max}^2+1))/(\epsilon_s - 1)`,
    :math:`\beta_{min} = \ln(\sigma_{max}^2+1) - \beta_d/2`, so the ends are sigma_max
    and sigma_min (pinned exactly). Table 1's own range is sigma_vp(1e-3) = 0.0105 ..
    sigma_vp(1) = 152.2 (beta_d=19.9, beta_min=0.1).

    Returns:
      (N,) levels in sampling order, descending.
    """
    def formula(xp: Any, t: Any, lo: Any, hi: Any) -> Any:
        if not 0 < epsilon_s < 1:
            raise ValueError(f"epsilon_s must be in (0, 1), got {epsilon_s!r}.")
        log_hi, log_lo = xp.log1p(hi**2), xp.log1p(lo**2)
        beta_d = 2 * (log_lo / epsilon_s - log_hi) / (epsilon_s - 1)
        return _pin_ends(xp, _sigma_vp(xp, 1 + t * (epsilon_s - 1), beta_d, log_hi - beta_d / 2), hi, lo)

    return _levels(formula, sigma_min, sigma_max, num_steps, quiet=False)


def iddpm_sigmas(sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int, C1: float = 0.001,  # noqa: N803
                 C2: float = 0.008, M: int = 1000) -> jax.Array:  # noqa: N803
    """The iDDPM column of Table 1, subsampled from the training levels.

    The levels :func:`iddpm_levels` inside [sigma_min, sigma_max], descending, at the
    indices ``round((len - 1) i / (N - 1))`` (halves to even, as EDM rounds).

    Needs concrete sigma_min/sigma_max (the number of levels kept depends on them).

    Returns:
      (N,) levels in sampling order, descending.

    Raises:
      ValueError: fewer than two training levels lie in the range, or traced bounds.
    """
    num_steps = check_num_steps(num_steps)
    check_sigma_range(sigma_min, sigma_max)
    lo, hi = concrete_value("sigma_min", sigma_min), concrete_value("sigma_max", sigma_max)
    if lo is None or hi is None:
        raise ValueError("schedule 'iddpm' needs concrete sigma_min and sigma_max (it filters a table).")
    u = iddpm_levels(C1, C2, M)
    kept = u[(u >= float(lo)) & (u <= float(hi))]
    if kept.size < 2:
        raise ValueError(f"fewer than two iDDPM levels lie in [sigma_min, sigma_max] = [{float(lo)}, "
                         f"{float(hi)}]; widen the range.")
    index = np.round((kept.size - 1) * _ramp(np, num_steps)).astype(np.int64)
    return jnp.asarray(kept[index], level_dtype())


def custom_sigmas(sigmas: ArrayLike) -> jax.Array:
    """Checks user-given levels and returns them in the level dtype.

    Args:
      sigmas: (N,) noise levels in sampling order: finite, > 0 and strictly descending.
        Leave out the final 0; the sampler appends it.

    Raises:
      ValueError: the levels are not 1-D, empty, not finite, not positive or not strictly
        descending.
      TypeError: the levels are not real numbers.
    """
    if isinstance(sigmas, (list, tuple)):
        try:  # a Python sequence is checked like the array it becomes
            sigmas = np.asarray(sigmas, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"sigmas must be a sequence of real numbers, got {sigmas!r}.") from None
    shape = np.shape(sigmas)
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D array of noise levels, got shape {shape}.")
    values = concrete_value("sigmas", sigmas)
    if values is not None:
        # Check the levels the sampler will use: float64 input can overflow, underflow to 0
        # or merge neighbours when rounded to the level dtype.
        with np.errstate(over="ignore", under="ignore"):
            values = values.astype(level_dtype()).astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("sigmas must be finite, got non-finite entries.")
        if not np.all(values > 0):
            raise ValueError(f"sigmas must all be > 0 (leave out the final 0: it is appended), got "
                             f"{values.tolist()}.")
        if not np.all(np.diff(values) < 0):
            raise ValueError(f"sigmas must be strictly descending, got {values.tolist()}.")
        check_representable_levels(values, "sigmas")
    return jnp.asarray(sigmas, level_dtype())


def interpolated_sigmas(table: ArrayLike, num_steps: int) -> jax.Array:
    r"""A table of levels resampled to N levels, linearly in log sigma (the Align Your Steps recipe).

    The table's L levels sit at the positions :math:`j/(L-1)` of [0, 1]; level i of N is
    :math:`\exp` of the piecewise-linear interpolation of :math:`\ln\sigma` at :math:`i/(N-1)`
    (as AYS's ``loglinear_interp``). Both ends are the table's exactly; N = L returns the
    table itself (in the level dtype, bitwise), N = 1 its first level.

    Args:
      table: (L,) levels in sampling order, checked as :func:`custom_sigmas` (finite, > 0,
        strictly descending, without the final 0).
      num_steps: N, the number of levels, >= 1.

    Returns:
      (N,) levels in sampling order, descending.

    Raises:
      ValueError: a bad table, a one-level table to be stretched to N > 1 levels, or N so
        large that neighbouring levels round to the same value.

    >>> interpolated_sigmas([100.0, 1.0, 0.01], 5).tolist()
    [100.0, 10.0, 1.0, 0.10000000149011612, 0.009999999776482582]
    """
    num_steps = check_num_steps(num_steps)
    levels = custom_sigmas(table)
    size = levels.shape[0]
    if num_steps == size:
        return levels
    if size == 1:
        raise ValueError(f"sigmas holds a single level; it cannot be interpolated to num_inference_steps="
                         f"{num_steps} levels (give at least two).")
    where, knots = _ramp(np, num_steps), np.linspace(0.0, 1.0, size)
    given = concrete_value("sigmas", np.asarray(table) if isinstance(table, (list, tuple)) else table)
    if given is None:  # traced: the same interpolation in the level dtype
        out = jnp.exp(jnp.interp(jnp.asarray(where, levels.dtype), jnp.asarray(knots, levels.dtype),
                                 jnp.log(levels)))
        return _pin_ends(jnp, out, levels[0], levels[-1])
    out = _pin_ends(np, np.exp(np.interp(where, knots, np.log(given))), levels[0], levels[-1])
    rounded = out.astype(level_dtype())
    if not np.all(np.diff(rounded.astype(np.float64)) < 0):
        raise ValueError(f"sigmas interpolated to num_inference_steps={num_steps} levels round to equal "
                         f"neighbours in {level_dtype().name}; use fewer steps.")
    return jnp.asarray(rounded)


Schedule = Callable[..., jax.Array]

# One line per schedule: name -> (sigma_min, sigma_max, num_steps, **options) -> (N,) levels.
_REGISTRY: dict[str, Schedule] = {"ve": ve_sigmas, "karras": karras_sigmas, "diffusers": diffusers_sigmas,
                                  "vp": vp_sigmas, "iddpm": iddpm_sigmas,
                                  "exponential": ve_sigmas,  # k-diffusion's name for the VE formula
                                  "polyexponential": polyexponential_sigmas,
                                  "flow": flow_sigmas}

SCHEDULES = tuple(_REGISTRY)


def get_schedule(name: str) -> Schedule:
    """The function behind a registered schedule name.

    >>> get_schedule("karras") is karras_sigmas
    True

    Raises:
      ValueError: ``name`` is not a registered name (the message lists them).
    """
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(f"schedule must be one of {SCHEDULES} (or pass sigmas=... to set_timesteps), "
                     f"got {name!r}.")


def named_sigmas(name: str, sigma_min: ArrayLike, sigma_max: ArrayLike, num_steps: int,
                 **options: Any) -> jax.Array:
    """The levels of the registered schedule ``name``, for :func:`karras_jax.set_timesteps`.

    A ``rho`` the schedule does not take is left out (``rho`` shapes only ``"karras"`` and
    ``"polyexponential"``; set_timesteps always passed it, so it stays accepted everywhere);
    any other option the schedule does not take (``shift`` for all but ``"flow"``) is refused.

    Raises:
      ValueError: an unknown name, an option the schedule does not take, or the schedule's own
        errors.
    """
    takes = inspect.signature(schedule := get_schedule(name)).parameters
    for option in options:
        if option not in takes and option != "rho":
            accepted = list(takes)[3:]
            raise ValueError(f"schedule {name!r} takes no {option}= (its options: "
                             f"{', '.join(accepted) if accepted else 'none'}).")
    return schedule(sigma_min, sigma_max, num_steps, **{k: v for k, v in options.items() if k in takes})
