"""Training losses (Table 1's training rows and rectified flow): the documented randomness
contract, the loss against a float64 NumPy transcription, each row's noise-level distribution
and weight, the exact expected loss for Gaussian data, the flow loss as the velocity MSE,
label dropout, and the errors."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj
from karras_jax.models import flow_denoiser

KINDS = ("edm", "vp", "ve", "iddpm", "flow")
SIGMA_DATA = 0.5

# Compiled once per denoiser, kind and shapes (eager dispatch would compile op by op); the
# row's constants are traced keyword arguments.
_loss_jit = jax.jit(kj.edm_loss, static_argnums=0, static_argnames="kind")


def loss_jit(apply_fn, params, x, key, kind="edm", **constants):
    return _loss_jit(apply_fn, params, x, key, kind=kind, **constants)


sigmas_jit = jax.jit(kj.training_sigmas, static_argnames="kind")


# --- float64 references written from Table 1 ----------------------------------------------


def weight64(sigma, kind, sigma_data=SIGMA_DATA):
    """lambda(sigma) of Table 1, in float64."""
    sigma = np.asarray(sigma, np.float64)
    if kind == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if kind == "flow":
        return ((1 + sigma) / sigma) ** 2
    return 1.0 / sigma**2


def vp_sigma64(t, beta_d=19.9, beta_min=0.1):
    return np.sqrt(np.expm1(beta_d * t**2 / 2 + beta_min * t))


def vp_t64(sigma, beta_d=19.9, beta_min=0.1):
    """sigma_vp's inverse: t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d."""
    sigma = np.asarray(sigma, np.float64)
    return (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(sigma**2)) - beta_min) / beta_d


@functools.partial(jax.jit, static_argnums=1)
def one_samples_draws(k_i, sample_shape):
    """The docstring's rule for sample i: k_sigma, k_noise, k_drop = split(k_i, 3); its noise is
    normal(k_noise, x.shape[1:]) and its dropout uniform is uniform(k_drop)."""
    k_sigma, k_noise, k_drop = jax.random.split(k_i, 3)
    return k_sigma, jax.random.normal(k_noise, sample_shape, jnp.float32), jax.random.uniform(k_drop, ())


@functools.partial(jax.jit, static_argnums=0, static_argnames="kind")
def loss_and_documented_draws(apply_fn, params, x, key, kind, **constants):
    """kj.edm_loss, and the sigma and noise the docstring says it draws (one program, one compile)."""
    sample_keys = jax.random.split(key, x.shape[0])
    k_sigma, noise, _ = jax.vmap(lambda k_i: one_samples_draws(k_i, x.shape[1:]))(sample_keys)
    sigma = kj.training_sigmas(k_sigma, kind, **constants)
    return kj.edm_loss(apply_fn, params, x, key, kind=kind, **constants), sigma, noise


def ks_uniform(u):
    """Kolmogorov-Smirnov distance of samples in [0, 1] from U(0, 1)."""
    u = np.sort(np.asarray(u, np.float64))
    i = np.arange(1, len(u) + 1)
    return max(np.max(i / len(u) - u), np.max(u - (i - 1) / len(u)))


KS_999 = 1.95  # the KS statistic times sqrt(n) exceeds this with probability 0.001


# --- a nonlinear toy denoiser, in JAX and in float64 NumPy --------------------------------


def toy_denoiser(params, x, sigma, cond):
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    return params["a"] * jnp.tanh(x / (1 + s)) + params["b"] * s / (1 + s**2)


def toy_denoiser64(params, x, sigma):
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    a, b = np.asarray(params["a"], np.float64), float(params["b"])
    return a * np.tanh(x / (1 + s)) + b * s / (1 + s**2)


TOY_PARAMS = {"a": jnp.asarray(np.linspace(0.5, 1.5, 6).reshape(3, 2), jnp.float32), "b": jnp.float32(0.3)}
X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3, 2)), jnp.float32)


@pytest.mark.parametrize("kind, constants", [
    ("edm", {}), ("vp", {}), ("ve", {}), ("iddpm", {}), ("edm", {"sigma_data": 1.0, "p_mean": 0.0}),
])
def test_loss_matches_a_float64_transcription_with_the_documented_draws(kind, constants):
    got, sigma, noise = loss_and_documented_draws(toy_denoiser, TOY_PARAMS, X, jax.random.key(42), kind=kind,
                                                  **constants)
    sigma, noise, x = (np.asarray(a, np.float64) for a in (sigma, noise, X))
    y = x + sigma[:, None, None] * noise
    error = np.mean((toy_denoiser64(TOY_PARAMS, y, sigma) - x) ** 2, axis=(1, 2))  # a sample's mean
    want = weight64(sigma, kind, constants.get("sigma_data", SIGMA_DATA)) * error

    assert got.shape == (16,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5)


def test_apply_fn_gets_one_sigma_per_sample_and_the_noisy_input_in_xs_dtype():
    seen = []

    def recording(params, x, sigma, cond):
        seen.append((x.shape, x.dtype, sigma.shape, sigma.dtype, cond))
        return x

    loss = loss_jit(recording, None, jnp.zeros((5, 4, 3), jnp.bfloat16), jax.random.key(0))
    assert seen == [((5, 4, 3), jnp.bfloat16, (5,), jnp.float32, None)]  # no cond: None
    assert loss.shape == (5,) and loss.dtype == jnp.float32


# --- Table 1: how each row draws sigma, and its weight ------------------------------------

MANY = jax.random.split(jax.random.key(2024), 20_000)


def test_edm_draws_ln_sigma_from_a_normal_with_p_mean_and_p_std():
    for p_mean, p_std in ((-1.2, 1.2), (0.5, 0.3)):
        ln_sigma = np.log(np.asarray(sigmas_jit(MANY, "edm", p_mean=p_mean, p_std=p_std), np.float64))
        n = len(ln_sigma)
        assert abs(ln_sigma.mean() - p_mean) < 4 * p_std / math.sqrt(n)
        assert abs(ln_sigma.std() / p_std - 1) < 4 / math.sqrt(2 * n)
        cdf = np.array([0.5 * (1 + math.erf(z / math.sqrt(2))) for z in (ln_sigma - p_mean) / p_std])
        assert ks_uniform(cdf) < KS_999 / math.sqrt(n)


def test_the_default_training_constants_are_the_papers():
    # (edm_loss with the defaults is checked against them in the Gaussian-data test below)
    assert kj.LOSSES["edm"] == {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5}
    assert kj.LOSSES["vp"] == {"beta_d": 19.9, "beta_min": 0.1, "epsilon_t": 1e-5}
    assert kj.LOSSES["ve"] == {"sigma_min": 0.02, "sigma_max": 100.0}
    assert kj.LOSSES["iddpm"] == {"C1": 0.001, "C2": 0.008, "M": 1000}
    assert kj.LOSSES["flow"] == {"logit_mean": 0.0, "logit_std": 1.0}  # SD3's logit-normal


def test_ve_draws_ln_sigma_uniformly_between_ln_sigma_min_and_ln_sigma_max():
    ln_sigma = np.log(np.asarray(sigmas_jit(MANY, "ve"), np.float64))
    lo, hi = math.log(0.02), math.log(100.0)
    assert lo - 1e-6 <= ln_sigma.min() and ln_sigma.max() <= hi + 1e-6
    assert ks_uniform((ln_sigma - lo) / (hi - lo)) < KS_999 / math.sqrt(len(ln_sigma))


def test_vp_draws_sigma_vp_of_a_uniform_time_in_epsilon_t_to_1():
    t = vp_t64(sigmas_jit(MANY, "vp"))
    assert 1e-5 * (1 - 1e-3) <= t.min() and t.max() <= 1 + 1e-6
    assert ks_uniform((t - 1e-5) / (1 - 1e-5)) < KS_999 / math.sqrt(len(t))
    # and with other constants
    t = vp_t64(sigmas_jit(MANY, "vp", beta_d=10.0, beta_min=1.0, epsilon_t=0.2), 10.0, 1.0)
    assert 0.2 * (1 - 1e-5) <= t.min() and t.max() <= 1 + 1e-6
    assert ks_uniform((t - 0.2) / 0.8) < KS_999 / math.sqrt(len(t))


def test_iddpm_draws_every_one_of_its_m_levels_and_nothing_else():
    levels = np.asarray(kj.iddpm_levels()[:-1], np.float32)
    assert len(levels) == 1000 and levels.min() > 0
    sigma = np.asarray(sigmas_jit(MANY, "iddpm"))
    index = np.minimum(np.searchsorted(-levels, -sigma), 999)  # levels are descending
    np.testing.assert_array_equal(levels[index], sigma)  # every sigma is one of the u_j
    assert np.all(np.bincount(index, minlength=1000) > 0)  # u_0 .. u_{M-1}, none left out
    assert abs(index.mean() - 499.5) < 4 * 288.7 / math.sqrt(len(sigma))  # a uniform index


def test_iddpm_with_other_constants_draws_from_their_levels():
    levels = np.asarray(kj.iddpm_levels(C1=0.01, C2=0.02, M=50)[:-1], np.float32)
    draw = jax.jit(functools.partial(kj.training_sigmas, kind="iddpm", C1=0.01, C2=0.02, M=50))
    assert set(np.unique(np.asarray(draw(MANY[:2000])))) == set(levels)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_weight_is_table_1s_lambda(kind):
    sigma = np.array([0.002, 0.02, 0.5, 1.0, 7.0, 80.0, 150.0])
    np.testing.assert_allclose(kj.loss_weight(sigma, kind), weight64(sigma, kind), rtol=1e-6)
    assert kj.loss_weight(sigma, kind).dtype == jnp.float32


def test_edm_loss_weight_uses_sigma_data():
    assert float(kj.loss_weight(0.5)) == 8.0
    sigma = np.array([0.1, 1.0, 10.0])
    np.testing.assert_allclose(kj.loss_weight(sigma, "edm", sigma_data=1.3),
                               weight64(sigma, "edm", sigma_data=1.3), rtol=1e-6)


# --- the exact expected loss of the exact denoiser of Gaussian data -----------------------

MU = jnp.asarray([1.0, -0.5, 0.25, 0.0, 2.0, -1.0, 0.5, 0.75], jnp.float32)
S = 0.8  # a data std != sigma_data, for which the expectation is not trivially 1


def gaussian_denoiser(params, x, sigma, cond):
    """The exact denoiser of N(mu, s^2 I): D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""
    mu, s = params
    s2 = (sigma**2)[:, None]
    return (s**2 * x + s2 * mu) / (s**2 + s2)


def expected_edm_loss(s, p_mean=-1.2, p_std=1.2, sigma_data=SIGMA_DATA):
    """E_sigma[lambda(sigma) sigma^2 s^2 / (sigma^2 + s^2)] over ln sigma ~ N(p_mean, p_std^2), by
    Gauss-Hermite quadrature in float64."""
    z, w = np.polynomial.hermite_e.hermegauss(120)
    sigma = np.exp(p_mean + p_std * z)
    per_sigma = weight64(sigma, "edm", sigma_data) * sigma**2 * s**2 / (sigma**2 + s**2)
    return float(np.sum(w * per_sigma) / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("s", [S, SIGMA_DATA, 2.0])  # at s = sigma_data the expectation is exactly 1
def test_the_exact_denoisers_mean_loss_is_the_expected_loss_for_gaussian_data(s):
    batch = 65536
    x = MU + s * jax.random.normal(jax.random.key(7), (batch, MU.size))
    losses = np.asarray(loss_jit(gaussian_denoiser, (MU, s), x, jax.random.key(8)), np.float64)
    want = expected_edm_loss(s)
    standard_error = losses.std() / math.sqrt(batch)
    assert standard_error < 0.006 * want  # so the comparison below is a sharp one
    assert abs(losses.mean() - want) < 4 * standard_error


# --- rectified flow ------------------------------------------------------------------------


def flow_draws64(key, batch, sample_shape, logit_mean, logit_std):
    """The flow row's draws for edm_loss(key) by the documented key use, in float64: sample i's
    k_sigma, k_noise, _ = split(split(key, B)[i], 3); n = normal(k_sigma), t = sigmoid(m + s n),
    sigma = t / (1 - t), and its noise normal(k_noise, sample_shape)."""
    sample_keys = jax.random.split(key, batch)
    k_sigma, noise, _ = jax.vmap(lambda k_i: one_samples_draws(k_i, sample_shape))(sample_keys)
    n = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (), jnp.float32))(k_sigma), np.float64)
    t = 1 / (1 + np.exp(-(logit_mean + logit_std * n)))
    return t, t / (1 - t), np.asarray(noise, np.float64)


@pytest.mark.parametrize("constants", [{}, {"logit_mean": -0.5, "logit_std": 1.6}])
def test_the_flow_loss_matches_a_float64_transcription_of_its_draws(constants):
    m, s = constants.get("logit_mean", 0.0), constants.get("logit_std", 1.0)
    key = jax.random.key(31)
    got = loss_jit(toy_denoiser, TOY_PARAMS, X, key, kind="flow", **constants)
    t, sigma, noise = flow_draws64(key, 16, X.shape[1:], m, s)
    x = np.asarray(X, np.float64)
    y = x + sigma[:, None, None] * noise
    error = np.mean((toy_denoiser64(TOY_PARAMS, y, sigma) - x) ** 2, axis=(1, 2))
    np.testing.assert_allclose(np.asarray(got, np.float64), error / t**2, rtol=2e-5)
    np.testing.assert_allclose(weight64(sigma, "flow"), 1 / t**2, rtol=1e-12)  # the same weight, two ways


def velocity_net(params, x_t, t, cond):
    """A velocity network that is not the exact one: nonlinear in x_t, depends on t."""
    t = jnp.reshape(t, (-1,) + (1,) * (x_t.ndim - 1))
    return params["a"] * jnp.tanh(x_t) + params["b"] * t - 0.5 * x_t


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_the_flow_loss_of_a_velocity_network_through_flow_denoiser_is_the_velocity_mse(time_scale):
    apply_fn = flow_denoiser(lambda p, x_t, t, c: velocity_net(p, x_t, t / time_scale, c),
                             time_scale=time_scale)
    key = jax.random.key(32)
    got = np.asarray(loss_jit(apply_fn, TOY_PARAMS, X, key, kind="flow"), np.float64)
    t, _, noise = flow_draws64(key, 16, X.shape[1:], 0.0, 1.0)
    x = np.asarray(X, np.float64)
    tb = t[:, None, None]
    x_t = (1 - tb) * x + tb * noise  # the flow's own noising
    v_hat = velocity_net(TOY_PARAMS, jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32), None)
    v_hat = np.asarray(v_hat, np.float64)
    want = np.mean((v_hat - (noise - x)) ** 2, axis=(1, 2))  # ||v_hat - (eps - x_0)||^2, a sample's mean
    np.testing.assert_allclose(got, want, rtol=1e-5)

    # and the training signal is the same: the gradients of the two losses agree
    def velocity_mse(params):
        v = velocity_net(params, jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32), None)
        return jnp.mean((v - jnp.asarray(noise - x, jnp.float32)) ** 2)
    grads = jax.grad(lambda p: kj.edm_loss(apply_fn, p, X, key, kind="flow").mean())(TOY_PARAMS)
    want_grads = jax.grad(velocity_mse)(TOY_PARAMS)
    for name in ("a", "b"):
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=2e-5)


@pytest.mark.parametrize("constants", [{"logit_std": 30.0}, {"logit_mean": 100.0}, {"logit_mean": -100.0}])
def test_extreme_flow_logits_are_clipped_so_loss_and_gradients_stay_finite(constants):
    from karras_jax.training.loss import FLOW_LOGIT_LIMIT

    sigma = np.asarray(sigmas_jit(MANY, "flow", **constants), np.float64)
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert np.abs(np.log(sigma)).max() <= FLOW_LOGIT_LIMIT * (1 + 1e-6)
    apply_fn = flow_denoiser(velocity_net)
    key = jax.random.key(33)
    losses = kj.edm_loss(apply_fn, TOY_PARAMS, X, key, kind="flow", **constants)
    assert np.all(np.isfinite(np.asarray(losses)))
    grads = jax.grad(lambda p: kj.edm_loss(apply_fn, p, X, key, kind="flow", **constants).mean())(TOY_PARAMS)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_flow_draws_a_logit_normal_time():
    for m, s in ((0.0, 1.0), (0.7, 0.4)):
        sigma = np.asarray(sigmas_jit(MANY, "flow", logit_mean=m, logit_std=s), np.float64)
        t = sigma / (1 + sigma)
        assert 0 < t.min() and t.max() < 1
        logit = np.log(t / (1 - t))
        n = len(logit)
        assert abs(logit.mean() - m) < 4 * s / math.sqrt(n)
        assert abs(logit.std() / s - 1) < 4 / math.sqrt(2 * n)
        cdf = np.array([0.5 * (1 + math.erf(z / math.sqrt(2))) for z in (logit - m) / s])
        assert ks_uniform(cdf) < KS_999 / math.sqrt(n)
    # the default is SD3's: the median time is 1/2
    assert abs(np.median(np.asarray(sigmas_jit(MANY, "flow"))) - 1) < 0.05


def test_the_flow_weight_is_one_over_t_squared():
    t = np.array([1e-3, 0.05, 0.3, 0.5, 0.9, 0.999])
    sigma = t / (1 - t)
    np.testing.assert_allclose(kj.loss_weight(sigma, "flow"), 1 / t**2, rtol=1e-5)
    assert float(kj.loss_weight(1.0, "flow")) == 4.0  # t = 1/2


def test_the_exact_flow_denoisers_mean_flow_loss_is_its_expected_loss_for_gaussian_data():
    """E[lambda(sigma) sigma^2 s^2 / (sigma^2 + s^2)] over ln sigma ~ N(0, 1), by Gauss-Hermite."""
    batch, s = 65536, S
    x = MU + s * jax.random.normal(jax.random.key(9), (batch, MU.size))
    losses = np.asarray(loss_jit(gaussian_denoiser, (MU, s), x, jax.random.key(10), kind="flow"), np.float64)
    z, w = np.polynomial.hermite_e.hermegauss(120)
    sigma = np.exp(z)
    per_sigma = weight64(sigma, "flow") * sigma**2 * s**2 / (sigma**2 + s**2)
    want = float(np.sum(w * per_sigma) / math.sqrt(2 * math.pi))
    standard_error = losses.std() / math.sqrt(batch)
    assert standard_error < 0.01 * want
    assert abs(losses.mean() - want) < 4 * standard_error


# --- keys ---------------------------------------------------------------------------------


def test_one_key_is_split_into_one_key_per_sample():
    key = jax.random.key(5)
    one = loss_jit(toy_denoiser, TOY_PARAMS, X, key)
    per_sample = loss_jit(toy_denoiser, TOY_PARAMS, X, jax.random.split(key, 16))
    np.testing.assert_array_equal(one, per_sample)


def test_each_samples_loss_depends_only_on_its_own_key():
    keys = jax.random.split(jax.random.key(6), 16)
    full = loss_jit(toy_denoiser, TOY_PARAMS, X, keys)
    assert len(np.unique(np.asarray(full))) == 16  # the samples' draws differ
    # reordering the samples with their keys reorders the losses
    order = np.random.default_rng(1).permutation(16)
    reordered = loss_jit(toy_denoiser, TOY_PARAMS, X[order], keys[order])
    np.testing.assert_allclose(reordered, full[order], rtol=1e-6)
    # other samples and keys in the rest of the batch leave the first eight losses as they were
    other_keys = jnp.concatenate([keys[:8], jax.random.split(jax.random.key(7), 8)])
    other_x = X.at[8:].set(-X[8:] * 3)
    changed = loss_jit(toy_denoiser, TOY_PARAMS, other_x, other_keys)
    np.testing.assert_allclose(changed[:8], full[:8], rtol=1e-6)
    assert not np.any(np.isclose(changed[8:], full[8:]))


def test_a_legacy_raw_uint32_key_is_accepted_like_a_typed_one():
    typed = loss_jit(toy_denoiser, TOY_PARAMS, X, jax.random.key(11))
    np.testing.assert_array_equal(loss_jit(toy_denoiser, TOY_PARAMS, X, jax.random.PRNGKey(11)), typed)


@pytest.mark.parametrize("key, error", [
    (jax.random.split(jax.random.key(0), 15), ValueError),
    (jax.random.split(jax.random.key(0), (2, 8)), ValueError),
    (jnp.zeros((3,), jnp.uint32), ValueError),
    (jnp.zeros((16, 3), jnp.uint32), ValueError),
    (jnp.zeros((16,), jnp.float32), TypeError),
    (0, TypeError),
])
def test_a_key_of_the_wrong_shape_or_type_is_rejected(key, error):
    with pytest.raises(error):
        kj.edm_loss(toy_denoiser, TOY_PARAMS, X, key)


# --- label dropout ------------------------------------------------------------------------

BATCH = 4000
LABELS = jnp.arange(1, BATCH + 1, dtype=jnp.int32) % 7 + 1  # classes 1..7, never the null class 0
DROP_KEY = jax.random.key(12)


def cond_denoiser(params, x, sigma, cond):
    """D = the label (class + 1 for one-hot rows) everywhere: with x = 0 a sample's loss is
    lambda(sigma) label^2, zero exactly when its label was replaced by the null label 0."""
    value = cond if cond.ndim == 1 else cond @ jnp.arange(1, cond.shape[1] + 1, dtype=cond.dtype)
    return jnp.broadcast_to(value.astype(x.dtype)[:, None], x.shape)


@jax.jit
def label_losses(cond, null_cond, cond_drop_prob):
    """Losses with label dropout, cond_drop_prob traced (as the docstring allows; the training
    step's tests use a concrete one)."""
    return kj.edm_loss(cond_denoiser, None, jnp.zeros((cond.shape[0], 2)), DROP_KEY, cond,
                       cond_drop_prob=cond_drop_prob, null_cond=null_cond)


@jax.jit
def labels_kept(cond):
    """Losses with the default cond_drop_prob=0 (concrete): no null_cond needed."""
    return kj.edm_loss(cond_denoiser, None, jnp.zeros((cond.shape[0], 2)), DROP_KEY, cond)


def dropped(losses):
    return np.asarray(losses) == 0


def test_cond_drop_prob_0_passes_cond_unchanged_and_needs_no_null_cond():
    kept = labels_kept(LABELS)
    # loss_i = lambda(sigma_i) label_i^2, and lambda(sigma_i) is the loss with every label 1
    np.testing.assert_allclose(kept / labels_kept(jnp.ones_like(LABELS)), LABELS**2, rtol=1e-6)
    np.testing.assert_array_equal(label_losses(LABELS, 0, 0.0), kept)  # a traced 0 drops nothing either


def test_cond_drop_prob_1_replaces_every_label_by_null_cond():
    assert dropped(label_losses(LABELS, 0, 1.0)).all()


def test_label_dropout_drops_about_cond_drop_prob_of_the_labels_by_the_documented_rule():
    losses = label_losses(LABELS, 0, 0.3)
    assert abs(dropped(losses).mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / BATCH)
    # sample i is dropped when uniform(k_drop) < cond_drop_prob, k_drop = split(split(key, B)[i], 3)[2]
    drop_u = jax.vmap(lambda k_i: one_samples_draws(k_i, (2,))[2])(jax.random.split(DROP_KEY, BATCH))
    np.testing.assert_array_equal(dropped(losses), np.asarray(drop_u) < 0.3)
    # and the others keep their own label
    kept = ~dropped(losses)
    np.testing.assert_array_equal(np.asarray(losses)[kept], np.asarray(labels_kept(LABELS))[kept])


def test_dropout_replaces_whole_rows_of_a_one_hot_cond():
    losses = np.asarray(label_losses(jax.nn.one_hot(LABELS, 8), jnp.zeros(8), 0.3))
    np.testing.assert_array_equal(dropped(losses), dropped(label_losses(LABELS, 0, 0.3)))
    # a kept row is the whole one-hot row: its loss is lambda (label + 1)^2
    kept = ~dropped(losses)
    np.testing.assert_allclose(losses[kept], np.asarray(labels_kept(LABELS + 1))[kept], rtol=1e-6)


# --- errors -------------------------------------------------------------------------------

SMALL = jnp.zeros((4, 2))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_cond_drop_prob_outside_0_1_is_rejected(p):
    with pytest.raises(ValueError, match="cond_drop_prob"):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), LABELS[:4], cond_drop_prob=p, null_cond=0)


def test_dropout_needs_null_cond_and_cond():
    with pytest.raises(ValueError, match="null_cond"):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), LABELS[:4], cond_drop_prob=0.1)
    with pytest.raises(ValueError, match="null_cond"):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), None, cond_drop_prob=0.1, null_cond=0)


def test_an_unknown_kind_is_rejected():
    for call in (lambda: kj.edm_loss(toy_denoiser, TOY_PARAMS, X, jax.random.key(0), kind="ddpm"),
                 lambda: kj.training_sigmas(MANY[:4], "EDM"),
                 lambda: kj.loss_weight(1.0, "karras")):
        with pytest.raises(ValueError, match="kind"):
            call()


def test_a_constant_of_another_row_is_a_type_error():
    with pytest.raises(TypeError, match="sigma_min"):
        kj.edm_loss(toy_denoiser, TOY_PARAMS, X, jax.random.key(0), sigma_min=0.002)
    with pytest.raises(TypeError, match="p_mean"):
        kj.training_sigmas(MANY[:4], "ve", p_mean=0.0)
    with pytest.raises(TypeError, match="M"):
        kj.training_sigmas(MANY[:4], "iddpm", M=10.0)
    with pytest.raises(TypeError, match=r"kind='flow' takes the constants logit_mean, logit_std; got p_mean"):
        kj.edm_loss(toy_denoiser, TOY_PARAMS, X, jax.random.key(0), kind="flow", p_mean=0.0)


@pytest.mark.parametrize("kind, constants", [
    ("edm", {"p_std": -1.0}), ("edm", {"sigma_data": 0.0}), ("edm", {"p_mean": float("inf")}),
    ("ve", {"sigma_min": 10.0, "sigma_max": 1.0}), ("vp", {"epsilon_t": 1.0}), ("vp", {"beta_d": -1.0}),
    ("flow", {"logit_std": 0.0}), ("flow", {"logit_std": -1.0}), ("flow", {"logit_mean": float("nan")}),
])
def test_bad_constant_values_are_rejected(kind, constants):
    with pytest.raises(ValueError):
        kj.edm_loss(toy_denoiser, TOY_PARAMS, X, jax.random.key(0), kind=kind, **constants)


def test_an_empty_batch_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        kj.edm_loss(toy_denoiser, TOY_PARAMS, jnp.zeros((0, 3, 2)), jax.random.key(0))


# --- concrete values refused, messages naming the parameter (issue 16) ----------------------


@pytest.mark.parametrize("kind", [["edm"], ("edm",), None, 0])
def test_a_kind_that_is_not_a_string_is_a_type_error_naming_the_kinds(kind):
    for call in (lambda: kj.edm_loss(toy_denoiser, TOY_PARAMS, X, jax.random.key(0), kind=kind),
                 lambda: kj.training_sigmas(MANY[:4], kind),
                 lambda: kj.loss_weight(1.0, kind)):
        with pytest.raises(TypeError, match=r"kind must be one of .*'edm', 'vp', 've', 'iddpm', 'flow'"):
            call()


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), [1.0, 0.0]])
def test_loss_weight_refuses_a_level_whose_weight_is_not_finite(sigma):
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        kj.loss_weight(jnp.asarray(sigma))


@pytest.mark.parametrize("cond, drop", [
    (LABELS[:5], 0.0), (LABELS[:5], 0.5), (LABELS[:3], 1.0), (jnp.int32(3), 0.0),
])
def test_cond_of_another_batch_size_is_named_with_both_sizes(cond, drop):
    shape = re.escape(str(jnp.shape(cond)))
    with pytest.raises(ValueError, match=rf"cond must have leading dimension B=4 .*got shape {shape}"):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), cond, cond_drop_prob=drop, null_cond=0)


def test_a_pytree_cond_leaf_of_another_batch_size_is_named_by_its_path():
    cond = {"label": LABELS[:4], "feature": jnp.zeros((5, 3))}
    with pytest.raises(ValueError, match=r"cond\['feature'\] must have leading dimension B=4"):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), cond)


def dict_denoiser(params, x, sigma, cond):
    """cond_denoiser's label plus the one-hot row's class + 1: 0 exactly when both leaves were dropped."""
    value = cond["label"] + cond["one_hot"] @ jnp.arange(1, 9, dtype=jnp.float32)
    return jnp.broadcast_to(value.astype(x.dtype)[:, None], x.shape)


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_label_dropout_over_a_pytree_cond_drops_every_leaf_of_the_dropped_samples(p):
    cond = {"label": LABELS, "one_hot": jax.nn.one_hot(LABELS, 8)}
    null = {"label": 0, "one_hot": jnp.zeros(8)}
    losses = kj.edm_loss(dict_denoiser, None, jnp.zeros((BATCH, 2)), DROP_KEY, cond, cond_drop_prob=p,
                         null_cond=null)
    np.testing.assert_array_equal(dropped(losses), dropped(label_losses(LABELS, 0, p)))
    traced = jax.jit(lambda q: kj.edm_loss(dict_denoiser, None, jnp.zeros((BATCH, 2)), DROP_KEY, cond,
                                           cond_drop_prob=q, null_cond=null))(p)
    np.testing.assert_allclose(traced, losses, rtol=1e-5)


@pytest.mark.parametrize("null_cond, match", [
    (0, "null_cond must have the pytree structure of cond"),
    ({"label": 0}, "null_cond must have the pytree structure of cond"),
    ({"label": 0, "one_hot": jnp.zeros(7)}, r"null_cond\['one_hot'\] must be one sample of cond\['one_hot"),
])
def test_a_null_cond_that_does_not_fit_a_pytree_cond_is_refused(null_cond, match):
    cond = {"label": LABELS[:4], "one_hot": jax.nn.one_hot(LABELS[:4], 8)}
    with pytest.raises(ValueError, match=match):
        kj.edm_loss(dict_denoiser, None, SMALL, jax.random.key(0), cond, cond_drop_prob=0.5,
                    null_cond=null_cond)


@pytest.mark.parametrize("p, error, match", [
    ([0.1], TypeError, r"cond_drop_prob must be a real number \(in \[0, 1\]\)"),
    ("0.1", TypeError, "cond_drop_prob must be a real number"),
    (True, TypeError, "cond_drop_prob must be a real number"),
    (jnp.full((4,), 0.1), ValueError, r"cond_drop_prob must be a scalar \(in \[0, 1\]\), got shape \(4,\)"),
    (float("inf"), ValueError, r"cond_drop_prob must be in \[0, 1\]"),
])
def test_a_cond_drop_prob_that_is_not_a_probability_is_refused_naming_it(p, error, match):
    with pytest.raises(error, match=match):
        kj.edm_loss(cond_denoiser, None, SMALL, jax.random.key(0), LABELS[:4], cond_drop_prob=p, null_cond=0)


@pytest.mark.parametrize("x, error, match", [
    (jnp.ones((4, 2), jnp.int32), TypeError, "x must be floating point"),
    (jnp.full((4, 2), jnp.nan), ValueError, "x must be finite"),
    (jnp.ones((4, 2)).at[2, 1].set(jnp.inf), ValueError, r"x must be finite: .* index \(2, 1\)"),
])
def test_x_that_is_not_finite_floating_point_is_refused(x, error, match):
    with pytest.raises(error, match=match):
        kj.edm_loss(cond_denoiser, None, x, jax.random.key(0), LABELS[:4])


def test_a_denoiser_of_the_wrong_shape_or_arity_is_named():
    with pytest.raises(ValueError, match=r"apply_fn must return D of x's shape \(4, 2\), got shape \(4, 1\)"):
        kj.edm_loss(lambda p, x, s, c: x[:, :1], None, SMALL, jax.random.key(0))
    with pytest.raises(TypeError, match=r"apply_fn is called as apply_fn\(params, x, sigma, cond\)"):
        kj.edm_loss(lambda p, x, s: x, None, SMALL, jax.random.key(0))
