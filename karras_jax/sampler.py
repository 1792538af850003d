"""The whole of Algorithm 2 as one XLA program: ``sample`` and ``make_sampler``.

The loop over noise levels is a ``lax.fori_loop`` (a ``lax.scan`` when the trajectory is
kept), so compile time and compiled memory do not grow with the number of steps, and the
network is traced twice in all: once for the Euler stage and once for Heun's correction.
The last step, down to sigma = 0, is peeled off the loop and is Euler only, so Heun
costs exactly 2N - 1 network evaluations with no ``lax.cond`` around the network and the
network is never evaluated at sigma = 0.

Noise stream (a contract, pinned by a golden-value test): for sample ``b`` with key ``k_b``

    k_init, k_churn = jax.random.split(k_b)
    x_0   = init_noise_sigma * jax.random.normal(k_init, sample_shape, dtype)
    eps_i = s_noise * jax.random.normal(jax.random.fold_in(k_churn, i), sample_shape, dtype)

for the churn of step ``i`` (0-based). A sample therefore depends only on its own key
(and its own ``cond``), whatever the batch it sits in or the devices it runs on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from karras_jax._noise import fast_keys, fold_in_per_key, normal_per_key, split_per_key
from karras_jax._validation import check_num_steps, level_dtype
from karras_jax.config import KarrasVeConfig
from karras_jax.state import KarrasVeState
from karras_jax.steps import churn_gamma, churn_std

__all__ = [
    "SOLVERS",
    "Trajectory",
    "initial_noise",
    "make_sampler",
    "normalize_keys",
    "sample",
]

SOLVERS = ("heun", "euler")

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


class Trajectory(NamedTuple):
    """Per-step record of a sampling run (``sample(..., return_trajectory=True)``).

    Attributes:
      samples: (N+1, B, *sample_shape): x_0 (the start noise) then x_1 .. x_N (x_N is the
        result).
      denoised: (N, B, *sample_shape): D(x_hat_i; sigma_hat_i), the network's first
        estimate of the clean sample at each step.
      sigmas: (N+1,) the noise levels sigma_0 .. sigma_N = 0.
    """

    samples: jax.Array
    denoised: jax.Array
    sigmas: jax.Array


def normalize_keys(keys: Any) -> jax.Array:
    """Returns a (B,) batch of typed keys from typed (B,) or raw uint32 (B, 2) keys.

    Raises:
      TypeError: ``keys`` is not an array of PRNG keys.
      ValueError: ``keys`` is a single key or has the wrong number of dimensions.
    """
    dtype, shape = getattr(keys, "dtype", None), getattr(keys, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(
            "keys must be a (B,) array of PRNG keys, e.g. jax.random.split(jax.random.key(0), B); "
            f"got {type(keys).__name__}."
        )
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if len(shape) != 1:
            raise ValueError(
                f"keys must be a 1-D batch of keys of shape (B,), got shape {shape}; for one "
                "sample pass key[None] or jax.random.split(key, 1)."
            )
        return keys
    if dtype == jnp.uint32:
        width = jax.random.key_data(jax.random.key(0)).shape[-1]
        if len(shape) != 2 or shape[1] != width:
            raise ValueError(
                f"raw uint32 keys must have shape (B, {width}) (a batch of jax.random.PRNGKey), got "
                f"shape {shape}; for one sample pass key[None]."
            )
        return jax.random.wrap_key_data(keys)
    raise TypeError(
        "keys must be typed PRNG keys (jax.random.key / jax.random.split) or raw uint32 keys of "
        f"shape (B, 2), got dtype {dtype}."
    )


def _check_state(state: Any) -> None:
    if not isinstance(state, KarrasVeState):
        raise TypeError(f"state must be a KarrasVeState, got {type(state).__name__}.")
    if not state.is_set:
        raise ValueError("state has no noise levels yet: call set_timesteps first.")


def _check_shape(sample_shape: Any) -> tuple[int, ...]:
    if not isinstance(sample_shape, tuple) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d > 0
        for d in sample_shape
    ):
        raise ValueError(f"sample_shape must be a tuple of positive ints, got {sample_shape!r}.")
    return tuple(int(d) for d in sample_shape)


def _check_solver(solver: Any) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")


def _check_dtype(dtype: Any) -> jnp.dtype:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")
    return dtype


def _split(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    return split_per_key(keys)


def _normal(keys: jax.Array, sample_shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    return normal_per_key(keys, sample_shape, dtype)


def initial_noise(
    keys: jax.Array, state: KarrasVeState, sample_shape: tuple[int, ...], dtype: Any = jnp.float32
) -> jax.Array:
    """x_0 of the noise stream: ``init_noise_sigma * normal(split(k_b)[0], sample_shape)``.

    Useful to inspect or reuse the start noise (pass it back as ``x_init``).

    Returns:
      (B, *sample_shape) in ``dtype``.
    """
    _check_state(state)
    keys = normalize_keys(keys)
    sample_shape = _check_shape(sample_shape)
    dtype = _check_dtype(dtype)
    k_init, _ = _split(keys)
    z = _normal(fast_keys(k_init, sample_shape), sample_shape, dtype)
    work = jnp.promote_types(dtype, level_dtype())
    return (state.init_noise_sigma.astype(work) * z.astype(work)).astype(dtype)


def _check_cond(cond: Any, batch: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != batch:
            where = jax.tree_util.keystr(path) or "cond"
            raise ValueError(
                f"cond{'' if where == 'cond' else where} must have leading dimension B={batch} "
                f"(one entry per key), got shape {shape}."
            )


def _progress_printer(total: int) -> Callable[[Any], None]:
    def report(i: Any) -> None:
        done = int(i) + 1
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\rsampling [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def sample(
    denoise_fn: DenoiseFn,
    keys: jax.Array,
    state: KarrasVeState,
    config: KarrasVeConfig,
    sample_shape: tuple[int, ...],
    cond: Any = None,
    solver: str = "heun",
    *,
    x_init: ArrayLike | None = None,
    dtype: Any = jnp.float32,
    return_trajectory: bool = False,
    progress: bool | Callable[[Any], None] = False,
) -> jax.Array | tuple[jax.Array, Trajectory]:
    """Runs Algorithm 2 for a batch of seeds: one ``fori_loop``, jit- and vmap-friendly.

    For i = 0 .. N-1, with gamma_i from :func:`karras_jax.churn_gamma`:

    .. math::

        \\hat\\sigma = \\sigma_i (1+\\gamma_i), \\quad
        \\hat x = x_i + \\sqrt{\\hat\\sigma^2 - \\sigma_i^2}\\, \\epsilon_i, \\quad
        d = (\\hat x - D(\\hat x; \\hat\\sigma)) / \\hat\\sigma, \\quad
        x_{i+1} = \\hat x + (\\sigma_{i+1} - \\hat\\sigma)\\, d

    and, for ``"heun"`` while sigma_{i+1} > 0,
    :math:`x_{i+1} \\leftarrow \\hat x + (\\sigma_{i+1} - \\hat\\sigma)(d + d')/2` with
    :math:`d' = (x_{i+1} - D(x_{i+1}; \\sigma_{i+1}))/\\sigma_{i+1}`.

    Args:
      denoise_fn: ``denoise_fn(x, sigma, cond) -> D(x; sigma)`` with x of shape
        (B, *sample_shape) and sigma a scalar array in the level dtype (float32). Close
        over weights inside a jitted caller (or use :func:`make_sampler`) so they stay
        traced. An output of another dtype is cast to the sample dtype (as EDM does).
      keys: (B,) typed keys or (B, 2) raw uint32 keys, one per sample.
      state: From :func:`karras_jax.set_timesteps`.
      config: Hyperparameters; all traced, so a vmap over them does not recompile.
      sample_shape: Shape of one sample, a tuple of positive ints.
      cond: Optional pytree of conditioning, every leaf with leading dimension B.
      solver: ``"heun"`` (2N - 1 evaluations) or ``"euler"`` (N evaluations).
      x_init: Optional (B, *sample_shape) start sample at sigma_0 instead of the key's
        start noise (the churn noise still comes from ``keys``).
      dtype: The sample dtype (float32, bfloat16, float16, ...); noise levels stay float32.
      return_trajectory: Also return a :class:`Trajectory` (memory grows with N only then).
      progress: True prints a progress bar to stderr from a host callback; a callable is
        called with the 0-based step index. Off by default: the program then has no host
        callbacks.

    Returns:
      (B, *sample_shape) samples in ``dtype``, or ``(samples, trajectory)``.

    Raises:
      TypeError / ValueError: bad keys, sample_shape, dtype, solver, cond, x_init, state,
        or a denoiser whose output shape differs from its input.
    """
    if not isinstance(config, KarrasVeConfig):
        raise TypeError(f"config must be a KarrasVeConfig, got {type(config).__name__}.")
    config.check_numeric()
    _check_state(state)
    _check_solver(solver)
    if not callable(denoise_fn):
        raise TypeError(f"denoise_fn must be callable, got {type(denoise_fn).__name__}.")
    n = check_num_steps(state.num_inference_steps)
    keys = normalize_keys(keys)
    sample_shape = _check_shape(sample_shape)
    dtype = _check_dtype(dtype)
    batch = keys.shape[0]
    full_shape = (batch, *sample_shape)
    _check_cond(cond, batch)

    _, k_churn = _split(keys)
    k_churn = fast_keys(k_churn, sample_shape)
    if x_init is None:
        x0 = initial_noise(keys, state, sample_shape, dtype)
    else:
        if jnp.shape(x_init) != full_shape:
            raise ValueError(
                f"x_init must have shape (B, *sample_shape) = {full_shape}, got {jnp.shape(x_init)}."
            )
        x0 = jnp.asarray(x_init).astype(dtype)

    levels = state.sigmas.astype(level_dtype())
    work = jnp.promote_types(dtype, level_dtype())
    s_noise = jnp.asarray(config.s_noise, levels.dtype)

    def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
        out = denoise_fn(x, sigma, cond)
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise TypeError(
                f"denoise_fn must return one array shaped like its input {full_shape}, got "
                f"{type(out).__name__}."
            )
        if jnp.shape(out) != full_shape:
            raise ValueError(
                f"denoise_fn must return an array shaped like its input {full_shape}, "
                f"got {jnp.shape(out)}."
            )
        return jnp.asarray(out).astype(dtype).astype(work)

    def churn(i: jax.Array, x: jax.Array, std: jax.Array) -> jax.Array:
        def add_noise(x: jax.Array) -> jax.Array:
            keys_i = fold_in_per_key(k_churn, i)
            eps = _normal(keys_i, sample_shape, dtype)
            return (x.astype(work) + std.astype(work) * eps.astype(work)).astype(dtype)

        def skip_when_idle(x: jax.Array) -> jax.Array:
            # On CPU the draw dominates a memory-bound step: steps without churn (std == 0:
            # s_churn = 0 or sigma outside [s_min, s_max]) draw nothing.
            return jax.lax.cond(std > 0, add_noise, lambda x: x, x)

        # On accelerators the draw is cheap arithmetic that XLA fuses into the step's single
        # pass over memory, which a cond boundary would split into two: always draw there
        # (std == 0 adds exactly 0).
        if _FUSED_CHURN is None:
            return jax.lax.platform_dependent(x, cpu=skip_when_idle, default=add_noise)
        return add_noise(x) if _FUSED_CHURN else skip_when_idle(x)

    def iteration(i: jax.Array, x: jax.Array, heun: bool) -> tuple[jax.Array, jax.Array]:
        sigma_hat, std, inv_sigma_hat, h, sigma_next, inv_sigma_next = _step_scalars(
            config, n, levels[i], levels[i + 1], s_noise)
        x_hat = churn(i, x, std)
        xw = x_hat.astype(work)
        denoised = denoise(x_hat, sigma_hat)
        # Multiply by the scalar 1/sigma: an elementwise division is several times dearer on
        # CPU (XLA keeps it exact) and made the memory-bound Heun update compute-bound.
        slope = (xw - denoised) * inv_sigma_hat.astype(work)
        hw = h.astype(work)
        x_next = xw + hw * slope
        if heun:
            denoised_2 = denoise(x_next.astype(dtype), sigma_next)
            slope_2 = (x_next - denoised_2) * inv_sigma_next.astype(work)
            x_next = xw + hw * (0.5 * slope + 0.5 * slope_2)
        if progress:
            report = _progress_printer(n) if progress is True else progress
            jax.debug.callback(report, i, ordered=True)
        return x_next.astype(dtype), denoised.astype(dtype)

    heun = solver == "heun"
    loop_steps = n - 1  # the last step, to sigma = 0, is Euler for both solvers
    last = jnp.asarray(n - 1, jnp.int32)
    if not return_trajectory:
        def body(i: jax.Array, x: jax.Array) -> jax.Array:
            return iteration(i, x, heun)[0]

        x = jax.lax.fori_loop(0, loop_steps, body, x0)
        return iteration(last, x, False)[0]

    def scan_body(x: jax.Array, i: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        x_next, denoised = iteration(i, x, heun)
        return x_next, (x_next, denoised)

    x, (xs, ds) = jax.lax.scan(scan_body, x0, jnp.arange(loop_steps, dtype=jnp.int32))
    x_last, d_last = iteration(last, x, False)
    trajectory = Trajectory(
        samples=jnp.concatenate([x0[None], xs, x_last[None]]),
        denoised=jnp.concatenate([ds, d_last[None]]),
        sigmas=levels,
    )
    return x_last, trajectory


# None: skip idle churn draws on CPU, always draw (fused) elsewhere. Tests set True / False
# to check on CPU that both forms give the same samples.
_FUSED_CHURN: bool | None = None


def _step_scalars(config: KarrasVeConfig, n: int, sigma: jax.Array, sigma_next: jax.Array,
                  s_noise: jax.Array) -> tuple[jax.Array, ...]:
    """The per-step scalars of the loop, from sigma_i and sigma_{i+1}.

    Returns sigma_hat_i, the churn noise std sqrt(sigma_hat^2 - sigma_i^2) * s_noise,
    1/sigma_hat_i, h_i = sigma_{i+1} - sigma_hat_i, sigma_{i+1}, and 1/sigma_{i+1} (1 where
    sigma_{i+1} = 0, a value the loop never uses). Computed inside the loop, not tabulated
    before it, so that compiled memory does not grow with N.
    """
    gamma = churn_gamma(config, n, sigma)
    sigma_hat = sigma * (1.0 + gamma)
    std = churn_std(sigma, gamma) * s_noise
    safe_next = jnp.where(sigma_next > 0, sigma_next, jnp.ones_like(sigma_next))
    return sigma_hat, std, 1.0 / sigma_hat, sigma_next - sigma_hat, sigma_next, 1.0 / safe_next


def as_traced_config(config: KarrasVeConfig) -> KarrasVeConfig:
    """The config with Python and NumPy scalars as level-dtype NumPy arrays.

    A jitted function sees ``1`` (int), ``1.0`` (weakly typed float) and ``np.float32(1)``
    as different argument types and would compile once per kind; after this all three are
    the same float32 scalar argument.
    """
    def cast(value: Any) -> Any:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return np.asarray(value, level_dtype())
        return value

    return jax.tree_util.tree_map(cast, config)


def make_sampler(
    apply_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
    state: KarrasVeState,
    config: KarrasVeConfig,
    sample_shape: tuple[int, ...],
    *,
    solver: str = "heun",
    dtype: Any = jnp.float32,
    return_trajectory: bool = False,
    progress: bool | Callable[[Any], None] = False,
) -> Callable[..., jax.Array]:
    """Returns a jitted ``sampler(params, keys, cond=None, x_init=None, *, config=, state=)``.

    ``apply_fn(params, x, sigma, cond) -> D(x; sigma)``, e.g. ``lambda p, x, s, c:
    model.apply(p, x, s)`` for a Flax linen module. Weights, keys, cond, x_init, the
    config and the state's levels are all traced arguments: new weights, seeds,
    conditioning or hyperparameters reuse the compiled program (config values are passed as
    float32 scalars, so ``s_churn=1`` and ``s_churn=1.0`` share it). What compiles again:
    new shapes or dtypes of the arguments (batch size, weights), a new step count or
    schedule name (static fields of the state), a new ``cond`` structure.

    >>> import jax, jax.numpy as jnp, karras_jax as kj
    >>> cfg = kj.KarrasVeConfig(s_churn=0.0)
    >>> state = kj.set_timesteps(cfg, 8)
    >>> shrink = lambda scale, x, sigma, cond: x * scale / (scale + sigma**2)
    >>> sampler = kj.make_sampler(shrink, state, cfg, (2,))
    >>> sampler(1.0, jax.random.split(jax.random.key(0), 4)).shape
    (4, 2)
    """
    sample_shape = _check_shape(sample_shape)
    _check_solver(solver)
    _check_dtype(dtype)

    @jax.jit
    def run(params: Any, keys: jax.Array, cond: Any, x_init: Any,
            config: KarrasVeConfig, state: KarrasVeState) -> Any:
        def denoise_fn(x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
            return apply_fn(params, x, sigma, cond)

        return sample(
            denoise_fn, keys, state, config, sample_shape, cond, solver,
            x_init=x_init, dtype=dtype, return_trajectory=return_trajectory, progress=progress,
        )

    default_config, default_state = config, state

    def sampler(params: Any, keys: jax.Array, cond: Any = None, x_init: ArrayLike | None = None,
                *, config: KarrasVeConfig | None = None,
                state: KarrasVeState | None = None) -> Any:
        keys = normalize_keys(keys)
        return run(params, keys, cond, x_init,
                   as_traced_config(default_config if config is None else config),
                   default_state if state is None else state)

    sampler.jitted = run  # type: ignore[attr-defined]
    return sampler
