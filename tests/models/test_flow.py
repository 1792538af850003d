"""Flow-matching models: the exact velocity, x0 and epsilon networks of Gaussian data wrapped
by flow_denoiser give the exact Karras denoiser, at finite levels and at t = 1 (sigma = inf,
x held as x / sigma); per-sample levels, time_scale, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj
from karras_jax.models import FLOW_PREDICTIONS, flow_denoiser

# data x_0 ~ N(MU, diag(STD^2))
MU = np.asarray([0.5, -1.0, 2.0])
STD = np.asarray([0.7, 1.3, 0.4])


def flow_posterior(x_t, t, xp=jnp):
    """E[x_0 | x_t] and E[eps | x_t] for x_t = (1 - t) x_0 + t eps, written in flow time.

    Cov(x_0, x_t) = (1 - t) s^2, Cov(eps, x_t) = t, Var(x_t) = (1 - t)^2 s^2 + t^2 and
    E[x_t] = (1 - t) mu, per dimension; finite at t = 1 (x0 = mu, eps = x_t).
    """
    mu, s2 = xp.asarray(MU), xp.asarray(STD) ** 2
    centred = (x_t - (1 - t) * mu) / ((1 - t) ** 2 * s2 + t**2)
    return mu + (1 - t) * s2 * centred, t * centred


def exact_net(prediction, time_scale=1.0):
    """The exact network of the data: velocity eps - x_0, x_0 or eps at the network time t."""

    def net(params, x_t, t, cond):
        t = jnp.reshape(t / time_scale, jnp.shape(t) + (1,) * (x_t.ndim - jnp.ndim(t)))
        x0, eps = flow_posterior(x_t, t)
        return {"velocity": eps - x0, "x0": x0, "epsilon": eps}[prediction].astype(x_t.dtype)

    return net


def karras_denoiser64(x, sigma):
    """D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2) per dimension, in float64."""
    sigma = np.reshape(np.asarray(sigma, np.float64), (-1, 1))
    return (STD**2 * x + sigma**2 * MU) / (STD**2 + sigma**2)


def noisy(key, batch, sigma):
    """Karras samples x = x_0 + sigma eps of the data at sigma, float64."""
    k0, k1 = jax.random.split(key)
    x0 = MU + STD * np.asarray(jax.random.normal(k0, (batch, 3)), np.float64)
    return x0 + np.reshape(sigma, (-1, 1)) * np.asarray(jax.random.normal(k1, (batch, 3)), np.float64)


@pytest.mark.parametrize("prediction", FLOW_PREDICTIONS)
@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3, 1.0, 5.0, 80.0])
def test_an_exact_flow_network_gives_the_exact_karras_denoiser(prediction, sigma):
    x = noisy(jax.random.key(0), 64, sigma)
    got = flow_denoiser(exact_net(prediction), prediction)(None, jnp.asarray(x, jnp.float32),
                                                          jnp.float32(sigma), None)
    assert got.dtype == jnp.float32 and got.shape == (64, 3)
    scale = 1 + abs(sigma) if prediction == "epsilon" else 1.0  # x - sigma eps: round-off of x's size
    np.testing.assert_allclose(np.asarray(got, np.float64), karras_denoiser64(x, np.float32(sigma)),
                               rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_at_sigma_inf_x_is_x_over_sigma_and_the_denoiser_is_its_limit(prediction):
    z = jax.random.normal(jax.random.key(1), (64, 3))  # x / sigma at t = 1: the unit noise, x_t itself
    seen = []
    net = exact_net(prediction)
    apply_fn = flow_denoiser(lambda p, x_t, t, c: seen.append((x_t, t)) or net(p, x_t, t, c), prediction)
    at_inf = apply_fn(None, z, jnp.float32(jnp.inf), None)
    np.testing.assert_array_equal(seen[0][0], z)  # read as x_t unchanged
    assert float(seen[0][1]) == 1.0  # t = 1 exactly
    np.testing.assert_allclose(at_inf, np.broadcast_to(MU, (64, 3)), rtol=1e-6, atol=1e-6)  # D = E[x_0]
    # the limit of D(sigma z; sigma) as sigma grows
    for sigma in (1e3, 1e5):
        near = apply_fn(None, sigma * z, jnp.float32(sigma), None)
        np.testing.assert_allclose(near, at_inf, atol=30 / sigma)
    # and a network that is not exact: D = x_t - v at t = 1
    v = flow_denoiser(lambda p, x_t, t, c: jnp.sin(x_t) * t)(None, z, jnp.inf, None)
    np.testing.assert_allclose(v, z - jnp.sin(z), rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(np.asarray(at_inf)))


def test_at_sigma_inf_the_gradients_are_finite():
    apply_fn = flow_denoiser(lambda p, x_t, t, c: p * x_t * t)
    z = jnp.ones((2, 3))
    for level in (jnp.inf, 0.0, 2.0):
        grad_p, grad_x = jax.grad(lambda p, x, s=level: apply_fn(p, x, s, None).sum(), argnums=(0, 1))(1.5, z)
        assert np.isfinite(float(grad_p)) and np.all(np.isfinite(np.asarray(grad_x)))
    grad_sigma = jax.grad(lambda s: apply_fn(1.5, z, s, None).sum())(jnp.float32(jnp.inf))
    assert np.isfinite(float(grad_sigma))


def test_epsilon_prediction_refuses_a_concrete_infinite_sigma_and_gives_nan_for_a_traced_one():
    apply_fn = flow_denoiser(exact_net("epsilon"), "epsilon")
    z = jnp.ones((2, 3))
    for sigma in (float("inf"), jnp.inf, np.asarray([1.0, np.inf])):
        with pytest.raises(ValueError, match=r"sigma = inf \(t = 1\) has no denoised value for an epsilon"):
            apply_fn(None, z, sigma, None)
    traced = jax.jit(lambda s: apply_fn(None, z, s, None))(jnp.asarray([1.0, jnp.inf]))
    assert np.all(np.isfinite(np.asarray(traced[0]))) and np.all(np.isnan(np.asarray(traced[1])))
    # its finite levels are fine, however large
    want = karras_denoiser64(1e4 * np.ones((2, 3)), 1e4)
    np.testing.assert_allclose(apply_fn(None, 1e4 * z, 1e4, None), want, atol=1e-2)


@pytest.mark.parametrize("prediction", FLOW_PREDICTIONS)
def test_one_sigma_per_sample_equals_each_sample_at_its_own_scalar_sigma(prediction):
    seen = []
    net = lambda p, x_t, t, c: seen.append(t) or jnp.cos(x_t) * (1 + jnp.reshape(t, (-1, 1)))  # noqa: E731
    apply_fn = flow_denoiser(net, prediction, time_scale=1000.0)
    x = jax.random.normal(jax.random.key(2), (4, 3))
    sigma = jnp.asarray([0.05, 1.0, 30.0, jnp.inf if prediction != "epsilon" else 7.0])
    together = apply_fn(None, x, sigma, None)
    assert seen[-1].shape == (4,)
    for shaped in (sigma[:, None], sigma.reshape(4, 1)):
        np.testing.assert_array_equal(apply_fn(None, x, shaped, None), together)
    for i in range(4):
        np.testing.assert_allclose(together[i], apply_fn(None, x[i:i + 1], sigma[i], None)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="sigma must be a scalar or one level per sample"):
        apply_fn(None, x, sigma[:3], None)


def test_the_network_gets_x_t_and_time_scale_times_t():
    seen = []

    def net(params, x_t, t, cond):
        seen.append((x_t, t))
        return jnp.zeros_like(x_t)

    x = jnp.full((2, 3), 3.0)
    for sigma in (0.0, 1.0, 3.0, jnp.inf):
        flow_denoiser(net, time_scale=1000.0)(None, x, jnp.float32(sigma), None)
    np.testing.assert_allclose([float(t) for _, t in seen], [0.0, 500.0, 750.0, 1000.0], rtol=1e-7)
    np.testing.assert_allclose([float(x_t[0, 0]) for x_t, _ in seen], [3.0, 1.5, 0.75, 3.0], rtol=1e-7)
    assert seen[-1][1].dtype == jnp.float32 and seen[-1][1].shape == ()
    flow_denoiser(net, time_scale=1000.0, sigma_shape="batch")(None, x, jnp.float32(1.0), None)
    assert seen[-1][1].shape == (2,) and np.all(np.asarray(seen[-1][1]) == 500.0)
    # time_scale changes only what the network sees: D of an exact network is the same
    x = jnp.asarray(noisy(jax.random.key(3), 8, 2.0), jnp.float32)
    for prediction in FLOW_PREDICTIONS:
        scaled = flow_denoiser(exact_net(prediction, 1000.0), prediction, 1000.0)
        unscaled = flow_denoiser(exact_net(prediction), prediction)
        np.testing.assert_allclose(scaled(None, x, 2.0, None), unscaled(None, x, 2.0, None),
                                   rtol=1e-6, atol=1e-6)


def test_a_bfloat16_sample_gives_the_network_bfloat16_and_comes_back_bfloat16():
    seen = []
    net = lambda p, x_t, t, c: seen.append(x_t.dtype) or x_t - 1  # noqa: E731
    x = jnp.ones((2, 3), jnp.bfloat16)
    out = flow_denoiser(net)(None, x, jnp.float32(1.0), None)
    assert seen == [jnp.bfloat16] and out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), 0.5 - 0.5 * (0.5 - 1))  # x_t - t v


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), -float("inf"), jnp.float32(-0.5),
                                   np.asarray([1.0, -2.0])])
def test_a_concrete_sigma_that_is_nan_or_negative_is_refused(sigma):
    apply_fn = flow_denoiser(lambda p, x, t, c: x)
    with pytest.raises(ValueError, match=r"sigma must be >= 0 \(\+inf for t = 1\)"):
        apply_fn(None, jnp.ones((2, 3)), sigma, None)
    jax.jit(lambda s: apply_fn(None, jnp.ones((2, 3)), s, None))(sigma)  # traced: not checked


def ident(params, x_t, t, cond):
    return x_t


@pytest.mark.parametrize("call, error, match", [
    (lambda: flow_denoiser(ident, "v"), ValueError, "prediction must be one of"),
    (lambda: flow_denoiser(ident, "sample"), ValueError, "prediction must be one of"),
    (lambda: flow_denoiser(ident, ["velocity"]), ValueError, "prediction must be one of"),
    (lambda: flow_denoiser(ident, time_scale=0.0), ValueError, "time_scale must be finite and > 0"),
    (lambda: flow_denoiser(ident, time_scale=-1000), ValueError, "time_scale must be finite and > 0"),
    (lambda: flow_denoiser(ident, time_scale=float("inf")), ValueError, "time_scale must be finite"),
    (lambda: flow_denoiser(ident, time_scale=float("nan")), ValueError, "time_scale must be finite"),
    (lambda: flow_denoiser(ident, time_scale=[1.0, 2.0]), TypeError, "time_scale must be a real"),
    (lambda: flow_denoiser(ident, time_scale=np.ones(2)), ValueError, "time_scale must be a scalar"),
    (lambda: flow_denoiser(ident, time_scale="1000"), TypeError, "time_scale must be a real"),
    (lambda: flow_denoiser(ident, time_scale=True), TypeError, "time_scale must be a real"),
    (lambda: jax.jit(lambda s: flow_denoiser(ident, time_scale=s))(1.0), TypeError,
     "time_scale must be a concrete"),
    (lambda: flow_denoiser(ident, sigma_shape="vector"), ValueError, "sigma_shape must be one of"),
    (lambda: flow_denoiser(lambda p, x_t, t: x_t), TypeError,
     r"net_fn is called as net_fn\(params, x_t, t, cond\)"),
    (lambda: flow_denoiser("net"), TypeError, "net_fn must be callable"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- sampling on the flow schedule ------------------------------------------------------------

CFG = kj.KarrasVeConfig(s_churn=0.0)
SAMPLES = 4096
VELOCITY = flow_denoiser(exact_net("velocity", 1000.0), time_scale=1000.0)  # an SD3-style time axis


def check_mean_and_covariance(x, n=SAMPLES):
    """The sample mean and covariance of x (n, 3) within 5 standard errors of N(MU, diag(STD^2))."""
    np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * STD / np.sqrt(n))
    # Var of a sample variance s_i^4 2/n, of a sample covariance s_i^2 s_j^2 / n (independent i, j)
    se = np.outer(STD, STD) * np.where(np.eye(3, dtype=bool), np.sqrt(2 / n), np.sqrt(1 / n))
    np.testing.assert_array_less(np.abs(np.cov(x.T) - np.diag(STD**2)), 5 * se)


@pytest.mark.parametrize("solver, num_steps, tolerance", [("euler", 200, 0.1), ("heun", 50, 0.02)])
def test_sampling_the_exact_velocity_model_from_t_1_reproduces_the_data(solver, num_steps, tolerance):
    state = kj.set_timesteps(CFG, num_steps, "flow", shift=3.0)
    assert np.isinf(float(state.sigmas[0])) and np.isinf(float(state.init_noise_sigma))
    keys = jax.random.split(jax.random.key(4), SAMPLES)
    x = np.asarray(kj.sample(lambda x, s, c: VELOCITY(None, x, s, c), keys, state, CFG, (3,), solver=solver),
                   np.float64)
    check_mean_and_covariance(x)
    # sharper, sample by sample: the exact flow carries the unit noise z at t = 1 to MU + STD z
    # (Euler is first order: its error at 200 steps is about 4 times Heun's at 50)
    z = np.asarray(kj.initial_noise(keys, state, (3,)), np.float64)
    np.testing.assert_array_less(np.abs(x - (MU + STD * z)), tolerance)


def test_an_epsilon_flow_model_fails_loudly_at_t_1_and_samples_from_a_finite_first_level():
    apply_fn = flow_denoiser(exact_net("epsilon", 1000.0), "epsilon", time_scale=1000.0)
    state = kj.set_timesteps(CFG, 50, "flow", shift=3.0)
    keys = jax.random.split(jax.random.key(5), SAMPLES)
    for build in (kj.make_sampler, lambda *a: kj.make_sharded_sampler(*a, jax.make_mesh((1,), ("data",)))):
        with pytest.raises(ValueError, match="no value at sigma = inf"):
            build(apply_fn, state, CFG, (3,))
    other = kj.make_sampler(apply_fn, kj.set_timesteps(CFG, 50, "karras"), CFG, (3,))
    with pytest.raises(ValueError, match="no value at sigma = inf"):  # nor as a per-call state
        other(None, keys[:4], state=state)
    # a closure hides the adapter from kj.sample: the debug mode then names the step
    with pytest.raises(FloatingPointError, match=r"denoiser's output at step 0 \(sigma_hat=inf"):
        kj.sample(lambda x, s, c: apply_fn(None, x, s, c), keys[:4], state, CFG, (3,), check_finite=True)
    # the documented way: the same levels below t = 1, from sigma = 1e4 (t = 0.9999)
    levels = np.concatenate([[1e4], np.asarray(state.sigmas, np.float64)[1:-1]])
    finite = kj.set_timesteps(CFG, sigmas=levels)
    x = np.asarray(kj.make_sampler(apply_fn, finite, CFG, (3,))(None, keys), np.float64)
    check_mean_and_covariance(x)


@pytest.mark.parametrize("num_steps", [1, 10, 28])
def test_euler_on_the_flow_schedule_is_diffusers_flow_match_euler_loop(num_steps):
    torch = pytest.importorskip("torch", reason="the diffusers cross-check needs torch")
    diffusers = pytest.importorskip("diffusers", reason="the diffusers cross-check needs diffusers")
    state = kj.set_timesteps(CFG, num_steps, "flow", shift=3.0)
    keys = jax.random.split(jax.random.key(6), 256)
    # at sigma_0 = inf kj holds x / sigma_0: the unit noise, which is also diffusers' initial latent
    z = kj.initial_noise(keys, state, (3,))
    ours = kj.sample(lambda x, s, c: VELOCITY(None, x, s, c), keys, state, CFG, (3,), solver="euler")
    np.testing.assert_array_equal(kj.sample(lambda x, s, c: VELOCITY(None, x, s, c), keys, state, CFG, (3,),
                                            solver="euler", x_init=z), ours)

    mu, s2 = torch.tensor(MU, dtype=torch.float32), torch.tensor(STD**2, dtype=torch.float32)

    def velocity(x_t, timestep):  # exact_net("velocity", 1000.0) in torch float32
        t = timestep / 1000
        centred = (x_t - (1 - t) * mu) / ((1 - t) ** 2 * s2 + t**2)
        return t * centred - (mu + (1 - t) * s2 * centred)

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(num_steps)
    x_t = torch.tensor(np.asarray(z))
    for t in scheduler.timesteps:
        x_t = scheduler.step(velocity(x_t, t), t, x_t).prev_sample
    theirs = x_t.numpy().astype(np.float64)
    # float32 round-off: 16 ulps of the largest entry (kj carries x = x_t / (1 - t), up to
    # sigma_1 times larger, and rounds in other places; the first step alone agrees exactly)
    tolerance = 16 * np.finfo(np.float32).eps * np.abs(theirs).max()
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=0, atol=tolerance)
