"""Guidance: w = 1 is the conditional denoiser bitwise, one network call of 2B rows, the
interval switches exactly at its edges, autoguidance with identical networks is the network,
and w is traced (a sweep does not recompile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import edm_config, keys_for

import karras_jax as kj

NULL = 3  # the null class


def _net(params, x, sigma, cond):
    """A toy class-conditional denoiser: shrink towards a per-class mean."""
    means = params[cond]  # (B, dim)
    return (x + sigma**2 * means) / (1 + sigma**2)


PARAMS = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.0, 0.0]])
X = jax.random.normal(jax.random.key(0), (4, 2)) * 2
COND = jnp.asarray([0, 1, 2, 0])


def test_w_one_is_the_conditional_denoiser_bitwise():
    guided = kj.classifier_free_guidance(_net, NULL)
    out = guided((PARAMS, kj.Guidance(1.0)), X, jnp.float32(0.7), COND)
    np.testing.assert_array_equal(out, _net(PARAMS, X, jnp.float32(0.7), COND))


def test_the_formula_and_one_batched_call():
    calls = []

    def counting(params, x, sigma, cond):
        calls.append(x.shape)
        return _net(params, x, sigma, cond)

    guided = kj.classifier_free_guidance(counting, NULL)
    sigma = jnp.float32(0.7)
    out = guided((PARAMS, kj.Guidance(2.5)), X, sigma, COND)
    assert calls == [(8, 2)]  # conditional and unconditional rows in one call
    d_c = _net(PARAMS, X, sigma, COND)
    d_u = _net(PARAMS, X, sigma, jnp.full((4,), NULL))
    np.testing.assert_allclose(out, d_u + 2.5 * (d_c - d_u), rtol=1e-6, atol=1e-6)


def test_the_interval_switches_exactly_at_its_edges():
    guided = kj.classifier_free_guidance(_net, NULL)
    g = kj.Guidance(3.0, sigma_lo=0.5, sigma_hi=2.0)
    below, above = np.nextafter(np.float32(0.5), 0), np.nextafter(np.float32(2.0), 3)
    for sigma, inside in ((0.5, True), (2.0, True), (1.0, True), (below, False), (above, False)):
        sigma = jnp.float32(sigma)
        out = guided((PARAMS, g), X, sigma, COND)
        conditional = _net(PARAMS, X, sigma, COND)
        assert bool(jnp.array_equal(out, conditional)) != inside


def test_autoguidance_with_identical_networks_is_the_network():
    guided = kj.autoguidance(_net, _net)
    out = guided((PARAMS, PARAMS, kj.Guidance(4.0)), X, jnp.float32(0.3), COND)
    np.testing.assert_array_equal(out, _net(PARAMS, X, jnp.float32(0.3), COND))
    weak = PARAMS * 0.5
    out = guided((PARAMS, weak, kj.Guidance(2.0)), X, jnp.float32(0.3), COND)
    d_m, d_g = _net(PARAMS, X, 0.3, COND), _net(weak, X, 0.3, COND)
    np.testing.assert_allclose(out, d_g + 2.0 * (d_m - d_g), rtol=1e-6, atol=1e-6)


def test_a_sweep_over_w_reuses_the_compiled_sampler():
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 6, "karras")
    sampler = kj.make_sampler(kj.classifier_free_guidance(_net, NULL), state, cfg, (2,))
    keys = keys_for(0, 4)
    outs = [sampler((PARAMS, kj.Guidance(w, 0.1, 10.0)), keys, COND) for w in (1.0, 2.0, 4.0)]
    assert sampler.jitted._cache_size() == 1
    assert not np.allclose(outs[0], outs[2])


def test_bad_guidance_is_named():
    guided = kj.classifier_free_guidance(_net, NULL)
    with pytest.raises(TypeError, match=r"params must be \(net_params, kj.Guidance"):
        guided((PARAMS, 2.0), X, jnp.float32(0.3), COND)
    with pytest.raises(ValueError, match="sigma_lo must be <= sigma_hi"):
        guided((PARAMS, kj.Guidance(2.0, 3.0, 1.0)), X, jnp.float32(0.3), COND)
