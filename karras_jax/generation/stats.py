r"""Running feature statistics (count, mean, covariance) and the Frechet distance between them.

FID and its relatives compare the Gaussian fits (mean and covariance) of two sets of
features. :class:`FeatureStats` accumulates those moments on the device, one batch at a
time, from float32 features, without x64 and under ``jit``, to nearly float64 accuracy;
two states :meth:`~FeatureStats.merge` (devices, hosts, resumed jobs); :func:`frechet_distance`
compares two states in float64 on the host.

The algorithm. A state holds a count :math:`n`, a shift :math:`c` (the first row it was
given, kept for good) and the sums around it,

.. math::

    S_1 = \sum_k (x_k - c), \qquad S_2 = \sum_k (x_k - c)(x_k - c)^\top,

each as an unevaluated sum ``hi + lo`` of two float32 arrays (a double-float, about 48
significant bits). The moments are read on the host in float64:

.. math::

    \mu = c + S_1 / n, \qquad
    \Sigma = \frac{S_2 - S_1 S_1^\top / n}{n - 1}

(the unbiased covariance, ``np.cov(x, rowvar=False)``, as pytorch-fid computes it).

One :meth:`~FeatureStats.update` with a batch :math:`x_1 \dots x_m` computes in float32
:math:`y_k = x_k - c`, their mean :math:`t` (rounded: any t will do), the centred rows
:math:`d_k = y_k - t`, their sum :math:`r = \sum_k d_k` and their Gram matrix
:math:`D = \sum_k d_k d_k^\top` (one float32 matmul at ``Precision.HIGHEST``). Then exactly

.. math::

    \sum_k y_k = r + m\,t, \qquad
    \sum_k y_k y_k^\top = D + r t^\top + t r^\top + m\,t t^\top,

and these are added to :math:`(S_1, S_2)` with Knuth's error-free TwoSum, so the
accumulation itself loses nothing (its error is :math:`O(\varepsilon^2)` of the sums).
:meth:`~FeatureStats.merge` moves one state's sums to the other's shift by the same identity
(:math:`g = c_b - c_a` for t, :math:`S_1^{(b)}` for r) and adds them.

The error. With :math:`\varepsilon = 2^{-24}` (float32's unit round-off) and
:math:`\gamma_m = m\varepsilon / (1 - m\varepsilon)`: :math:`y_k` is exact where
:math:`x_k` is within a factor 2 of :math:`c` (Sterbenz's lemma) and within
:math:`\varepsilon |y_k|` elsewhere; the Gram matrix is within
:math:`\gamma_m \sqrt{D_{ii} D_{jj}}` entrywise (Cauchy-Schwarz), typically
:math:`\sqrt{m}\,\varepsilon` of it; the terms in t add :math:`O(\varepsilon)\,m |t_i t_j|`,
of random sign from batch to batch. So, whatever the number of updates B and whatever
:math:`|\mu| / \sigma`,

.. math::

    \frac{|\hat\Sigma_{ij} - \Sigma_{ij}|}{\sigma_i \sigma_j} \lesssim \gamma_m
      + O\Big(\frac{\varepsilon}{\sqrt{B}}\Big) \frac{|\mu_i - c_i| |\mu_j - c_j|}{\sigma_i \sigma_j},
    \qquad
    |\hat\mu_i - \mu_i| \lesssim \gamma_m \sigma_i + \varepsilon |\mu_i - c_i|,

where m is the largest batch and :math:`|\mu - c|` a few standard deviations (c is a row of
the data). Raw float32 sums of :math:`x` and :math:`x x^\top` would instead lose
:math:`\varepsilon\,\mu^2/\sigma^2` of the covariance: all of it for
:math:`\mu = 10^3, \sigma = 1`. Measured on that case (100 batches of 100 rows, 64 features),
this matches the float64 two-pass covariance to :math:`6 \times 10^{-8}\,\sigma_i\sigma_j`
entrywise (:math:`4 \times 10^{-8}` relative in the Frobenius norm) and the mean to
:math:`6 \times 10^{-9}\,\sigma_i` (:math:`6 \times 10^{-12}` relative); see
tests/generation/test_stats.py. Under x64 the state is float64 (the ``lo`` parts then stay
near 0) and matches to float64 round-off.

One subtlety of XLA: a value used in several fusions may be recomputed in each, and LLVM
may contract a product and a sum into one FMA in some of them; ``t`` is therefore formed as
the root of a reduction (read once), never as ``sum / m``, so that :math:`d_k` and the terms
in t use the same t.

Across devices: :meth:`~FeatureStats.update` with features sharded over a mesh is one
update; XLA sums the per-device partial sums. Across hosts: gather the states (e.g.
``jax.experimental.multihost_utils.process_allgather``) and fold them with
:meth:`~FeatureStats.merge`. Non-finite features are refused when they are host (NumPy)
arrays; device arrays are not inspected (that would stall the device), but a state they
made non-finite is refused when it is read, saved or compared.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(1e3, 1.0, size=(300, 4)).astype(np.float32)
>>> stats = FeatureStats.empty(4).update(x[:100]).update(x[100:])
>>> int(stats.count)
300
>>> bool(np.allclose(stats.covariance, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-6, atol=1e-7))
True
>>> round(frechet_distance(stats, stats), 8)
0.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from karras_jax._files import atomic_write
from karras_jax._validation import check_count, check_finite_array

__all__ = ["FeatureStats", "frechet_distance"]

#: What :meth:`FeatureStats.save` writes as the file's ``format`` entry, and its ``version``.
FORMAT = "karras_jax.FeatureStats"
VERSION = 1
_ARRAYS = ("count", "shift", "sum_hi", "sum_lo", "outer_hi", "outer_lo")


def _state_dtype() -> jnp.dtype:
    """float32, or float64 under x64."""
    return jnp.dtype(jnp.result_type(float))


@struct.dataclass
class FeatureStats:
    r"""Running count, mean and covariance of ``(n, dim)`` features; immutable, a pytree.

    Build one with :meth:`empty`, feed it with :meth:`update` (pure, jit-able), combine two with
    :meth:`merge`; read :attr:`mean` and :attr:`covariance` (float64 NumPy, on the host), compare
    two with :func:`frechet_distance`, keep one with :meth:`save` / :meth:`load`. The module
    docstring gives the algorithm and its error.

    Attributes:
      count: int32 scalar: the number of rows seen, n (at most 2**31 - 1).
      shift: (dim,) the reference point c: the first row (not masked) it was given; zeros while empty.
      sum_hi: (dim,) with ``sum_lo``, the double-float :math:`S_1 = \sum_k (x_k - c)`.
      sum_lo: (dim,)
      outer_hi: (dim, dim) with ``outer_lo``, the double-float
        :math:`S_2 = \sum_k (x_k - c)(x_k - c)^\top`.
      outer_lo: (dim, dim)

    The arrays are float32 (float64 under x64). ``count`` is a device array that works under
    ``jit``; ``int(stats.count)`` reads it.
    """

    count: jax.Array
    shift: jax.Array
    sum_hi: jax.Array
    sum_lo: jax.Array
    outer_hi: jax.Array
    outer_lo: jax.Array

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """Statistics of no rows of ``dim`` features.

        Raises:
          ValueError: ``dim`` is not an int >= 1.
        """
        dim = check_count("dim", dim)
        dtype = _state_dtype()
        vector, matrix = jnp.zeros((dim,), dtype), jnp.zeros((dim, dim), dtype)
        return cls(jnp.zeros((), jnp.int32), vector, vector, vector, matrix, matrix)

    @property
    def dim(self) -> int:
        """The number of features (static: read from the shapes)."""
        return int(self.shift.shape[-1])

    def update(self, features: ArrayLike, mask: ArrayLike | None = None) -> FeatureStats:
        r"""The statistics with the rows of ``features`` added; pure, jit-able, any float dtype.

        Args:
          features: ``(n, dim)`` floating-point features (cast to the state's float32, or
            float64 under x64). May be sharded over a mesh: the result is the same as on one
            device up to float32 round-off in the order of the row sums. ``n = 0`` returns
            ``self``.
          mask: Optional ``(n,)`` bools; rows where it is False are ignored (padding). Their
            values never reach the sums, so they may be anything, NaN included.

        Returns:
          The new statistics (``self`` is unchanged). A call outside ``jit`` runs one compiled
          program per (shape, dtype, sharding) of its inputs.

        Raises:
          TypeError: ``features`` is not floating-point, or ``mask`` is not boolean.
          ValueError: ``features`` is not ``(n, dim)`` for this state's dim, ``mask`` is not
            ``(n,)``, or host (NumPy) ``features`` hold NaN or inf in a row that counts.
        """
        x = _check_features(features, self.dim, checked=mask is None)
        if mask is not None:
            mask = _check_mask(mask, x.shape[0])
            if isinstance(x, np.ndarray):  # host rows that count are checked; masked-out ones may be NaN
                check_finite_array("features", x[np.asarray(mask)])
        if x.shape[0] == 0:
            return self
        return _update(self, x, mask)

    def merge(self, other: FeatureStats) -> FeatureStats:
        r"""The statistics of both row sets; pure, jit-able, exact up to float32 round-off.

        ``a.update(x).merge(b.update(y))`` equals ``a.update(x).update(y)`` to the accuracy
        the module docstring states (the shift terms use :math:`g = c_b - c_a`, of the order
        of a standard deviation for two samples of one distribution). An empty state is
        the identity. Merging is how hosts (and resumed jobs) combine their statistics.

        Raises:
          TypeError: ``other`` is not a :class:`FeatureStats`.
          ValueError: the two have different dims.
        """
        _check_stats("other", other)
        if other.dim != self.dim:
            raise ValueError(f"other must have dim {self.dim} like self, got dim {other.dim}.")
        return _merge(self, other)

    @property
    def mean(self) -> np.ndarray:
        r"""(dim,) float64 NumPy: :math:`\mu = c + S_1 / n`, read on the host.

        Raises:
          ValueError: no rows yet, or the statistics are not finite.
          TypeError: read inside ``jit`` (it is a host-side float64 value).
        """
        return _moments("stats", self, covariance=False)[0]

    @property
    def covariance(self) -> np.ndarray:
        r"""(dim, dim) float64 NumPy, unbiased (``n - 1``, as ``np.cov(x, rowvar=False)``).

        :math:`\Sigma = (S_2 - S_1 S_1^\top / n) / (n - 1)`, symmetrised, read on the host.

        Raises:
          ValueError: fewer than 2 rows, or the statistics are not finite.
          TypeError: read inside ``jit``.
        """
        return _moments("stats", self, covariance=True)[1]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the statistics to ``path`` as an ``.npz``, atomically; returns the path.

        The file holds the state's arrays bit for bit (``count``, ``shift``, ``sum_hi``,
        ``sum_lo``, ``outer_hi``, ``outer_lo``) with ``format`` and ``version`` entries, and,
        once there are 2 rows, ``mu`` and ``sigma`` (float64 mean and covariance): the two
        entries a pytorch-fid statistics file holds, so it can read the file too.

        Raises:
          ValueError: the statistics are not finite (nothing is written).
          OSError: the write failed; a previous file at ``path`` is intact.
        """
        host = {name: np.asarray(jax.device_get(getattr(self, name))) for name in _ARRAYS}
        arrays: dict[str, np.ndarray] = {"format": np.asarray(FORMAT), "version": np.asarray(VERSION), **host}
        if int(host["count"]) >= 2:
            arrays["mu"], arrays["sigma"] = _moments("stats", self, covariance=True)
        elif not all(np.isfinite(host[name]).all() for name in _ARRAYS[1:]):
            raise ValueError("stats are not finite: the features given to update held NaN or inf.")
        return atomic_write(path, lambda file: np.savez(file, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Reads statistics written by :meth:`save`, bit for bit when the dtype is unchanged.

        A file saved under x64 (float64) and read without it, or the other way round, is
        converted through float64 ``hi + lo`` into the current state dtype.

        Raises:
          ValueError: ``path`` is not such a file (not an ``.npz``, corrupt or truncated, a
            wrong ``format`` or ``version``, a missing entry, inconsistent shapes or dtypes,
            non-finite values, a negative count); the message names the path and the fault.
          OSError: ``path`` cannot be opened (missing, a folder, no permission).
        """
        path = Path(path)
        with open(path, "rb"):
            pass  # missing, a folder, no permission: the OSError as it is
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds one .npy array, not an .npz archive")
            with loaded:
                data = {name: loaded[name] for name in loaded.files}
        except Exception as err:  # BadZipFile, EOFError, zlib.error, ...: whatever a damaged archive raises
            raise ValueError(f"{path} is not a FeatureStats file: cannot read it as an .npz "
                             f"({type(err).__name__}: {err}).") from None
        return cls(*_checked_file_arrays(path, data))


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    r"""The Frechet distance between the Gaussian fits of two statistics (FID's formula), float64.

    .. math::

        d^2 = \lVert\mu_a - \mu_b\rVert^2 + \operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b
              - 2 \operatorname{tr}\big(\Sigma_a \Sigma_b\big)^{1/2}

    It is computed PSD-safely, with no complex parts and no squaring. Each covariance is taken
    as its nearest PSD matrix :math:`\Sigma^+ = V \operatorname{diag}(\max(\lambda, 0)) V^\top`
    (its symmetric eigendecomposition with the tiny negative eigenvalues that round-off leaves in
    a singular covariance clipped to 0), with root :math:`A = V \operatorname{diag}(\sqrt{\max(\lambda,
    0)}) V^\top`; then :math:`\operatorname{tr}\Sigma^+ = \sum \max(\lambda, 0)` and
    :math:`\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2} = \operatorname{tr}(A_a \Sigma_b A_a)^{1/2}
    = \lVert A_a A_b\rVert_*`, the sum of the singular values of :math:`A_a A_b`. So

    .. math::

        d^2 = \lVert\mu_a - \mu_b\rVert^2 + \lVert A_a\rVert_F^2 + \lVert A_b\rVert_F^2
              - 2 \lVert A_a A_b\rVert_* \ge 0,

    and the distance of a set to itself is 0 up to float64 round-off (about
    :math:`10^{-15}\operatorname{tr}\Sigma`), singular covariances (fewer rows than features)
    included, where ``scipy.linalg.sqrtm`` of the product loses half the digits. For full-rank
    covariances it is pytorch-fid's ``calculate_frechet_distance``. Like FID it is biased upward
    for small n: compare distances computed at equal sizes.

    Args:
      stats_a: Statistics of one set, at least 2 rows.
      stats_b: Statistics of the other, the same dim, at least 2 rows.

    Returns:
      The distance as a Python float (the squared Frechet distance of the two Gaussians).

    Raises:
      TypeError: either is not a :class:`FeatureStats`.
      ValueError: their dims differ, either has fewer than 2 rows or is not finite.

    >>> import numpy as np
    >>> a = FeatureStats.empty(2).update(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
    >>> b = FeatureStats.empty(2).update(np.array([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [3.0, 2.0]]))
    >>> round(frechet_distance(a, b), 6)   # the same covariance, means 1 apart
    1.0
    """
    _check_stats("stats_a", stats_a)
    _check_stats("stats_b", stats_b)
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"stats_a and stats_b must have the same dim, got {stats_a.dim} and {stats_b.dim}.")
    mu_a, cov_a = _moments("stats_a", stats_a, covariance=True)
    mu_b, cov_b = _moments("stats_b", stats_b, covariance=True)
    (root_a, trace_a), (root_b, trace_b) = _psd_sqrt(cov_a), _psd_sqrt(cov_b)
    cross = np.linalg.svd(root_a @ root_b, compute_uv=False).sum()
    diff = mu_a - mu_b
    # round-off can take a distance of 0 (a set with itself) a few ulps below it
    return max(0.0, float(diff @ diff + trace_a + trace_b - 2.0 * cross))


# --- checks ---------------------------------------------------------------------------------


def _check_stats(name: str, value: Any) -> None:
    if not isinstance(value, FeatureStats):
        raise TypeError(f"{name} must be a FeatureStats, got {type(value).__name__}.")


def _check_features(features: Any, dim: int, checked: bool = True) -> Any:
    """Checks the dtype and shape of ``features`` (and host values for NaN/inf); returns an array."""
    if isinstance(features, (str, bytes)) or features is None:
        raise TypeError(f"features must be an (n, {dim}) floating-point array, "
                        f"got {type(features).__name__}.")
    x = features if isinstance(features, (jax.Array, np.ndarray)) else np.asarray(features)
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"features must hold floating-point numbers, got dtype {dtype}.")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"features must be (n, dim) = (n, {dim}), got shape {tuple(x.shape)}.")
    if checked and isinstance(x, np.ndarray):
        check_finite_array("features", x)
    return x


def _check_mask(mask: Any, rows: int) -> Any:
    m = mask if isinstance(mask, (jax.Array, np.ndarray)) else np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must hold bools, got dtype {m.dtype}.")
    if m.shape != (rows,):
        raise ValueError(f"mask must be ({rows},), one bool per row of features, got shape {tuple(m.shape)}.")
    return m


def _moments(name: str, stats: FeatureStats, *, covariance: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(mean, covariance or None) in float64 on the host, refusing too few rows and non-finite values."""
    leaves = [getattr(stats, field) for field in _ARRAYS]
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        raise TypeError(f"{name}'s mean and covariance are float64 values read on the host; they cannot "
                        "be read inside jit (return the FeatureStats and read them outside).")
    count, shift, sum_hi, sum_lo, outer_hi, outer_lo = (np.asarray(a) for a in jax.device_get(leaves))
    n, needed = int(count), 2 if covariance else 1
    if n < needed:
        raise ValueError(f"{name} must hold at least {needed} row(s) for its "
                         f"{'covariance' if covariance else 'mean'}, got {n}.")
    s1 = sum_hi.astype(np.float64) + sum_lo.astype(np.float64)
    mean = shift.astype(np.float64) + s1 / n
    cov = None
    if covariance:
        s2 = outer_hi.astype(np.float64) + outer_lo.astype(np.float64)
        cov = (s2 - np.outer(s1, s1) / n) / (n - 1)
        cov = (cov + cov.T) / 2
    if not (np.isfinite(mean).all() and (cov is None or np.isfinite(cov).all())):
        raise ValueError(f"{name} is not finite: the features given to update held NaN or inf "
                         "(or values too large for the state's dtype).")
    return mean, cov


def _checked_file_arrays(path: Path, data: dict[str, np.ndarray]) -> list[jax.Array]:
    """The state's arrays from a loaded ``.npz``, checked, in the current state dtype."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path} is not a FeatureStats file: {what}.")

    if "format" not in data or data["format"].shape != () or str(data["format"]) != FORMAT:
        found = repr(str(data["format"])) if "format" in data else "none"
        raise bad(f"its format entry is {found}, not {FORMAT!r} (entries: {sorted(data)})")
    if "version" not in data or data["version"].shape != () or int(data["version"]) != VERSION:
        found = data["version"] if "version" in data else "missing"
        raise bad(f"its version is {found}, this reads version {VERSION}")
    missing = [name for name in _ARRAYS if name not in data]
    if missing:
        raise bad(f"it has no {', '.join(missing)}")
    count, *floats = (data[name] for name in _ARRAYS)
    if count.shape != () or not np.issubdtype(count.dtype, np.integer) or int(count) < 0:
        raise bad(f"count must be an integer >= 0, got {count!r}")
    dim = floats[0].shape[0] if floats[0].ndim == 1 else -1
    shapes = [(dim,)] * 3 + [(dim, dim)] * 2
    if dim < 1 or [a.shape for a in floats] != shapes:
        raise bad(f"shift, sum_hi, sum_lo, outer_hi, outer_lo must be (dim,) x 3 and (dim, dim) x 2, got "
                  f"{[a.shape for a in floats]}")
    dtypes = {a.dtype for a in floats}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        raise bad(f"its arrays must share one floating dtype, got {sorted(map(str, dtypes))}")
    if not all(np.isfinite(a).all() for a in floats):
        raise bad("it holds NaN or inf")
    dtype = _state_dtype()
    shift, sum_hi, sum_lo, outer_hi, outer_lo = floats
    if floats[0].dtype != dtype:  # saved with the other x64 setting: re-split hi + lo
        shift = shift.astype(dtype)
        sum_hi, sum_lo = _resplit(sum_hi, sum_lo, dtype)
        outer_hi, outer_lo = _resplit(outer_hi, outer_lo, dtype)
    return [jnp.asarray(count, jnp.int32), *(jnp.asarray(a) for a in (shift, sum_hi, sum_lo, outer_hi,
                                                                        outer_lo))]


def _resplit(hi: np.ndarray, lo: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    total = hi.astype(np.float64) + lo.astype(np.float64)
    new_hi = total.astype(dtype)
    return new_hi, (total - new_hi.astype(np.float64)).astype(dtype)


# --- the arithmetic -------------------------------------------------------------------------


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's TwoSum: ``s + err == a + b`` exactly, ``s = fl(a + b)`` (IEEE round-to-nearest)."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _add(hi: jax.Array, lo: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The double-float ``(hi, lo) + x``, renormalised so that ``|lo| <= ulp(hi) / 2``."""
    s, err = _two_sum(hi, x)
    return _two_sum(s, lo + err)


def _add_pairs(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The double-float ``(a_hi, a_lo) + (b_hi, b_lo)``."""
    s, err = _two_sum(a[0], b[0])
    return _two_sum(s, err + (a[1] + b[1]))


def _shift_terms(e: jax.Array, r: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""What the sums of n rows z (r = sum z) gain when every row becomes z + e.

    :math:`n e` for the sum, :math:`r e^\top + e r^\top + n e e^\top` for the sum of outer products.
    """
    return n * e, jnp.outer(r, e) + jnp.outer(e, r) + n * jnp.outer(e, e)


@jax.jit
def _update(stats: FeatureStats, x: jax.Array, mask: jax.Array | None) -> FeatureStats:
    dtype = stats.sum_hi.dtype
    x = x.astype(dtype)
    rows = jnp.asarray(x.shape[0], jnp.int32) if mask is None else jnp.sum(mask, dtype=jnp.int32)
    # the first (kept) row, picked by a sum of it and zeros (exact), which works on rows sharded over
    # an Explicit mesh axis where x[i] does not
    pick = jnp.arange(x.shape[0]) == (0 if mask is None else jnp.argmax(mask))
    first = jnp.sum(jnp.where(pick[:, None], x, 0), axis=0)
    shift = jnp.where((stats.count == 0) & (rows > 0), first, stats.shift)
    y = x - shift  # exact where x is within a factor 2 of the shift (Sterbenz)
    # t, the batch mean's offset from the shift, is the root of a reduction: every use below reads one
    # rounded value. (As sum(y) / m, XLA would recompute the division in each fusion that uses it and
    # contract some of those into an FMA with the subtraction, so that d and t would disagree.)
    if mask is None:
        t = jnp.sum(y * (1.0 / x.shape[0]), axis=0)
        d = y - t
    else:
        keep = mask[:, None]
        t = jnp.sum(jnp.where(keep, y, 0) * (1.0 / jnp.maximum(rows, 1).astype(dtype)), axis=0)
        d = jnp.where(keep, y - t, 0)
    r = jnp.sum(d, axis=0)
    gram = _gram(d)
    moved_sum, moved_outer = _shift_terms(t, r, rows.astype(dtype))
    sum_hi, sum_lo = _add(stats.sum_hi, stats.sum_lo, r + moved_sum)
    outer_hi, outer_lo = _add(stats.outer_hi, stats.outer_lo, gram + moved_outer)
    return FeatureStats(stats.count + rows, shift, sum_hi, sum_lo, outer_hi, outer_lo)


def _gram(d: jax.Array) -> jax.Array:
    """d^T d in float32 at full precision (TPUs and GPUs would round the inputs to bfloat16 or TF32).

    Rows sharded over an Explicit mesh axis need the output's sharding spelled out: replicated.
    """
    sharding = jax.typeof(d).sharding
    spec = getattr(sharding, "spec", None)
    where = {"out_sharding": NamedSharding(sharding.mesh, P())} if spec and spec[0] is not None else {}
    return jnp.matmul(d.T, d, precision=jax.lax.Precision.HIGHEST, preferred_element_type=d.dtype, **where)


@jax.jit
def _merge(a: FeatureStats, b: FeatureStats) -> FeatureStats:
    shift = jnp.where(a.count > 0, a.shift, b.shift)

    def around_shift(s: FeatureStats) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        # sum (x - shift) = S1 + n g, with g = c_s - shift: exact zero terms when g == 0
        moved_sum, moved_outer = _shift_terms(s.shift - shift, s.sum_hi, s.count.astype(s.sum_hi.dtype))
        return _add(s.sum_hi, s.sum_lo, moved_sum), _add(s.outer_hi, s.outer_lo, moved_outer)

    (sum_a, outer_a), (sum_b, outer_b) = around_shift(a), around_shift(b)
    sum_hi, sum_lo = _add_pairs(sum_a, sum_b)
    outer_hi, outer_lo = _add_pairs(outer_a, outer_b)
    return FeatureStats(a.count + b.count, shift, sum_hi, sum_lo, outer_hi, outer_lo)


def _psd_sqrt(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """The PSD root of a symmetric matrix (negative eigenvalues clipped to 0) and its square's trace."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 0.0, None)
    return (vectors * np.sqrt(values)) @ vectors.T, float(values.sum())
