"""Preconditioning: every coefficient of Table 1 against float64, and exact networks for
Gaussian data wrapped by each column reproduce the exact denoiser (and sample it)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from sampler_utils import edm_config, keys_for

import karras_jax as kj
from karras_jax.analytic import GaussianData

KINDS = ("edm", "vp", "ve", "iddpm")
SIGMAS = (0.002, 0.05, 0.7, 1.0, 3.0, 80.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_coefficients_match_table_1(kind, sigma):
    got = [float(c) for c in kj.precondition_coefficients(sigma, kind)]
    want = oracle.precondition(sigma, kind)
    np.testing.assert_allclose(got[:3], want[:3], rtol=2e-6)
    np.testing.assert_allclose(got[3], want[3], rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kind, constants", [("edm", {"sigma_data": 1.3}),
                                             ("vp", {"beta_d": 10.0, "beta_min": 0.5, "M": 500}),
                                             ("iddpm", {"C1": 0.01, "C2": 0.02, "M": 200})])
def test_constants_override_the_defaults(kind, constants):
    got = [float(c) for c in kj.precondition_coefficients(0.9, kind, **constants)]
    np.testing.assert_allclose(got, oracle.precondition(0.9, kind, **constants), rtol=2e-6, atol=2e-6)


def test_iddpm_levels_follow_the_recursion():
    np.testing.assert_allclose(kj.iddpm_levels(), oracle.iddpm_u(), rtol=1e-12)
    u = kj.iddpm_levels(M=1000)
    assert u[-1] == 0 and np.all(np.diff(u) < 0)
    # c_noise is M - 1 - the index of the nearest u_j, exactly at the levels themselves.
    for j in (0, 10, 500, 998):
        assert float(kj.precondition_coefficients(u[j], "iddpm")[3]) == 999 - j


def test_c_noise_is_float32_whatever_the_network_dtype():
    seen = []

    def net(params, x_in, c_noise, cond):
        seen.append((x_in.dtype, c_noise.dtype, c_noise.shape))
        return jnp.zeros_like(x_in)

    x = jnp.ones((3, 2), jnp.bfloat16)
    assert kj.precondition(net, "vp")(None, x, jnp.float32(2.0), None).dtype == jnp.bfloat16
    kj.precondition(net, "edm", sigma_shape="batch")(None, x, jnp.float32(2.0), None)
    assert seen == [(jnp.bfloat16, jnp.float32, ()), (jnp.bfloat16, jnp.float32, (3,))]


def _exact_f(data: GaussianData, kind: str):
    """The network F that makes the preconditioned D exact for N(mu, s^2 I) data."""
    def sigma_of(c_noise):
        if kind == "edm":
            return jnp.exp(4 * c_noise)
        if kind == "ve":
            return 2 * jnp.exp(c_noise)
        if kind == "vp":
            t = c_noise / 999
            return jnp.sqrt(jnp.expm1(19.9 * t**2 / 2 + 0.1 * t))
        return jnp.asarray(kj.iddpm_levels(), jnp.float32)[999 - c_noise.astype(jnp.int32)]

    def net(params, x_in, c_noise, cond):
        sigma = sigma_of(c_noise)
        c_skip, c_out, c_in, _ = kj.precondition_coefficients(sigma, kind)
        x = x_in / c_in
        return (data.denoise(x, sigma) - c_skip * x) / c_out

    return net


@pytest.mark.parametrize("kind", KINDS)
def test_an_exact_network_gives_the_exact_denoiser(kind):
    data = GaussianData(mean=jnp.asarray([0.5, -1.0]), std=jnp.asarray(0.7))
    apply_fn = kj.precondition(_exact_f(data, kind), kind)
    x = jax.random.normal(jax.random.key(0), (5, 2)) * 3.0
    levels = kj.iddpm_levels()[[30, 400, 900]] if kind == "iddpm" else (0.01, 0.8, 20.0)
    for sigma in levels:
        sigma = jnp.float32(sigma)
        np.testing.assert_allclose(apply_fn(None, x, sigma, None), data.denoise(x, sigma),
                                   rtol=2e-4, atol=2e-5)


def test_a_preconditioned_network_samples_the_data():
    data = GaussianData(mean=jnp.asarray([0.5, -1.0]), std=jnp.asarray(0.7))
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 32, "karras")
    sampler = kj.make_sampler(kj.precondition(_exact_f(data, "edm"), "edm"), state, cfg, (2,))
    x = np.asarray(sampler(None, keys_for(3, 4096)), np.float64)
    se = 0.7 / math.sqrt(4096)
    np.testing.assert_array_less(np.abs(x.mean(0) - [0.5, -1.0]), 5 * se)
    np.testing.assert_array_less(np.abs(x.std(0) - 0.7), 5 * 0.7 / math.sqrt(2 * 4096))


@pytest.mark.parametrize("call, error, match", [
    (lambda: kj.precondition_coefficients(1.0, "cosine"), ValueError, "kind must be one of"),
    (lambda: kj.precondition_coefficients(1.0, "edm", beta_d=1.0), TypeError, "sigma_data"),
    (lambda: kj.precondition_coefficients(1.0, "ve", sigma_data=1.0), TypeError, "takes the constants none"),
    (lambda: kj.precondition_coefficients(1.0, "edm", sigma_data=-1.0), ValueError, "sigma_data must be"),
    (lambda: kj.precondition_coefficients(1.0, "vp", M=10.5), TypeError, "M must be a positive int"),
    (lambda: kj.precondition(lambda p, x, c, k: x, "edm", sigma_shape="image"), ValueError, "sigma_shape"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kind", ["edm", "vp", "ve", "iddpm"])
@pytest.mark.parametrize("layout", [(3,), (3, 1, 1)])
def test_one_sigma_per_sample_equals_each_sample_at_its_own_scalar_sigma(kind, layout):
    seen = []

    def net(params, x_in, c_noise, cond):
        seen.append(c_noise.shape)
        return jnp.sin(x_in) * (1 + c_noise.reshape((-1,) + (1,) * (x_in.ndim - 1)) / 100)

    apply_fn = kj.precondition(net, kind)
    x = jax.random.normal(jax.random.key(0), (3, 2, 2))
    sigma = jnp.asarray([0.05, 1.0, 30.0])
    together = apply_fn(None, x, sigma.reshape(layout), None)
    assert seen[-1] == (3,)
    for i in range(3):
        np.testing.assert_allclose(together[i], apply_fn(None, x[i:i + 1], sigma[i], None)[0], rtol=1e-6)


def test_sigma_that_is_neither_scalar_nor_per_sample_is_refused():
    apply_fn = kj.precondition(lambda p, x_in, c_noise, cond: x_in, "edm")
    with pytest.raises(ValueError, match="one level per sample"):
        apply_fn(None, jnp.ones((3, 2)), jnp.ones((2,)), None)


# Issue 16: levels and constants out of range are refused where concrete, never turned into NaN.

@pytest.mark.parametrize("kind", ["edm", "vp", "ve", "iddpm"])
@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), jnp.float32(0.0),
                                   np.asarray([1.0, 0.0])])
def test_concrete_sigma_that_is_not_finite_and_positive_is_refused(kind, sigma):
    with pytest.raises(ValueError, match=r"sigma must be finite and > 0"):
        kj.precondition_coefficients(sigma, kind)


def test_the_message_shows_the_first_bad_level_and_where():
    with pytest.raises(ValueError, match=r"got -2.0 at index \(1,\)"):
        kj.precondition_coefficients(np.asarray([1.0, -2.0, 0.0]))
    with pytest.raises(TypeError, match="sigma must be a real number"):
        kj.precondition_coefficients("1.0")


def test_a_concrete_sigma_reaching_the_wrapper_is_refused_too():
    apply_fn = kj.precondition(lambda p, x_in, c_noise, cond: x_in, "edm")
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        apply_fn(None, jnp.ones((2, 2)), jnp.float32(0.0), None)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        apply_fn(None, jnp.ones((2, 2)), jnp.asarray([1.0, np.nan]), None)


def test_traced_sigma_is_not_checked_under_jit_vmap_or_grad():
    # no host round-trip: a traced 0 is computed with (its c_noise is -inf), not refused
    c_noise = jax.jit(lambda s: kj.precondition_coefficients(s)[3])(jnp.float32(0.0))
    assert float(c_noise) == -np.inf
    out = jax.vmap(lambda s: kj.precondition_coefficients(s, "ve")[1])(jnp.asarray([0.5, 2.0]))
    np.testing.assert_allclose(out, [0.5, 2.0])
    grad = jax.grad(lambda s: kj.precondition_coefficients(s, "edm")[0])(jnp.float32(1.0))
    np.testing.assert_allclose(grad, -2 * 0.25 / 1.25**2, rtol=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda: kj.precondition_coefficients(1.0, "edm", sigma_data=float("nan")), ValueError,
     "sigma_data must be finite and > 0"),
    (lambda: kj.precondition_coefficients(1.0, "edm", sigma_data=0.0), ValueError, "sigma_data must be"),
    (lambda: kj.precondition_coefficients(1.0, "vp", beta_d=float("inf")), ValueError, "beta_d must be"),
    (lambda: kj.precondition_coefficients(1.0, "vp", M=0), ValueError, "M must be"),
    (lambda: kj.precondition_coefficients(1.0, "iddpm", C1=2.0), ValueError, r"C1 must be in \(0, 1\]"),
    (lambda: jax.jit(lambda c: kj.precondition_coefficients(1.0, "iddpm", C1=c))(0.001), TypeError,
     "C1 and C2 must be concrete"),
    (lambda: kj.precondition(3, "edm"), TypeError, "net_fn must be callable"),
    (lambda: kj.precondition(lambda p, x: x, "edm"), TypeError, "net_fn is called as"),
])
def test_bad_constants_and_networks_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kind", [["edm"], None, {"edm": 1}, 3])
def test_a_kind_that_is_not_a_name_is_a_type_error_naming_kind_and_the_names(kind):
    match = r"kind must be one of the names \('edm', 'vp', 've', 'iddpm'\)"
    with pytest.raises(TypeError, match=match):
        kj.precondition_coefficients(1.0, kind)
    with pytest.raises(TypeError, match=match):
        kj.precondition(lambda p, x_in, c_noise, cond: x_in, kind)
    # the training losses share the check
    with pytest.raises(TypeError, match="kind must be one of the names"):
        kj.training_sigmas(jax.random.split(jax.random.key(0), 2), kind)
