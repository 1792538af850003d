"""Analytic data distributions with exact denoisers, and sample-quality metrics.

For data with a known density, the ideal denoiser ``D(x; sigma) = E[y | y + n = x]``,
``n ~ N(0, sigma^2 I)``, has a closed form. Sampling through it isolates the sampler's
own error from any network's: use these to test solvers, schedules and churn settings.
The built-in mixture is also what ``karras-jax demo`` and ``generate --model mixture`` sample.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax._validation import check_finite_array, concrete_value
from karras_jax.models._record import checked_record

__all__ = [
    "GaussianData",
    "GaussianMixture",
    "default_mixture",
    "energy_distance",
]


def _check_positive(name: str, value: Any) -> None:
    """Refuses a concrete ``value`` with an entry that is not finite and > 0."""
    check_finite_array(name, value)
    concrete = concrete_value(name, value)
    if concrete is not None and not np.all(concrete > 0):
        raise ValueError(f"{name} must be > 0, got {concrete.tolist()!r}.")


@checked_record
class GaussianData:
    """Data ``N(mean, std^2 I)`` in ``dim`` dimensions.

    Attributes:
      mean: (dim,) or scalar mean mu, finite.
      std: Scalar standard deviation s > 0.

    Concrete values are checked where the record is built; traced ones pass.

    Raises:
      ValueError: a mean that is not finite, or a std that is not finite and > 0.
    """

    mean: jax.Array
    std: jax.Array

    def __post_init__(self) -> None:
        check_finite_array("mean", self.mean)
        _check_positive("std", self.std)

    def denoise(self, x: ArrayLike, sigma: ArrayLike, cond: Any = None) -> jax.Array:
        """D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2); mu at sigma = inf (x is then x / sigma)."""
        del cond
        var = self.std**2
        sigma2 = jnp.asarray(sigma) ** 2
        exact = (var * x + sigma2 * self.mean) / (var + sigma2)
        limit = jnp.broadcast_to(self.mean, exact.shape).astype(exact.dtype)
        return jnp.where(jnp.isinf(sigma2), limit, exact)

    def ode_solution(self, x_start: ArrayLike, sigma_start: ArrayLike) -> jax.Array:
        """Exact probability-flow ODE map from sigma_start to 0 (no churn).

        x -> mu + (x - mu) s / sqrt(s^2 + sigma_start^2).
        """
        scale = self.std / jnp.sqrt(self.std**2 + jnp.asarray(sigma_start) ** 2)
        return self.mean + (jnp.asarray(x_start) - self.mean) * scale

    def sample(self, key: jax.Array, n: int, dim: int) -> jax.Array:
        """N exact draws, (n, dim)."""
        return self.mean + self.std * jax.random.normal(key, (n, dim))


@checked_record
class GaussianMixture:
    """Data ``sum_k w_k N(mu_k, s_k^2 I)``.

    Attributes:
      weights: (K,) mixture weights, >= 0 and summing to 1.
      means: (K, dim) component means, finite.
      stds: (K,) component standard deviations, > 0.

    Shapes are checked where the record is built; concrete values too (traced ones pass).

    Raises:
      ValueError: shapes that do not agree, or values out of range (the message names the field).
    """

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    def __post_init__(self) -> None:
        shapes = {name: jnp.shape(getattr(self, name)) for name in ("weights", "means", "stds")}
        k = shapes["weights"][0] if len(shapes["weights"]) == 1 else None
        if k is None or len(shapes["means"]) != 2 or shapes["means"][0] != k or shapes["stds"] != (k,):
            raise ValueError(f"weights, means and stds must have shapes (K,), (K, dim) and (K,); got "
                             f"{shapes['weights']}, {shapes['means']} and {shapes['stds']}.")
        check_finite_array("weights", self.weights)
        check_finite_array("means", self.means)
        _check_positive("stds", self.stds)
        weights = concrete_value("weights", self.weights)
        if weights is not None:
            tolerance = 8 * k * float(jnp.finfo(jnp.result_type(self.weights, float)).eps)
            if not (np.all(weights >= 0) and abs(weights.sum() - 1) <= tolerance):
                raise ValueError(f"weights must be >= 0 and sum to 1, got {weights.tolist()!r} (sum "
                                 f"{float(weights.sum())!r}).")

    @property
    def dim(self) -> int:
        """Dimension of the data."""
        return self.means.shape[-1]

    def denoise(self, x: ArrayLike, sigma: ArrayLike, cond: Any = None) -> jax.Array:
        r"""Posterior-weighted mean of the per-component denoisers.

        .. math::

            D(x;\sigma) = \sum_k r_k(x) \frac{s_k^2 x + \sigma^2 \mu_k}{s_k^2 + \sigma^2},
            \quad r_k \propto w_k N(x; \mu_k, (s_k^2 + \sigma^2) I)

        At :math:`\sigma = \infty` (x then holds :math:`x/\sigma`, the sampler's convention)
        the responsibilities are the weights and :math:`D = \sum_k w_k \mu_k`.

        Args:
          x: (..., dim) noisy points.
          sigma: Scalar noise level.
          cond: Unused (the sampler's signature).

        Returns:
          (..., dim) in x's dtype; the arithmetic runs in at least float32.
        """
        del cond
        x = jnp.asarray(x)
        work = jnp.promote_types(x.dtype, jnp.float32)
        xw = x.astype(work)[..., None, :]  # (..., 1, dim)
        sigma2 = jnp.asarray(sigma, work) ** 2
        var = (self.stds.astype(work) ** 2 + sigma2)  # (K,)
        sq = jnp.sum((xw - self.means.astype(work)) ** 2, axis=-1)  # (..., K)
        logits = jnp.log(self.weights.astype(work)) - 0.5 * sq / var - 0.5 * self.dim * jnp.log(var)
        resp = jax.nn.softmax(logits, axis=-1)[..., None]  # (..., K, 1)
        s2 = (self.stds.astype(work) ** 2)[:, None]
        per_component = (s2 * xw + sigma2 * self.means.astype(work)) / (s2 + sigma2)
        exact = jnp.sum(resp * per_component, axis=-2)
        limit = jnp.broadcast_to(self.weights.astype(work) @ self.means.astype(work), exact.shape)
        return jnp.where(jnp.isinf(sigma2), limit, exact).astype(x.dtype)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """N exact draws, (n, dim)."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(k_noise, (n, self.dim))
        return self.means[comp] + self.stds[comp][:, None] * z

    def mean(self) -> jax.Array:
        """The mixture's mean, (dim,)."""
        return jnp.sum(self.weights[:, None] * self.means, axis=0)

    def covariance(self) -> jax.Array:
        """The mixture's covariance, (dim, dim)."""
        mu = self.mean()
        centred = self.means - mu
        within = jnp.sum(self.weights * self.stds**2) * jnp.eye(self.dim)
        between = jnp.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return within + between


def default_mixture() -> GaussianMixture:
    """The demo's built-in 2-D mixture.

    Eight components on a ring of radius 2 plus one at the centre, unequal weights,
    standard deviations 0.1 to 0.3.
    """
    angles = jnp.arange(8) * (2 * jnp.pi / 8)
    ring = 2.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    means = jnp.concatenate([ring, jnp.zeros((1, 2))])
    weights = jnp.asarray([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 4.0])
    stds = jnp.asarray([0.1, 0.15, 0.1, 0.15, 0.1, 0.15, 0.1, 0.15, 0.3])
    return GaussianMixture(weights=weights / weights.sum(), means=means, stds=stds)


def energy_distance(x: ArrayLike, y: ArrayLike) -> jax.Array:
    """Energy distance between two point sets, ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic).

    0 when the distributions agree (up to finite-sample bias). Time is quadratic in the set
    sizes; memory is not: the pairwise distances are summed over blocks of
    ``_BLOCK`` rows, so two sets of a million points need a few hundred MB at most.

    Args:
      x: (n, dim) points.
      y: (m, dim) points.

    Raises:
      ValueError: the sets are not 2-D with the same dim and at least 1 row each, or a
        concrete one holds NaN or inf.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    _check_sets(x, y, 1)
    return 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


_BLOCK = 1024


@jax.jit
def _block_distance_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T
    return jnp.sum(jnp.sqrt(jnp.maximum(d2, 0.0)))


def _mean_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean of |a_i - b_j| over all pairs, one block of rows of ``a`` at a time."""
    total = sum(_block_distance_sum(a[i:i + _BLOCK], b) for i in range(0, a.shape[0], _BLOCK))
    return total / (a.shape[0] * b.shape[0])


def _check_sets(x: Any, y: Any, rows: int) -> None:
    """Both ``(n, d)`` with the same d and ``rows`` rows or more; concrete ones finite."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < rows:
        raise ValueError(f"x and y must be (n, d) point sets with the same d and n >= {rows}; "
                         f"got shapes {x.shape} and {y.shape}.")
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, jax.core.Tracer) and not bool(jnp.isfinite(value).all()):
            raise ValueError(f"{name} must be finite: it holds NaN or inf.")
