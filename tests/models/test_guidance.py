"""Guidance: w = 1 is the conditional denoiser bitwise, one network call of 2B rows, the
interval switches exactly at its edges, autoguidance with identical networks is the network,
and w is traced (a sweep does not recompile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
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


# Issue 16: bad Guidance fields are refused where built; a null_cond that does not fit cond is named.

@pytest.mark.parametrize("fields, error, match", [
    ({"scale": float("nan")}, ValueError, "scale must be finite"),
    ({"scale": float("inf")}, ValueError, "scale must be finite"),
    ({"scale": jnp.asarray([2.0, -np.inf])}, ValueError, "scale must be finite"),
    ({"scale": jnp.float32(np.nan)}, ValueError, "scale must be finite"),
    ({"scale": [1.0, 2.0]}, TypeError, "scale must be a real number or an array"),
    ({"scale": "2"}, TypeError, "scale must be a real number"),
    ({"scale": True}, TypeError, "scale must be a real number"),
    ({"sigma_lo": float("nan")}, ValueError, "sigma_lo must be finite"),
    ({"sigma_lo": -1.0}, ValueError, "sigma_lo must be >= 0"),
    ({"sigma_hi": float("nan")}, ValueError, "sigma_hi must not be NaN"),
    ({"sigma_hi": [1.0]}, TypeError, "sigma_hi must be a real number"),
    ({"sigma_lo": 3.0, "sigma_hi": 1.0}, ValueError, "sigma_lo must be <= sigma_hi"),
])
def test_bad_guidance_fields_are_refused_at_construction(fields, error, match):
    with pytest.raises(error, match=match):
        kj.Guidance(**fields)
    with pytest.raises(error, match=match):
        kj.Guidance().replace(**fields)


def test_traced_and_rebuilt_guidance_is_not_checked():
    # traced values pass (no host round-trip), and JAX's own rebuilding checks nothing
    assert bool(jnp.isnan(jax.jit(lambda s: kj.Guidance(s).weight(1.0))(jnp.float32(np.nan))))
    g = kj.Guidance(2.0, 0.5, 3.0)
    negated = jax.tree.map(lambda v: -jnp.asarray(v), g)
    assert float(negated.sigma_lo) == -0.5
    grads = jax.grad(lambda g: g.weight(1.0))(g)
    assert float(grads.scale) == 1.0 and isinstance(grads, kj.Guidance)
    weights = jax.vmap(lambda s: kj.Guidance(s, 0.5, 3.0).weight(1.0))(jnp.asarray([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(weights, [1.0, 2.0, 3.0])
    assert jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(g)[0][0]) == ".scale"
    assert serialization.from_state_dict(kj.Guidance(), serialization.to_state_dict(g)) == g


@pytest.mark.parametrize("null, cond, error, match", [
    (jnp.zeros((4,), jnp.int32), COND, ValueError,
     r"null_cond must be one sample of cond \(no batch dimension\): shape \(4,\) does not broadcast to \(\)"),
    (0.5, COND, TypeError, "null_cond has dtype float32, which does not fit cond's int32"),
    ({"label": NULL}, COND, ValueError, r"null_cond must have the pytree structure of cond: null_cond is "
     r"PyTreeDef\(\{'label': \*\}\), cond is PyTreeDef\(\*\)"),
    ({"label": NULL, "style": jnp.zeros(3)}, {"label": COND, "style": jnp.zeros((4, 2))}, ValueError,
     r"null_cond\['style'\] must be one sample of cond\['style'\].*\(3,\) does not broadcast to \(2,\)"),
    (NULL, None, ValueError, "null_cond must have the pytree structure of cond"),
    (NULL, COND[:3], ValueError, r"cond must have leading dimension B=4 .* got shape \(3,\)"),
])
def test_a_null_cond_that_does_not_fit_cond_is_named(null, cond, error, match):
    guided = kj.classifier_free_guidance(lambda p, x, s, c: x, null)
    with pytest.raises(error, match=match):
        guided((PARAMS, kj.Guidance(2.0)), X, jnp.float32(0.3), cond)
    with pytest.raises(error, match=match):  # shapes and structures are checked at trace time too
        jax.jit(guided)((PARAMS, kj.Guidance(2.0)), X, jnp.float32(0.3), cond)


def test_a_null_cond_that_fits_is_accepted_in_any_form():
    fn = lambda p, x, s, c: x * (1 + c["w"].reshape(-1, 1))  # noqa: E731
    cond = {"w": jnp.asarray([0.1, 0.2, 0.3, 0.4])}
    outs = [kj.classifier_free_guidance(fn, {"w": null})((None, kj.Guidance(2.0)), X, jnp.float32(0.3), cond)
            for null in (0, 0.0, np.float64(0.0), jnp.zeros(()))]  # an int null for float features is fine
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("params, match", [
    (None, r"got NoneType"),
    ((PARAMS,), r"got a tuple of 1"),
    ((PARAMS, PARAMS, kj.Guidance(2.0)), r"got a tuple of 3"),
    ([PARAMS, {"scale": 2.0}], r"ending in a dict where the Guidance belongs"),
])
def test_params_of_another_form_are_named(params, match):
    guided = kj.classifier_free_guidance(_net, NULL)
    with pytest.raises(TypeError, match=r"params must be \(net_params, kj.Guidance\(...\)\) .*" + match):
        guided(params, X, jnp.float32(0.3), COND)
    auto = kj.autoguidance(_net, _net)
    with pytest.raises(TypeError, match=r"params must be \(main_params, guide_params, kj.Guidance"):
        auto((PARAMS, kj.Guidance(2.0)), X, jnp.float32(0.3), COND)
    with pytest.raises(TypeError, match="guide_fn is called as"):
        kj.autoguidance(_net, lambda p, x: x)
