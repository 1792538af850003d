r"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

Between two levels :math:`t_{min} < t_{max}` of a deterministic run, Restart goes back up
with fresh forward noise and solves the ODE down again, K times. With the base grid
:math:`\sigma_0 > \dots > \sigma_N = 0`, an interval :math:`(t_{min}, t_{max}, K, N_r)` is
snapped to the grid level :math:`\sigma_j` nearest :math:`t_{min}` (:math:`1 \le j \le N-1`,
as the paper's code does); once the run reaches :math:`x_j` at :math:`\sigma_j`, each of the
K restarts takes

.. math::

    x \leftarrow x + S_{noise}\sqrt{t_{max}^2 - \sigma_j^2}\;\epsilon, \qquad
    \text{then } N_r - 1 \text{ solver steps over } r_k = \bigl(t_{max}^{1/\rho} +
    \tfrac{k}{N_r - 1}(\sigma_j^{1/\rho} - t_{max}^{1/\rho})\bigr)^\rho,\ k = 0..N_r-1,

:math:`r_0 = t_{max}`, :math:`r_{N_r-1} = \sigma_j` (EDM's grid, :math:`\rho = 7`). The forward
jump is exactly a churn from :math:`\sigma_j` to :math:`\hat\sigma = t_{max}`, so Restart is
the base solver run over a longer table of levels: one loop, one compiled program whatever
the number of restarts (they are rows of the table, not Python iterations), the jump noise
the churn stream's at the row's index (docs/noise.md). The base run's own churn applies to
its own steps; restart steps have none besides the jump. With every K = 0 the table is the
base one and the samples are the base solver's, bitwise.

Network evaluations: ``base.evaluations(N + R)`` with :math:`R = \sum K (N_r - 1)` extra
steps (Heun: :math:`2(N + R) - 1`).

RePaint's resampling for inpainting (``kj.sample(..., jump=(L, n))``, docs/editing.md) is built
the same way (:func:`jump_points`, :func:`jump_table`): a jump back up L grid levels is a churn
row, the L steps down again are copies of the base rows.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from karras_jax.solvers.base import Solver

__all__ = ["restart"]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _snapped(restarts: tuple[Any, ...], sigmas: np.ndarray) -> list[tuple[int, float, float]]:
    """(interval index, the level t_min snaps to, t_max) of each stored interval."""
    grid = sigmas[1:-1]
    return [(n, float(grid[np.argmin(np.abs(grid - t_min))]), t_max)
            for n, (t_min, t_max, *_) in enumerate(restarts) if grid.size]


def check_restart_levels(solver: Solver, sigmas: Any) -> None:
    """Refuses concrete levels on which an interval's t_min snaps to a level at or above its t_max.

    Traced levels pass: there such an interval's rows are steps of zero length (no-ops).

    Raises:
      ValueError: naming the interval, the level it snaps to and t_max.
    """
    if not solver.restarts or isinstance(sigmas, jax.core.Tracer):
        return
    for n, low, t_max in _snapped(solver.restarts, np.asarray(sigmas, np.float64)):
        if low >= t_max:
            raise ValueError(f"restart interval {n}: t_min snaps to the grid level {low:.6g}, not below "
                             f"t_max={t_max:g}; raise t_max or lower t_min.")


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


def restart(solver: Solver, intervals: Any, *, rho: float = 7.0) -> Solver:
    """``solver`` with Restart intervals ``[(t_min, t_max, K, N_restart), ...]`` (see the module doc).

    Args:
      solver: The base :class:`Solver` (``kj.get_solver("heun")`` for the paper's).
      intervals: A sequence of ``(t_min, t_max, K, N_restart)``: levels 0 < t_min < t_max
        (finite), K >= 0 restarts, N_restart >= 2 levels in each restart's grid.
      rho: The exponent of each restart's grid (EDM's 7), finite and > 0.

    Returns:
      A :class:`Solver` named ``"restart_<base>"``; pass it as ``solver=``.

    Raises:
      TypeError / ValueError: naming the bad interval and field.

    >>> import karras_jax as kj
    >>> fancy = kj.restart(kj.heun(), [(0.06, 0.30, 2, 3)])
    >>> fancy.evaluations(18), kj.heun().evaluations(18)
    (43, 35)
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a kj.Solver (kj.get_solver(name)), got {type(solver).__name__}.")
    if solver.restarts:
        raise ValueError(f"solver {solver.name!r} already restarts: pass all the intervals to one "
                         "kj.restart call on the base solver.")
    if not (_is_real(rho) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be finite and > 0, got {rho!r}.")
    rows = []
    for n, interval in enumerate(intervals):
        if not (isinstance(interval, (tuple, list)) and len(interval) == 4):
            raise TypeError(f"intervals[{n}] must be (t_min, t_max, K, N_restart), got {interval!r}.")
        t_min, t_max, k, levels = interval
        if not all(_is_real(t) and math.isfinite(t) for t in (t_min, t_max)) or not 0 < t_min < t_max:
            raise ValueError(f"intervals[{n}]: need finite 0 < t_min < t_max, got t_min={t_min!r}, "
                             f"t_max={t_max!r}.")
        if not _is_count(k, 0) or not _is_count(levels, 2):
            raise ValueError(f"intervals[{n}]: K must be an int >= 0 and N_restart an int >= 2, got "
                             f"K={k!r}, N_restart={levels!r}.")
        if k:  # K = 0 leaves the base run untouched, bitwise
            rows.append((float(t_min), float(t_max), int(k), int(levels), float(rho)))
    extra = sum(k * (levels - 1) for _, _, k, levels, _ in rows)
    return solver._replace(name=f"restart_{solver.name}",
                           evaluations=lambda n: solver.evaluations(n + (extra if n >= 2 else 0)),
                           restarts=tuple(rows))


def restart_table(restarts: tuple[Any, ...], sigma: jax.Array, sigma_hat: jax.Array, sigma_next: jax.Array,
                  noise_std: jax.Array, s_noise: Any) -> tuple[jax.Array, ...]:
    """The base run's (N,) level columns with every restart's rows inserted in place.

    Returns ``(sigma, sigma_hat, sigma_next, noise_std)`` of length N + R, R the restart
    steps; the levels may be traced (only the row counts are static).
    """
    n = sigma.shape[0]
    grid = sigma_next[:-1]  # sigma_1 .. sigma_{N-1}: where a restart may begin
    columns, keys, extra = [[sigma], [sigma_hat], [sigma_next], [noise_std]], [], 0
    total = sum(k * (m - 1) for _, _, k, m, _ in restarts)
    for t_min, t_max, k, m, rho in restarts:
        if n < 2:  # no level between sigma_0 and 0 to restart from
            continue
        j = jnp.argmin(jnp.abs(grid - t_min))  # the restart starts at sigma_{j+1}
        low = grid[j]
        top = jnp.maximum(jnp.asarray(t_max, sigma.dtype), low)  # t_max <= low: steps of zero length
        ramp = jnp.arange(m, dtype=sigma.dtype) / (m - 1)
        r = (top ** (1 / rho) + ramp * (low ** (1 / rho) - top ** (1 / rho))) ** rho
        r = jnp.where(top > low, r.at[0].set(top).at[-1].set(low), low)
        # (top - low)(top + low), not top^2 - low^2: exactly 0 for an empty interval, whatever FMA
        jump = jnp.sqrt((top - low) * (top + low)) * jnp.asarray(s_noise, sigma.dtype)
        start = jnp.concatenate([low[None], r[1:-1]])  # the level each step leaves, before the jump
        leave = r[:-1]
        std = jnp.zeros(m - 1, sigma.dtype).at[0].set(jump)
        for column, values in zip(columns, (start, leave, r[1:], std), strict=True):
            column.append(jnp.tile(values, k))  # one op whatever K: the program does not grow with it
        keys.append(j * (total + 1) + 1 + extra + jnp.arange(k * (m - 1)))  # rows after base step j
        extra += k * (m - 1)
    if not extra:
        return sigma, sigma_hat, sigma_next, noise_std
    order = jnp.argsort(jnp.concatenate([jnp.arange(n) * (total + 1), *keys]), stable=True)
    return tuple(jnp.concatenate(column)[order] for column in columns)


def jump_points(n: int, lowest: int, length: int) -> list[int]:
    r"""The grid levels RePaint's resampling jumps back from, top to bottom.

    With :math:`\sigma_0 > \dots > \sigma_{N-1} > \sigma_N = 0`, RePaint's jump times
    :math:`t = 0, L, 2L, \dots < T - L` (``get_schedule_jump``; its time t is the state one
    step above t - 1, and t = -1 the finished sample) are the levels
    :math:`j = N - 1 - mL`, :math:`m \ge 0`, whose jump target :math:`j - L` is at least
    ``lowest`` (0; or the first level a run may return to: its start step, 1 on a flow
    schedule whose :math:`\sigma_0` is infinite). There are
    :math:`\lfloor (N - 1 - \text{lowest}) / L \rfloor` of them.
    """
    return list(range(n - 1 - ((n - 1 - lowest - length) // length) * length, n, length)) \
        if n - 1 - lowest >= length else []


def jump_table(points: list[int], length: int, count: int, sigma: jax.Array, sigma_hat: jax.Array,
               sigma_next: jax.Array, noise_std: jax.Array) -> tuple[jax.Array, ...]:
    r"""The base run's (N,) level columns with RePaint's jump rows inserted (levels may be traced).

    After the run reaches each level j of ``points`` (from :func:`jump_points`), ``count - 1``
    times: a jump row, then base rows j-L+1 .. j-1 again. A re-run row is its base row, churn
    included. The jump row leaving level j for base row :math:`k = j - L` starts at
    :math:`\sigma = \sigma_j` and is a churn straight to :math:`\hat\sigma_k` (then row k's
    step): the forward diffusion :math:`\sigma_j \to \sigma_k` and row k's own churn, two
    independent Gaussians drawn as one,

    .. math::

        \text{std} = \sqrt{(\sigma_k^2 - \sigma_j^2) + \text{std}_k^2}.

    As in :func:`restart_table`, each repeated block is one ``tile``, so the program does not
    grow with ``count``. Returns ``(sigma, sigma_hat, sigma_next, noise_std)`` of length
    N + R, :math:`R = (\text{count} - 1) L \cdot \#\text{points}`.
    """
    if count < 2 or not points:
        return sigma, sigma_hat, sigma_next, noise_std
    columns: list[list[jax.Array]] = [[], [], [], []]
    done = 0
    for j in points:
        k = j - length
        # (top - left)(top + left), not top^2 - left^2: exactly 0 where they are equal, whatever FMA
        forward = jnp.sqrt((sigma[k] - sigma[j]) * (sigma[k] + sigma[j]) + noise_std[k] ** 2)
        first = (sigma[j], sigma_hat[k], sigma_next[k], forward)  # the jump row
        for column, base, head in zip(columns, (sigma, sigma_hat, sigma_next, noise_std), first, strict=True):
            block = jnp.concatenate([head[None], base[k + 1:j]])
            column.extend([base[done:j], jnp.tile(block, count - 1)])  # one op whatever count
        done = j
    return tuple(jnp.concatenate([*column, base[done:]])
                 for column, base in zip(columns, (sigma, sigma_hat, sigma_next, noise_std), strict=True))
