"""kj.sample against the float64 NumPy Algorithm 2 (tests/oracle.py) fed the contract's noise.

Also: the golden values that pin the noise stream, the network-evaluation count, the
trajectory and x_init options, dtypes, and churn that never produces NaN.
"""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from sampler_utils import (
    GAUSS,
    MIX,
    contract_noise,
    edm_config,
    fast_sample,
    float32_tolerance,
    gauss_denoise,
    keys_for,
    mix_denoise,
    numpy_gaussian_denoiser,
    numpy_mixture_denoiser,
)

import karras_jax as kj

CUSTOM_SIGMAS = [40.0, 9.0, 3.0, 1.0, 0.3, 0.06, 0.01]


def _state(schedule, cfg, n=7):
    if schedule == "custom":
        return kj.set_timesteps(cfg, sigmas=CUSTOM_SIGMAS)
    return kj.set_timesteps(cfg, n, schedule)


def _config(schedule, churn):
    """churn: 'off', 'window' (churn on inside [s_min, s_max] only), 'narrow', 'clamped'."""
    s_churn = {"off": 0.0, "window": 1.5, "narrow": 2.0, "clamped": 80.0}[churn]
    if schedule == "diffusers":  # diffusers' own defaults (levels t_i = sigma^2 up to 1e4)
        base = dict(sigma_min=0.02, sigma_max=100.0, s_noise=1.007, s_min=0.05, s_max=50.0)
    else:
        base = dict(sigma_min=0.002, sigma_max=80.0, s_noise=1.007, s_min=0.05, s_max=50.0)
    if churn == "narrow":
        base.update(s_min=0.5, s_max=5.0)
    return kj.KarrasVeConfig(s_churn=s_churn, **base)


def _oracle(denoise64, keys, state, cfg, shape, solver):
    n = state.num_inference_steps
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, shape, n)
    sigmas = np.asarray(state.sigmas, np.float64)
    ref = oracle.algorithm2(denoise64, x0, sigmas, cfg.s_churn, cfg.s_min, cfg.s_max, eps,
                            heun=solver == "heun")
    return ref, x0


@pytest.mark.parametrize("solver", ["heun", "euler"])
@pytest.mark.parametrize("schedule", ["ve", "karras", "diffusers", "custom"])
@pytest.mark.parametrize("churn", ["off", "window", "narrow", "clamped"])
def test_matches_float64_algorithm2_gaussian(churn, schedule, solver):
    cfg = _config(schedule, churn)
    state = _state(schedule, cfg)
    keys = keys_for(1, 4)
    out = fast_sample(gauss_denoise, keys, state, cfg, (3,), solver=solver)
    assert out.dtype == jnp.float32 and out.shape == (4, 3)
    ref, x0 = _oracle(numpy_gaussian_denoiser(GAUSS), keys, state, cfg, (3,), solver)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=float32_tolerance(x0))


@pytest.mark.parametrize(("schedule", "solver"), [("karras", "heun"), ("karras", "euler"),
                                                  ("diffusers", "heun")])
@pytest.mark.parametrize("churn", ["off", "window", "clamped"])
def test_matches_float64_algorithm2_mixture(churn, schedule, solver):
    cfg = _config(schedule, churn)
    state = _state(schedule, cfg)
    keys = keys_for(2, 4)
    out = fast_sample(mix_denoise, keys, state, cfg, (2,), solver=solver)
    ref, x0 = _oracle(numpy_mixture_denoiser(MIX), keys, state, cfg, (2,), solver)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=float32_tolerance(x0))


@pytest.mark.parametrize("churn", ["window", "narrow"])
@pytest.mark.parametrize("schedule", ["ve", "karras", "diffusers"])
def test_churn_window_really_excludes_some_levels(schedule, churn):
    # Guards the parametrization above: churn is on at some levels and off at others.
    cfg = _config(schedule, churn)
    state = _state(schedule, cfg)
    gammas = [oracle.gamma(cfg.s_churn, cfg.s_min, cfg.s_max, 7, float(s)) for s in state.sigmas[:-1]]
    assert any(g > 0 for g in gammas) and any(g == 0 for g in gammas)


def test_single_step_matches_oracle():
    # N = 1: only the peeled final step (Euler for both solvers; Euler's own program with
    # N = 1 runs in test_network_evaluations).
    cfg = _config("karras", "clamped")
    state = kj.set_timesteps(cfg, 1, "karras")
    keys = keys_for(3, 4)
    out = fast_sample(gauss_denoise, keys, state, cfg, (3,))
    ref, x0 = _oracle(numpy_gaussian_denoiser(GAUSS), keys, state, cfg, (3,), "heun")
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=float32_tolerance(x0))


def test_raw_uint32_keys_equal_typed_keys():
    cfg = _config("karras", "window")
    state = _state("karras", cfg)
    typed = keys_for(4, 4)
    raw = jax.random.key_data(typed)
    assert raw.dtype == jnp.uint32 and raw.shape == (4, 2)
    a = fast_sample(gauss_denoise, typed, state, cfg, (3,))
    b = fast_sample(gauss_denoise, raw, state, cfg, (3,))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- the noise stream, pinned -------------------------------------------------------------

GOLDEN_X0 = [
    [60.580917, 78.322395, 47.727283],
    [25.313234, -121.53151, -145.69551],
    [1.8113043, 47.156013, 12.516032],
    [147.34186, -80.08649, -135.7411],
]
GOLDEN_CHURN = [
    [-1.7759867, -0.40118298, 2.1361992],
    [-0.65180266, -0.9427112, 1.3558456],
    [-1.444556, -1.689865, 2.3792186],
    [-0.48034343, 0.5006513, 1.1469815],
]
GOLDEN_NO_CHURN = [
    [-0.18198435, 1.5337615, 2.6074247],
    [-0.6504662, -1.1210167, 0.038073536],
    [-0.96265656, 1.1197596, 2.139693],
    [0.97051376, -0.5704781, 0.17030321],
]
GOLDEN_RAW_KEYS = [  # keys jax.random.PRNGKey(0..3), raw uint32 (4, 2)
    [0.9018525, 0.24617416, 1.4760005],
    [-2.654139, -0.46948233, 1.2115749],
    [0.37258267, 1.9793574, 2.6295457],
    [-1.9726436, 0.6552468, 1.8335704],
]


def _golden_setup():
    cfg = _config("karras", "clamped")  # gamma = sqrt(2) - 1 inside [0.05, 50], 0 outside
    state = _state("karras", cfg)  # N = 7
    keys = jax.random.split(jax.random.key(2024), 4)
    return cfg, state, keys


def test_golden_values_pin_the_noise_stream():
    # Computed once with karras_jax 0.1.0 / jax 0.10.2 (threefry, partitionable). A change here
    # breaks the reproducibility of every published seed: it needs a major version bump.
    cfg, state, keys = _golden_setup()
    np.testing.assert_allclose(np.asarray(kj.initial_noise(keys, state, (3,))), GOLDEN_X0,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fast_sample(gauss_denoise, keys, state, cfg, (3,))),
                               GOLDEN_CHURN, rtol=1e-5, atol=1e-5)
    no_churn = fast_sample(gauss_denoise, keys, state, cfg.replace(s_churn=0.0), (3,))
    np.testing.assert_allclose(np.asarray(no_churn), GOLDEN_NO_CHURN, rtol=1e-5, atol=1e-5)
    raw = jax.vmap(jax.random.PRNGKey)(jnp.arange(4))
    np.testing.assert_allclose(np.asarray(fast_sample(gauss_denoise, raw, state, cfg, (3,))),
                               GOLDEN_RAW_KEYS, rtol=1e-5, atol=1e-5)


def test_golden_values_follow_the_documented_contract():
    # The golden numbers are exactly what the contract's formula gives (float64 oracle).
    cfg, state, keys = _golden_setup()
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (3,), 7)
    np.testing.assert_allclose(x0, GOLDEN_X0, rtol=1e-6)
    sigmas = np.asarray(state.sigmas, np.float64)
    for s_churn, golden in [(cfg.s_churn, GOLDEN_CHURN), (0.0, GOLDEN_NO_CHURN)]:
        ref = oracle.algorithm2(numpy_gaussian_denoiser(GAUSS), x0, sigmas, s_churn, cfg.s_min,
                                cfg.s_max, eps)
        np.testing.assert_allclose(ref, golden, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["karras", "diffusers"])
def test_x0_is_initial_noise(schedule):
    cfg = _config(schedule, "window")
    state = _state(schedule, cfg)
    keys = keys_for(5, 4)
    x0 = kj.initial_noise(keys, state, (2, 3))
    assert x0.shape == (4, 2, 3) and x0.dtype == jnp.float32
    ref, _ = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (2, 3), 7)
    np.testing.assert_allclose(np.asarray(x0), ref, rtol=1e-6)
    if schedule == "karras":  # the start of the trajectory (diffusers: same code, other sigma)
        _, traj = fast_sample(gauss_denoise, keys, state, cfg, (3,), return_trajectory=True)
        _assert_same_start(traj.samples[0], keys, state, (3,))
    if schedule == "diffusers":  # diffusers starts at sigma_max, not at its first level t_0
        assert float(state.init_noise_sigma) == pytest.approx(100.0)
    else:
        assert float(state.init_noise_sigma) == float(state.sigmas[0])


def _assert_same_start(x0, keys, state, shape):
    # Bitwise equal to initial_noise compiled the same way (under jit); eager dispatch rounds
    # init_noise_sigma * normal(...) separately from XLA's fused kernel: within 2 ulp of that.
    jitted = jax.jit(kj.initial_noise, static_argnums=2)(keys, state, shape)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(jitted))
    eager = kj.initial_noise(keys, state, shape)
    np.testing.assert_allclose(np.asarray(x0), np.asarray(eager), rtol=2.5e-7, atol=0)


# --- network evaluations ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_network_evaluations(solver, n):
    cfg = edm_config()
    state = kj.set_timesteps(cfg, n, "karras")
    calls = []

    def denoise(x, sigma, cond):
        jax.debug.callback(lambda s: calls.append(float(s)), sigma, ordered=True)
        return GAUSS.denoise(x, sigma)

    run = jax.jit(lambda keys: kj.sample(denoise, keys, state, cfg, (3,), solver=solver))
    run(keys_for(6, 2)).block_until_ready()
    jax.effects_barrier()
    assert len(calls) == (2 * n - 1 if solver == "heun" else n)
    assert all(s > 0 for s in calls), calls
    # In the order of Algorithm 2: sigma_hat_i, then (Heun) sigma_{i+1}, never the final 0.
    levels = [float(s) for s in state.sigmas]
    expected = []
    for i in range(n):
        gamma = oracle.gamma(cfg.s_churn, cfg.s_min, cfg.s_max, n, levels[i])
        expected.append(levels[i] * (1 + gamma))
        if solver == "heun" and i < n - 1:
            expected.append(levels[i + 1])
    np.testing.assert_allclose(calls, expected, rtol=1e-6)


def test_network_evaluations_counted_at_trace_time():
    # Traced twice in the loop body for Heun (Euler stage + correction), once for Euler, plus
    # once for the peeled last step, whatever N (N = 1 traces the empty loop's body too).
    for n, solver, traced in [(3, "heun", 3), (40, "heun", 3), (40, "euler", 2), (1, "heun", 3)]:
        count = []
        state = kj.set_timesteps(edm_config(), n, "karras")

        def denoise(x, sigma, cond, count=count):
            count.append(1)
            return GAUSS.denoise(x, sigma)

        jax.make_jaxpr(lambda k, state=state, denoise=denoise, solver=solver: kj.sample(
            denoise, k, state, edm_config(), (3,), solver=solver))(keys_for(0, 2))
        assert len(count) == traced, (n, solver, len(count))


# --- trajectory and x_init ----------------------------------------------------------------


@pytest.mark.parametrize(("solver", "n"), [("heun", 7), ("euler", 7), ("heun", 1)])  # 1: empty scan
def test_trajectory(solver, n):
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, n, "karras")
    keys = keys_for(7, 4)
    shape = (3,)
    plain = fast_sample(gauss_denoise, keys, state, cfg, shape, solver=solver)
    out, traj = fast_sample(gauss_denoise, keys, state, cfg, shape, solver=solver, return_trajectory=True)
    assert isinstance(traj, kj.Trajectory)
    assert traj.samples.shape == (n + 1, 4, *shape)
    assert traj.denoised.shape == (n, 4, *shape)
    assert traj.sigmas.shape == (n + 1,) and traj.sigmas.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(traj.sigmas), np.asarray(state.sigmas))
    # Another compiled program than the plain one: equal to float32 round-off.
    x0, _ = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, shape, n)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-5, atol=float32_tolerance(x0))
    np.testing.assert_array_equal(np.asarray(traj.samples[-1]), np.asarray(out))
    _assert_same_start(traj.samples[0], keys, state, shape)
    # Without churn sigma_hat_i = sigma_i, so denoised[i] = D(x_i; sigma_i).
    for i in range(n):
        np.testing.assert_allclose(np.asarray(traj.denoised[i]),
                                   np.asarray(GAUSS.denoise(traj.samples[i], state.sigmas[i])),
                                   rtol=1e-5, atol=1e-5)
    # The trajectory follows a float64 transcription of Algorithm 2 step by step (no churn).
    sigmas = np.asarray(state.sigmas, np.float64)
    den = numpy_gaussian_denoiser(GAUSS)
    x = x0
    for i in range(n):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        d = (x - den(x, sigma)) / sigma
        x_new = x + (nxt - sigma) * d
        if solver == "heun" and nxt != 0:
            d2 = (x_new - den(x_new, nxt)) / nxt
            x_new = x + (nxt - sigma) * (d + d2) / 2
        x = x_new
        np.testing.assert_allclose(np.asarray(traj.samples[i + 1]), x, rtol=1e-5,
                                   atol=float32_tolerance(x0))


def test_trajectory_with_churn_records_denoised_at_sigma_hat():
    cfg = _config("karras", "clamped")
    state = _state("karras", cfg)
    keys = keys_for(7, 4)
    out, traj = fast_sample(gauss_denoise, keys, state, cfg, (3,), return_trajectory=True)
    np.testing.assert_array_equal(np.asarray(traj.samples[-1]), np.asarray(out))
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (3,), 7)
    for i in range(7):
        sigma = float(state.sigmas[i])
        gamma = oracle.gamma(cfg.s_churn, cfg.s_min, cfg.s_max, 7, sigma)
        x_hat, sigma_hat = oracle.add_noise_to_input(np.asarray(traj.samples[i], np.float64), sigma,
                                                     gamma, eps[i])
        np.testing.assert_allclose(np.asarray(traj.denoised[i]),
                                   numpy_gaussian_denoiser(GAUSS)(x_hat, sigma_hat),
                                   rtol=1e-5, atol=float32_tolerance(x0))


def test_x_init_equal_to_initial_noise_gives_the_default():
    cfg = _config("karras", "window")
    state = _state("karras", cfg)
    keys = keys_for(8, 4)
    default = fast_sample(gauss_denoise, keys, state, cfg, (3,))
    # initial_noise compiled as the sampler compiles it gives the same bits (eager dispatch
    # rounds differently, by an ulp; see _assert_same_start).
    x_init = jax.jit(kj.initial_noise, static_argnums=2)(keys, state, (3,))
    given = fast_sample(gauss_denoise, keys, state, cfg, (3,), x_init=x_init)
    np.testing.assert_array_equal(np.asarray(given), np.asarray(default))
    eager = fast_sample(gauss_denoise, keys, state, cfg, (3,), x_init=kj.initial_noise(keys, state, (3,)))
    np.testing.assert_allclose(np.asarray(eager), np.asarray(default), rtol=1e-5,
                               atol=float32_tolerance(x_init))
    # A different start changes the result, but the churn noise still comes from the keys.
    other = fast_sample(gauss_denoise, keys, state, cfg, (3,), x_init=np.asarray(x_init) + 1.0)
    assert not np.allclose(np.asarray(other), np.asarray(default))
    x0, eps = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (3,), 7)
    ref = oracle.algorithm2(numpy_gaussian_denoiser(GAUSS), x0 + 1.0,
                            np.asarray(state.sigmas, np.float64), cfg.s_churn, cfg.s_min, cfg.s_max, eps)
    np.testing.assert_allclose(np.asarray(other), ref, rtol=1e-5, atol=float32_tolerance(x0))


# --- dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "dtype"),
    [("karras", jnp.bfloat16), ("karras", jnp.float16),
     ("diffusers", jnp.float16)],  # diffusers: levels up to 1e4; float32: every other test
)
def test_dtypes(schedule, dtype):
    cfg = _config(schedule, "window")
    state = _state(schedule, cfg)
    assert state.sigmas.dtype == jnp.float32
    seen = []

    def denoise(x, sigma, cond):
        seen.append((x.dtype, sigma.dtype, sigma.shape))
        return GAUSS.denoise(x, sigma)

    keys = keys_for(9, 4)
    out, traj = jax.jit(lambda k: kj.sample(denoise, k, state, cfg, (3,), dtype=dtype,
                                            return_trajectory=True))(keys)
    assert out.dtype == dtype
    assert traj.samples.dtype == dtype and traj.denoised.dtype == dtype
    assert traj.sigmas.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    assert seen and all(x == dtype and s == jnp.float32 and shape == () for x, s, shape in seen), seen
    # The contract draws the normals in float32 whatever the sample dtype: the oracle gets
    # those, in float64.
    x0, noise = contract_noise(keys, state.init_noise_sigma, cfg.s_noise, (3,), 7, jnp.float32)
    ref = oracle.algorithm2(numpy_gaussian_denoiser(GAUSS), x0, np.asarray(state.sigmas, np.float64),
                            cfg.s_churn, cfg.s_min, cfg.s_max, noise)
    # Round-off of the O(1) result (a few ulps per step) plus that of the start noise.
    eps = float(jnp.finfo(dtype).eps)
    atol = 16 * eps * max(1.0, np.abs(ref).max()) + 2e-7 * np.abs(x0).max()
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=atol)


def test_low_precision_denoiser_output_is_cast_back():
    cfg = _config("karras", "window")
    state = _state("karras", cfg)
    keys = keys_for(10, 4)

    def denoise_f16(x, sigma, cond):
        return GAUSS.denoise(x, sigma).astype(jnp.float16)

    out = fast_sample(denoise_f16, keys, state, cfg, (3,))
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))
    # Exactly the float32 sampler with the denoiser's output rounded to float16 and cast back,
    def denoise_rounded(x, sigma, cond):
        return denoise_f16(x, sigma, cond).astype(jnp.float32)

    rounded = fast_sample(denoise_rounded, keys, state, cfg, (3,))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rounded))
    # and close to the full-precision run (float16 rounding of D at |x| ~ 100 is ~0.05).
    ref = fast_sample(gauss_denoise, keys, state, cfg, (3,))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=0.3)


# --- churn never NaN ----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["karras", "diffusers"])
@pytest.mark.parametrize("gamma", [0.0, 1e-7, 1e-9])
def test_churn_never_nan(gamma, schedule):
    # gamma = 1e-9: sigma_hat rounds to sigma in float32, so sigma_hat^2 - sigma^2 is 0 or,
    # contracted into an FMA, slightly negative; the churn must still be finite.
    n = 7
    cfg = _config(schedule, "window").replace(s_churn=gamma * n, s_min=0.0, s_max=1e5)
    state = _state(schedule, cfg)
    keys = keys_for(11, 4)
    out = fast_sample(gauss_denoise, keys, state, cfg, (3,))
    assert np.all(np.isfinite(np.asarray(out)))
    no_churn = fast_sample(gauss_denoise, keys, state, cfg.replace(s_churn=0.0), (3,))
    if gamma == 0.0:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(no_churn))
    # The added noise has std sigma sqrt(gamma (2 + gamma)) <= 4.5e-4 sigma, and the ODE
    # contracts it: its effect on the O(1) result stays below 1e-2.
    np.testing.assert_allclose(np.asarray(out), np.asarray(no_churn), atol=1e-2)
    ref, x0 = _oracle(numpy_gaussian_denoiser(GAUSS), keys, state, cfg, (3,), "heun")
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=float32_tolerance(x0))


def test_churn_gradient_finite_at_gamma_zero():
    # d sqrt(sigma_hat^2 - sigma^2) / d gamma is infinite at gamma = 0; the sampler must not
    # leak that into the gradient with respect to the hyperparameters.
    cfg = _config("karras", "off")
    state = _state("karras", cfg)
    keys = keys_for(12, 4)

    def loss(s_churn):
        return jnp.sum(kj.sample(gauss_denoise, keys, state, cfg.replace(s_churn=s_churn), (3,)) ** 2)

    g = jax.jit(jax.grad(loss))(jnp.float32(0.0))
    assert np.isfinite(float(g))
