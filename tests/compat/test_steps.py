"""diffusers' step API (``add_noise_to_input``, ``step``, ``step_correct``, ``scale_model_input``)
against the float64 oracle and diffusers' PyTorch scheduler, and its dtype, jit and key contracts."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj

CFG = kj.KarrasVeConfig()  # s_churn 80, window [0.05, 50], s_noise 1.007
SHAPE = (2, 3)
RTOL, ATOL = 2e-6, 1e-6  # float32 against float64


def _x(seed=0, shape=SHAPE, scale=1.0, dtype=jnp.float32):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def _f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def _eps(cfg, key, shape, dtype=jnp.float32):
    """The churn noise the contract defines: s_noise * normal(key, shape, dtype)."""
    return cfg.s_noise * _f64(jax.random.normal(key, shape, dtype))


# --- add_noise_to_input -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 500])
@pytest.mark.parametrize("sigma", [0.04, 0.05, 1.3, 50.0, 60.0])
def test_add_noise_to_input_matches_oracle(n, sigma):
    state = kj.set_timesteps(CFG, n)
    x = _x(1, scale=sigma)
    key = jax.random.key(7)
    x_hat, sigma_hat = kj.add_noise_to_input(CFG, state, x, sigma, key)
    g = oracle.gamma(CFG.s_churn, CFG.s_min, CFG.s_max, n, sigma)
    want_x, want_sigma = oracle.add_noise_to_input(_f64(x), sigma, g, _eps(CFG, key, SHAPE))
    assert x_hat.shape == SHAPE and x_hat.dtype == jnp.float32
    assert sigma_hat.shape == () and sigma_hat.dtype == jnp.float32
    assert float(sigma_hat) == pytest.approx(want_sigma, rel=1e-6)
    np.testing.assert_allclose(x_hat, want_x, rtol=RTOL, atol=ATOL * sigma)


def test_outside_the_window_the_sample_is_unchanged():
    state = kj.set_timesteps(CFG, 10)
    x = _x(2)
    for sigma in (0.049, 50.5):
        x_hat, sigma_hat = kj.add_noise_to_input(CFG, state, x, sigma, jax.random.key(0))
        np.testing.assert_array_equal(x_hat, x)
        assert float(sigma_hat) == np.float32(sigma)


def test_gamma_zero_gives_no_nan_and_a_finite_gradient():
    state = kj.set_timesteps(CFG.replace(s_churn=0.0), 10)
    x = _x(3)

    def total(sigma):
        x_hat, sigma_hat = kj.add_noise_to_input(
            CFG.replace(s_churn=0.0), state, x, sigma, jax.random.key(1)
        )
        return x_hat.sum() + sigma_hat

    x_hat, _ = kj.add_noise_to_input(CFG.replace(s_churn=0.0), state, x, 1.0, jax.random.key(1))
    np.testing.assert_array_equal(x_hat, x)
    grad = jax.grad(total)(1.0)
    assert np.isfinite(grad) and float(grad) == pytest.approx(1.0)


def test_churn_noise_is_scaled_by_s_noise():
    state = kj.set_timesteps(CFG, 10)
    x = jnp.zeros(SHAPE)
    key = jax.random.key(4)
    a, _ = kj.add_noise_to_input(CFG.replace(s_noise=1.0), state, x, 1.0, key)
    b, _ = kj.add_noise_to_input(CFG.replace(s_noise=2.0), state, x, 1.0, key)
    c, _ = kj.add_noise_to_input(CFG.replace(s_noise=0.0), state, x, 1.0, key)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-6)
    np.testing.assert_array_equal(c, x)


def test_typed_and_raw_keys_give_the_same_noise():
    state = kj.set_timesteps(CFG, 10)
    x = _x(5)
    typed, _ = kj.add_noise_to_input(CFG, state, x, 1.0, jax.random.key(11))
    raw, _ = kj.add_noise_to_input(CFG, state, x, 1.0, jax.random.PRNGKey(11))
    np.testing.assert_array_equal(typed, raw)
    other, _ = kj.add_noise_to_input(CFG, state, x, 1.0, jax.random.key(12))
    assert not np.allclose(other, typed)


def test_traced_sigma_under_jit():
    # diffusers' Flax version branched on sigma in Python (TracerBoolConversionError).
    state = kj.set_timesteps(CFG, 10)
    x = _x(6)
    f = jax.jit(lambda sigma, key: kj.add_noise_to_input(CFG, state, x, sigma, key))
    for sigma in (0.01, 1.0, 80.0):  # outside, inside, outside the window
        key = jax.random.key(3)
        got_x, got_sigma = f(jnp.float32(sigma), key)
        want_x, want_sigma = kj.add_noise_to_input(CFG, state, x, sigma, key)
        np.testing.assert_allclose(got_x, want_x, rtol=1e-6, atol=1e-6)
        assert float(got_sigma) == pytest.approx(float(want_sigma), rel=1e-7)


def test_vmap_over_s_churn_matches_per_value_results():
    state = kj.set_timesteps(CFG, 10)
    x = _x(7)
    key = jax.random.key(8)
    churns = jnp.array([0.0, 1.0, 3.0, 80.0])

    def run(s_churn):
        return kj.add_noise_to_input(CFG.replace(s_churn=s_churn), state, x, 1.0, key)

    xs, sigmas = jax.vmap(run)(churns)
    for i, c in enumerate(churns.tolist()):
        want_x, want_sigma = run(c)
        np.testing.assert_allclose(xs[i], want_x, rtol=1e-6, atol=1e-6)
        assert float(sigmas[i]) == pytest.approx(float(want_sigma), rel=1e-7)
    np.testing.assert_allclose(sigmas, [1.0, 1.1, 1.3, math.sqrt(2)], rtol=1e-6)


# --- step --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_hat,sigma_prev", [(80.0, 40.0), (1.3, 0.9), (0.5, 0.0), (1e4, 141.4)])
def test_step_matches_oracle(sigma_hat, sigma_prev):
    x_hat, m = _x(1, scale=sigma_hat), _x(2)
    out = kj.step(m, sigma_hat, sigma_prev, x_hat)
    assert isinstance(out, kj.KarrasVeOutput)
    want_prev, want_d, want_x0 = oracle.step(_f64(m), sigma_hat, sigma_prev, _f64(x_hat))
    scale = sigma_hat
    np.testing.assert_allclose(out.prev_sample, want_prev, rtol=RTOL, atol=ATOL * scale)
    np.testing.assert_allclose(out.derivative, want_d, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.pred_original_sample, want_x0, rtol=RTOL, atol=ATOL * scale)


def test_step_with_a_gaussian_denoiser_moves_toward_the_data():
    # model_output = (D - x)/sigma, so the slope is d = (x - D)/sigma and the Euler step to
    # sigma = 0 lands exactly on D.
    denoise = oracle.gaussian_denoiser(mu=3.0, s=0.5)
    x_hat = _f64(_x(3, scale=2.0))
    m = oracle.model_output_from_denoiser(denoise, x_hat, 2.0)
    out = kj.step(jnp.asarray(m, jnp.float32), 2.0, 0.0, jnp.asarray(x_hat, jnp.float32))
    np.testing.assert_allclose(out.prev_sample, denoise(x_hat, 2.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pred_original_sample, denoise(x_hat, 2.0), rtol=1e-5)


def test_step_return_dict_false_is_diffusers_tuple():
    x_hat, m = _x(1), _x(2)
    out = kj.step(m, 1.0, 0.5, x_hat)
    prev, d = kj.step(m, 1.0, 0.5, x_hat, return_dict=False)
    np.testing.assert_array_equal(prev, out.prev_sample)
    np.testing.assert_array_equal(d, out.derivative)


# --- step_correct ------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_hat,sigma_prev", [(80.0, 40.0), (1.3, 0.9), (1e4, 141.4)])
def test_step_correct_matches_oracle(sigma_hat, sigma_prev):
    x_hat, m1, m2 = _x(1, scale=sigma_hat), _x(2), _x(3)
    first = kj.step(m1, sigma_hat, sigma_prev, x_hat)
    out = kj.step_correct(m2, sigma_hat, sigma_prev, x_hat, first.prev_sample, first.derivative)
    want_prev, want_slope, want_x0 = oracle.step_correct(
        _f64(m2), sigma_hat, sigma_prev, _f64(x_hat), _f64(first.prev_sample),
        _f64(first.derivative),
    )
    np.testing.assert_allclose(out.prev_sample, want_prev, rtol=RTOL, atol=ATOL * sigma_hat)
    # d' = (x_prev - D')/sigma_prev cancels: float32 round-off of x_prev is amplified 1/sigma_prev.
    slope_atol = ATOL * float(jnp.abs(first.prev_sample).max()) / sigma_prev
    np.testing.assert_allclose(out.derivative, want_slope, rtol=RTOL, atol=slope_atol)
    np.testing.assert_allclose(out.pred_original_sample, want_x0, rtol=RTOL, atol=ATOL * sigma_hat)


def test_step_correct_derivative_is_the_averaged_slope_not_the_stale_one():
    # By design, unlike diffusers: diffusers' step_correct returns the first-stage Euler slope
    # `derivative` it was given; ours returns (d + d')/2, the slope that produced prev_sample,
    # so prev_sample == sample_hat + (sigma_prev - sigma_hat) * out.derivative.
    x_hat, m1, m2 = _x(1), _x(2), _x(3)
    first = kj.step(m1, 1.5, 1.0, x_hat)
    out = kj.step_correct(m2, 1.5, 1.0, x_hat, first.prev_sample, first.derivative)
    d_corr = -_f64(m2)  # (x - D')/sigma with D' = x + sigma * m2
    np.testing.assert_allclose(out.derivative, 0.5 * (_f64(first.derivative) + d_corr), rtol=1e-6)
    assert not np.allclose(out.derivative, first.derivative)
    np.testing.assert_allclose(
        out.prev_sample, _f64(x_hat) + (1.0 - 1.5) * _f64(out.derivative), rtol=1e-6, atol=1e-6
    )


def test_step_correct_at_sigma_prev_zero_returns_the_euler_result():
    # The last step of Algorithm 2 is Euler only: no division by sigma_prev = 0, no NaN, even
    # with a model output that is infinite there.
    x_hat, m1 = _x(1), _x(2)
    first = kj.step(m1, 0.5, 0.0, x_hat)
    for m2 in (_x(3), jnp.full(SHAPE, jnp.inf), jnp.full(SHAPE, jnp.nan)):
        out = kj.step_correct(m2, 0.5, 0.0, x_hat, first.prev_sample, first.derivative)
        chex.assert_tree_all_finite(out)
        np.testing.assert_array_equal(out.prev_sample, first.prev_sample)
        np.testing.assert_array_equal(out.derivative, first.derivative)
        np.testing.assert_array_equal(out.pred_original_sample, first.prev_sample)


def test_step_correct_at_traced_sigma_prev_zero_is_finite_with_finite_gradient():
    x_hat, m1, m2 = _x(1), _x(2), _x(3)

    def final(sigma_prev):
        first = kj.step(m1, 0.5, sigma_prev, x_hat)
        return kj.step_correct(m2, 0.5, sigma_prev, x_hat, first.prev_sample, first.derivative)

    out = jax.jit(final)(jnp.float32(0.0))
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out.prev_sample, kj.step(m1, 0.5, 0.0, x_hat).prev_sample)
    grad = jax.grad(lambda s: final(s).prev_sample.sum())(0.0)
    assert np.isfinite(grad)


# --- the step functions composed into Algorithm 2 ----------------------------------------


@pytest.mark.parametrize("schedule", ["ve", "karras"])
@pytest.mark.parametrize("s_churn", [0.0, 10.0])
def test_diffusers_style_loop_reproduces_algorithm2(schedule, s_churn):
    cfg = kj.KarrasVeConfig(sigma_min=0.02, sigma_max=20.0, s_churn=s_churn, s_min=0.1, s_max=5.0)
    state = kj.set_timesteps(cfg, 6, schedule)
    denoise = oracle.gaussian_denoiser(mu=0.7, s=0.4)

    def model(x, sigma):  # model_output = (D - x)/sigma, evaluated in float32
        d = denoise(_f64(x), float(sigma))
        return jnp.asarray((d - _f64(x)) / float(sigma), jnp.float32)

    keys = jax.random.split(jax.random.key(0), state.num_inference_steps + 1)
    x = state.init_noise_sigma * jax.random.normal(keys[0], SHAPE)
    x0, noises = _f64(x), []
    sigmas = state.sigmas
    for i in range(state.num_inference_steps):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        noises.append(_eps(cfg, keys[i + 1], SHAPE))
        x_hat, sigma_hat = kj.add_noise_to_input(cfg, state, x, sigma, keys[i + 1])
        out = kj.step(model(x_hat, sigma_hat), sigma_hat, sigma_prev, x_hat)
        if sigma_prev != 0:
            out = kj.step_correct(
                model(out.prev_sample, sigma_prev), sigma_hat, sigma_prev, x_hat,
                out.prev_sample, out.derivative,
            )
        x = out.prev_sample
    want = oracle.algorithm2(
        denoise, x0, _f64(sigmas), cfg.s_churn, cfg.s_min, cfg.s_max, noises
    )
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_outputs_keep_the_sample_dtype_and_levels_stay_float32(dtype):
    state = kj.set_timesteps(CFG, 10)
    x = _x(1, dtype=dtype)
    x_hat, sigma_hat = kj.add_noise_to_input(CFG, state, x, 1.0, jax.random.key(0))
    assert x_hat.dtype == dtype and sigma_hat.dtype == jnp.float32
    m = _x(2, dtype=dtype)
    out = kj.step(m, sigma_hat, 0.5, x_hat)
    chex.assert_trees_all_equal_dtypes(out, kj.KarrasVeOutput(x_hat, x_hat, x_hat))
    corr = kj.step_correct(m, sigma_hat, 0.5, x_hat, out.prev_sample, out.derivative)
    chex.assert_trees_all_equal_dtypes(corr, kj.KarrasVeOutput(x_hat, x_hat, x_hat))
    assert kj.scale_model_input(state, x).dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_noise_is_drawn_in_the_sample_dtype(dtype):
    state = kj.set_timesteps(CFG, 10)
    x = jnp.zeros(SHAPE, dtype)
    key = jax.random.key(9)
    x_hat, _ = kj.add_noise_to_input(CFG, state, x, 1.0, key)
    std = 1.0 * math.sqrt((math.sqrt(2) - 1) * (math.sqrt(2) + 1))  # gamma capped: std = sigma
    want = std * CFG.s_noise * _f64(jax.random.normal(key, SHAPE, dtype))
    np.testing.assert_allclose(_f64(x_hat), want, rtol=1e-2, atol=1e-2)


def test_fp16_with_diffusers_levels_does_not_overflow():
    # Levels up to 1e4 (squares 1e8 > fp16 max 65504). A window covering them forces churn there.
    cfg = CFG.replace(s_max=2e4)
    state = kj.set_timesteps(cfg, 5, "diffusers")
    sigma, sigma_prev = state.sigmas[0], state.sigmas[1]  # 1e4, 141.4
    x16 = _x(1, scale=100.0, dtype=jnp.float16)
    key = jax.random.key(2)
    x_hat, sigma_hat = kj.add_noise_to_input(cfg, state, x16, sigma, key)
    chex.assert_tree_all_finite((x_hat, sigma_hat))
    g = oracle.gamma(cfg.s_churn, cfg.s_min, cfg.s_max, 5, 1e4)
    want_hat, want_sigma_hat = oracle.add_noise_to_input(
        _f64(x16), 1e4, g, _eps(cfg, key, SHAPE, jnp.float16)
    )
    np.testing.assert_allclose(_f64(x_hat), want_hat, rtol=2e-3, atol=1.0)
    m = jnp.asarray(-_f64(x_hat) / float(sigma_hat), jnp.float16)  # D = 0
    out = kj.step(m, sigma_hat, sigma_prev, x_hat)
    chex.assert_tree_all_finite(out)
    corr = kj.step_correct(m, sigma_hat, sigma_prev, x_hat, out.prev_sample, out.derivative)
    chex.assert_tree_all_finite(corr)
    want_prev, _, _ = oracle.step(_f64(m), want_sigma_hat, float(sigma_prev), _f64(x_hat))
    np.testing.assert_allclose(_f64(out.prev_sample), want_prev, rtol=2e-3, atol=0.1)


def test_float64_under_x64():
    with jax.enable_x64(True):
        state = kj.set_timesteps(CFG, 10)
        x = jax.random.normal(jax.random.key(0), SHAPE, jnp.float64)
        key = jax.random.key(1)
        x_hat, sigma_hat = kj.add_noise_to_input(CFG, state, x, 1.0, key)
        assert x_hat.dtype == jnp.float64 and sigma_hat.dtype == jnp.float64
        noise = CFG.s_noise * np.asarray(jax.random.normal(key, SHAPE, jnp.float64))
        g = oracle.gamma(CFG.s_churn, CFG.s_min, CFG.s_max, 10, 1.0)
        want, _ = oracle.add_noise_to_input(np.asarray(x), 1.0, g, noise)
        np.testing.assert_allclose(x_hat, want, rtol=1e-13)
        out = kj.step(x, 1.3, 0.4, x_hat)
        want_prev, _, _ = oracle.step(np.asarray(x), 1.3, 0.4, np.asarray(x_hat))
        np.testing.assert_allclose(out.prev_sample, want_prev, rtol=1e-13)
        # float32 samples with x64 levels stay float32.
        x32, _ = kj.add_noise_to_input(CFG, state, x.astype(jnp.float32), 1.0, key)
        assert x32.dtype == jnp.float32


# --- jit ---------------------------------------------------------------------------------


def _one_iteration(cfg, state, x, sigma, sigma_prev, key, m_scale):
    x_hat, sigma_hat = kj.add_noise_to_input(cfg, state, x, sigma, key)
    out = kj.step(m_scale * x_hat, sigma_hat, sigma_prev, x_hat)
    return kj.step_correct(
        m_scale * out.prev_sample, sigma_hat, sigma_prev, x_hat, out.prev_sample, out.derivative
    )


@pytest.mark.parametrize("sigma,sigma_prev", [(1.0, 0.5), (0.3, 0.0), (80.0, 40.0)])
def test_jit_and_eager_agree(sigma, sigma_prev):
    state = kj.set_timesteps(CFG, 10)
    args = (CFG, state, _x(1), sigma, sigma_prev, jax.random.key(0), -0.3)
    eager = _one_iteration(*args)
    jitted = jax.jit(_one_iteration)(*args)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)


def test_second_call_with_new_arrays_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def iteration(cfg, state, x, sigma, sigma_prev, key):
        return _one_iteration(cfg, state, x, sigma, sigma_prev, key, -0.5)

    chex.clear_trace_counter()
    state = kj.set_timesteps(CFG, 10)
    iteration(CFG, state, _x(1), 1.0, 0.5, jax.random.key(0))
    # New sample, levels, key and hyperparameter values: same shapes, so no new trace.
    state2 = kj.set_timesteps(CFG.replace(sigma_max=50.0), 10)
    iteration(CFG.replace(s_churn=5.0, s_noise=1.0), state2, _x(2), 2.0, 0.0, jax.random.key(1))


# --- scale_model_input ------------------------------------------------------------------


def test_scale_model_input_is_the_identity():
    state = kj.set_timesteps(CFG, 3)
    x = _x(1)
    np.testing.assert_array_equal(kj.scale_model_input(state, x), x)
    np.testing.assert_array_equal(kj.scale_model_input(state, x, timestep=2), x)


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [0, 3.5, jnp.array([1.0, 2.0]), jnp.zeros((2,), jnp.int32),
                                     "key", None, jnp.zeros((3,), jnp.uint32),
                                     jnp.zeros((2, 2), jnp.uint32)])
def test_a_key_that_is_not_a_key_raises_type_error(bad_key):
    state = kj.set_timesteps(CFG, 10)
    with pytest.raises(TypeError, match="key"):
        kj.add_noise_to_input(CFG, state, _x(1), 1.0, bad_key)


def test_a_batch_of_typed_keys_is_refused():
    state = kj.set_timesteps(CFG, 10)
    with pytest.raises(ValueError, match="key"):
        kj.add_noise_to_input(CFG, state, _x(1), 1.0, jax.random.split(jax.random.key(0), 2))


@pytest.mark.parametrize("bad,match", [(0.0, "sigma must be > 0"), (-1.0, "sigma must be > 0"),
                                       (math.nan, "sigma must be finite"),
                                       (math.inf, "sigma must be finite"),
                                       (jnp.ones(2), "sigma must be a scalar")])
def test_add_noise_to_input_checks_sigma(bad, match):
    state = kj.set_timesteps(CFG, 10)
    with pytest.raises(ValueError, match=match):
        kj.add_noise_to_input(CFG, state, _x(1), bad, jax.random.key(0))


def test_add_noise_to_input_needs_a_filled_state_and_a_config():
    with pytest.raises(ValueError, match="set_timesteps"):
        kj.add_noise_to_input(CFG, kj.KarrasVeState.create(), _x(1), 1.0, jax.random.key(0))
    state = kj.set_timesteps(CFG, 10)
    with pytest.raises(TypeError, match="config"):
        kj.add_noise_to_input({}, state, _x(1), 1.0, jax.random.key(0))
    with pytest.raises(TypeError, match="state"):
        kj.add_noise_to_input(CFG, {}, _x(1), 1.0, jax.random.key(0))


def test_integer_samples_are_refused():
    state = kj.set_timesteps(CFG, 10)
    with pytest.raises(TypeError, match="sample"):
        kj.add_noise_to_input(CFG, state, jnp.ones(SHAPE, jnp.int32), 1.0, jax.random.key(0))


def test_step_shapes_must_match():
    with pytest.raises(ValueError, match="model_output and sample_hat"):
        kj.step(jnp.ones((2, 3)), 1.0, 0.5, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="model_output and sample_hat"):
        kj.step(jnp.ones((1, 3)), 1.0, 0.5, jnp.ones((2, 3)))  # no silent broadcasting


@pytest.mark.parametrize("which", ["model_output", "sample_prev", "derivative"])
def test_step_correct_shapes_must_match(which):
    args = dict(model_output=jnp.ones(SHAPE), sample_prev=jnp.ones(SHAPE),
                derivative=jnp.ones(SHAPE))
    args[which] = jnp.ones((4,))
    with pytest.raises(ValueError, match=f"{which} and sample_hat"):
        kj.step_correct(args["model_output"], 1.0, 0.5, jnp.ones(SHAPE), args["sample_prev"],
                        args["derivative"])


@pytest.mark.parametrize(
    "sigma_hat,sigma_prev,match",
    [(0.0, 0.5, "sigma_hat must be > 0"), (-1.0, 0.5, "sigma_hat must be > 0"),
     (math.nan, 0.5, "sigma_hat must be finite"), (1.0, -0.5, "sigma_prev must be >= 0"),
     (1.0, math.inf, "sigma_prev must be finite")],
)
def test_step_checks_levels(sigma_hat, sigma_prev, match):
    x = jnp.ones(SHAPE)
    with pytest.raises(ValueError, match=match):
        kj.step(x, sigma_hat, sigma_prev, x)
    with pytest.raises(ValueError, match=match):
        kj.step_correct(x, sigma_hat, sigma_prev, x, x, x)


# --- diffusers' PyTorch KarrasVeScheduler as a second oracle -----------------------------


def _diffusers_scheduler(**kwargs):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.schedulers.deprecated.scheduling_karras_ve import KarrasVeScheduler

    return KarrasVeScheduler(**kwargs)


def _t(a):
    import torch

    return torch.from_numpy(np.array(a))  # a writable float32 copy


@pytest.mark.parametrize("sigma_hat,sigma_prev", [(1e4, 141.42136), (2.8, 0.028284), (1.0, 0.0)])
def test_step_matches_diffusers(sigma_hat, sigma_prev):
    ref = _diffusers_scheduler()  # skips cleanly without torch/diffusers
    import torch
    x_hat, m = _x(1, scale=sigma_hat), _x(2)
    theirs = ref.step(_t(m), torch.tensor(sigma_hat), torch.tensor(sigma_prev), _t(x_hat))
    ours = kj.step(m, sigma_hat, sigma_prev, x_hat)
    for name in ("prev_sample", "derivative", "pred_original_sample"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name).numpy(),
                                   rtol=1e-5, atol=1e-6 * sigma_hat)


@pytest.mark.parametrize("sigma_hat,sigma_prev", [(1e4, 141.42136), (2.8, 0.028284), (1.3, 0.9)])
def test_step_correct_prev_sample_matches_diffusers(sigma_hat, sigma_prev):
    ref = _diffusers_scheduler()  # skips cleanly without torch/diffusers
    import torch
    x_hat, m1, m2 = _x(1, scale=sigma_hat), _x(2), _x(3)
    first = kj.step(m1, sigma_hat, sigma_prev, x_hat)
    theirs = ref.step_correct(_t(m2), torch.tensor(sigma_hat), torch.tensor(sigma_prev),
                              _t(x_hat), _t(first.prev_sample), _t(first.derivative))
    ours = kj.step_correct(m2, sigma_hat, sigma_prev, x_hat, first.prev_sample, first.derivative)
    np.testing.assert_allclose(ours.prev_sample, theirs.prev_sample.numpy(), rtol=1e-5,
                               atol=1e-6 * sigma_hat)
    np.testing.assert_allclose(ours.pred_original_sample, theirs.pred_original_sample.numpy(),
                               rtol=1e-5, atol=1e-6 * sigma_hat)
    # The documented difference: diffusers hands back the stale first-stage slope.
    np.testing.assert_array_equal(theirs.derivative.numpy(), np.asarray(first.derivative))
    assert not np.allclose(ours.derivative, theirs.derivative.numpy())


def test_diffusers_step_correct_is_nan_at_sigma_prev_zero_ours_is_not():
    ref = _diffusers_scheduler()  # skips cleanly without torch/diffusers
    import torch
    x_hat, m1 = _x(1), _x(2)
    first = kj.step(m1, 0.5, 0.0, x_hat)
    theirs = ref.step_correct(_t(_x(3)), 0.5, 0.0, _t(x_hat), _t(first.prev_sample),
                              _t(first.derivative))
    assert not torch.isfinite(theirs.prev_sample).all()  # 0/0 in diffusers
    ours = kj.step_correct(_x(3), 0.5, 0.0, x_hat, first.prev_sample, first.derivative)
    np.testing.assert_array_equal(ours.prev_sample, first.prev_sample)
