"""A float64 NumPy transcription of ALGORITHM.md: the reference the tests compare against.

Written from the formulas of Karras et al. (2022), Algorithm 2 and Table 1, and from
diffusers' split of one iteration (see ``shared/reference/ALGORITHM.md``), never by calling
karras_jax. Every function takes and returns plain float64 NumPy values.

Conventions (the same as diffusers' ``KarrasVeScheduler``):

* ``model_output = (D(x; sigma) - x) / sigma`` where ``D`` is the denoiser, so
  ``D = x + sigma * model_output``.
* ``noise`` / ``noises[i]`` is the churn noise *already scaled by* ``s_noise``:
  ``eps ~ N(0, S_noise^2 I)`` of Algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

SQRT2_MINUS_1 = math.sqrt(2.0) - 1.0

Denoiser = Callable[[np.ndarray, float], np.ndarray]


def _ramp(n: int) -> np.ndarray:
    """i / (N - 1) for i = 0..N-1; a single step sits at the start (ramp 0)."""
    if n == 1:
        return np.zeros(1)
    return np.arange(n, dtype=np.float64) / (n - 1)


# --- noise levels (sampling order, descending, WITHOUT the trailing 0) -------------------


def ve_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """VE column of Table 1: sigma_i = sqrt(t_i) = sigma_max (sigma_min/sigma_max)^(i/(N-1))."""
    t = diffusers_sigmas(sigma_min, sigma_max, n)  # the paper's times t_i
    return np.sqrt(t)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """EDM: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    hi, lo = float(sigma_max) ** (1.0 / rho), float(sigma_min) ** (1.0 / rho)
    return (hi + _ramp(n) * (lo - hi)) ** rho


def diffusers_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """diffusers' levels: the paper's times t_i = smax^2 (smin^2/smax^2)^(i/(N-1)) as sigma."""
    smin, smax = float(sigma_min), float(sigma_max)
    return smax**2 * (smin**2 / smax**2) ** _ramp(n)


def with_trailing_zero(levels: np.ndarray) -> np.ndarray:
    """sigma_0 > ... > sigma_{N-1}, then sigma_N = 0."""
    return np.concatenate([np.asarray(levels, np.float64), [0.0]])


# --- one iteration, split as diffusers splits it ---------------------------------------


def gamma(s_churn: float, s_min: float, s_max: float, n: int, sigma: float) -> float:
    """gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma_i <= S_max else 0."""
    if s_min <= sigma <= s_max:
        return min(s_churn / n, SQRT2_MINUS_1)
    return 0.0


def add_noise_to_input(
    sample: np.ndarray, sigma: float, gamma_i: float, noise: np.ndarray
) -> tuple[np.ndarray, float]:
    """sigma_hat = sigma (1 + gamma); x_hat = x + sqrt(sigma_hat^2 - sigma^2) * noise."""
    sigma_hat = sigma * (1.0 + gamma_i)
    std = math.sqrt(max(sigma_hat**2 - sigma**2, 0.0))
    return np.asarray(sample, np.float64) + std * np.asarray(noise, np.float64), sigma_hat


def step(
    model_output: np.ndarray, sigma_hat: float, sigma_prev: float, sample_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Euler step. Returns (prev_sample, derivative, pred_original_sample)."""
    x = np.asarray(sample_hat, np.float64)
    denoised = x + sigma_hat * np.asarray(model_output, np.float64)
    d = (x - denoised) / sigma_hat
    return x + (sigma_prev - sigma_hat) * d, d, denoised


def step_correct(
    model_output: np.ndarray,
    sigma_hat: float,
    sigma_prev: float,
    sample_hat: np.ndarray,
    sample_prev: np.ndarray,
    derivative: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heun correction. Returns (prev_sample, averaged slope (d + d')/2, pred_original_sample).

    At sigma_prev == 0 there is nothing to correct (Algorithm 2 skips it): the Euler result
    and the Euler slope come back unchanged, and the denoised estimate is the sample itself.
    """
    x_prev = np.asarray(sample_prev, np.float64)
    d = np.asarray(derivative, np.float64)
    if sigma_prev == 0:
        return x_prev, d, x_prev
    denoised = x_prev + sigma_prev * np.asarray(model_output, np.float64)
    d_corr = (x_prev - denoised) / sigma_prev
    slope = 0.5 * d + 0.5 * d_corr
    return np.asarray(sample_hat, np.float64) + (sigma_prev - sigma_hat) * slope, slope, denoised


def model_output_from_denoiser(denoise: Denoiser, x: np.ndarray, sigma: float) -> np.ndarray:
    """diffusers' convention: (D(x; sigma) - x) / sigma."""
    return (denoise(x, sigma) - x) / sigma


# --- the whole loop ----------------------------------------------------------------------


def algorithm2(
    denoise: Denoiser,
    x0: np.ndarray,
    sigmas: Sequence[float],
    s_churn: float,
    s_min: float,
    s_max: float,
    noises: Sequence[np.ndarray],
    heun: bool = True,
) -> np.ndarray:
    """Algorithm 2 of Karras et al. (2022) in float64.

    Args:
      denoise: D(x, sigma) -> denoised x (float64 arrays).
      x0: The starting sample (already scaled by the initial noise std).
      sigmas: (N+1,) levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (trailing zero included).
      s_churn, s_min, s_max: Churn hyperparameters; gamma uses N = len(sigmas) - 1.
      noises: noises[i] is the churn noise of step i, already multiplied by s_noise.
      heun: False gives the plain Euler sampler (no correction at any step).

    Returns:
      x_N, float64.
    """
    sigmas = [float(s) for s in sigmas]
    n = len(sigmas) - 1
    x = np.asarray(x0, np.float64)
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        g = gamma(s_churn, s_min, s_max, n, sigma)
        x_hat, sigma_hat = add_noise_to_input(x, sigma, g, noises[i])
        d = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x = x_hat + (sigma_next - sigma_hat) * d
        if heun and sigma_next != 0:
            d_prime = (x - denoise(x, sigma_next)) / sigma_next
            x = x_hat + (sigma_next - sigma_hat) * (d + d_prime) / 2
    return x


def dpmpp_2m(
    denoise: Denoiser,
    x0: np.ndarray,
    sigmas: Sequence[float],
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float("inf"),
    noises: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2 "multistep") in float64, VE data prediction.

    In t = -log(sigma), with alpha = 1 (s(t) = 1):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D'_i,   h_i = t_{i+1} - t_i,
        D'_i = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1},                r_i = h_{i-1} / h_i,

    first order (D'_i = D_i) at the first step and at the step to sigma = 0 (where the
    update is x_N = D_{N-1}). With churn (karras_jax's documented rule): Algorithm 2's churn
    first, the step starts at sigma_hat_i, the previous evaluation sits at sigma_hat_{i-1},
    and a churned step (gamma_i > 0) is first order.
    """
    sigmas = [float(s) for s in sigmas]
    n = len(sigmas) - 1
    x = np.asarray(x0, np.float64)
    previous, t_previous = None, None
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        g = gamma(s_churn, s_min, s_max, n, sigma)
        noise = np.zeros_like(x) if noises is None else noises[i]
        x, sigma_hat = add_noise_to_input(x, sigma, g, noise)
        denoised = denoise(x, sigma_hat)
        t = -math.log(sigma_hat)
        if sigma_next == 0:
            x = denoised
        else:
            h = -math.log(sigma_next) - t
            extrapolated = denoised
            if previous is not None and g == 0:
                r = (t - t_previous) / h
                extrapolated = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma_hat) * x - math.expm1(-h) * extrapolated
        previous, t_previous = denoised, t
    return x


# --- closed forms ------------------------------------------------------------------------


def gaussian_denoiser(mu: float | np.ndarray, s: float) -> Denoiser:
    """Exact D for data N(mu, s^2 I): D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        return (s**2 * np.asarray(x, np.float64) + sigma**2 * np.asarray(mu)) / (s**2 + sigma**2)

    return denoise


def gaussian_ode_solution(x0: np.ndarray, mu: float | np.ndarray, s: float, sigma0: float):
    """Exact probability-flow ODE map from sigma_0 to 0 for data N(mu, s^2 I)."""
    return np.asarray(mu) + (np.asarray(x0, np.float64) - np.asarray(mu)) * s / math.sqrt(
        s**2 + sigma0**2
    )


# --- Table 1 preconditioning --------------------------------------------------------------


def iddpm_u(C1: float = 0.001, C2: float = 0.008, M: int = 1000) -> np.ndarray:  # noqa: N803
    """u_0 > ... > u_M = 0 of Table 1's iDDPM column."""
    def abar(j):
        return math.sin(math.pi * j / (2 * M * (C2 + 1))) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar(j - 1) / abar(j), C1) - 1)
    return np.asarray(u)


def precondition(sigma: float, kind: str, **c) -> tuple[float, float, float, float]:
    """(c_skip, c_out, c_in, c_noise) of Table 1, float64."""
    if kind == "edm":
        sd = c.get("sigma_data", 0.5)
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2),
                1 / math.sqrt(sigma**2 + sd**2), math.log(sigma) / 4)
    if kind == "ve":
        return 1.0, sigma, 1.0, math.log(sigma / 2)
    if kind == "vp":
        beta_d, beta_min, m = c.get("beta_d", 19.9), c.get("beta_min", 0.1), c.get("M", 1000)
        t = (math.sqrt(beta_min**2 + 2 * beta_d * math.log(sigma**2 + 1)) - beta_min) / beta_d
        return 1.0, -sigma, 1 / math.sqrt(sigma**2 + 1), (m - 1) * t
    u = iddpm_u(c.get("C1", 0.001), c.get("C2", 0.008), c.get("M", 1000))
    m = c.get("M", 1000)
    return 1.0, -sigma, 1 / math.sqrt(sigma**2 + 1), float(m - 1 - np.argmin(np.abs(u - sigma)))
