"""log_likelihood: Gaussian closed forms, Hutchinson's estimator, k-diffusion's peer, jit/vmap, checks."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj
from karras_jax.analytic import GaussianData, default_mixture
from karras_jax.likelihood import bits_per_dim, log_likelihood

S, SIGMA_MIN, SIGMA_MAX = 0.5, 0.01, 80.0
MEAN = jnp.asarray([0.5, -1.0, 0.25])
DIMS = 3


def _state(n: int, sigma_min: float = SIGMA_MIN) -> kj.KarrasVeState:
    return kj.set_timesteps(kj.KarrasVeConfig(sigma_min=sigma_min, sigma_max=SIGMA_MAX), n, "karras")


def _log_normal(y: jax.Array, mean: jax.Array, var: float) -> jax.Array:
    return -0.5 * jnp.sum((y - mean) ** 2, -1) / var - 0.5 * y.shape[-1] * jnp.log(2 * jnp.pi * var)


def _gaussian_case(mean: jax.Array) -> tuple[GaussianData, jax.Array, jax.Array, jax.Array]:
    """Data, 6 points, their closed-form log density at sigma_min, and the ODE's exact answer.

    The ODE's exact answer differs from the density by the prior's mismatch at the top:
    the flow carries x to x_T = mu + (x - mu) sqrt((s^2 + sigma_max^2) / (s^2 + sigma_min^2)),
    whose density under the model is N(mu, (s^2 + sigma_max^2) I), scored by N(0, sigma_max^2 I).
    """
    data = GaussianData(mean=mean, std=jnp.asarray(S))
    x = data.sample(jax.random.key(1), 6, DIMS)
    var = S**2 + SIGMA_MIN**2
    closed = _log_normal(x, mean, var)
    x_top = mean + (x - mean) * jnp.sqrt((S**2 + SIGMA_MAX**2) / var)
    ode = closed + _log_normal(x_top, 0.0, SIGMA_MAX**2) - _log_normal(x_top, mean, S**2 + SIGMA_MAX**2)
    return data, x, closed, ode


_run = jax.jit(log_likelihood, static_argnums=0, static_argnames=("trace", "probes", "probe", "solver"))


def _errors(solver: str, ns: tuple[int, ...]) -> list[float]:
    data, x, _, ode = _gaussian_case(MEAN)
    return [float(jnp.max(jnp.abs(_run(data.denoise, x, _state(n), solver=solver) - ode))) / DIMS for n in ns]


def test_gaussian_matches_the_closed_form_within_1e_3_nats_per_dim():
    data, x, closed, ode = _gaussian_case(MEAN * 0.01)  # centred data: the prior's mismatch is negligible
    assert float(jnp.max(jnp.abs(ode - closed))) / DIMS < 1e-4
    ll = log_likelihood(data.denoise, x, _state(256))
    assert ll.shape == (6,)
    np.testing.assert_array_less(np.abs(np.asarray(ll - closed)) / DIMS, 1e-3)


def test_the_prior_mismatch_is_first_order_in_the_mean_over_sigma_max():
    # With mu ~ 1 the top's N(0, sigma_max^2) misjudges x_T by ~ mu . z / sigma_max nats: above 1e-3 per
    # dim for some points, which is why the accuracy test below compares with the ODE's exact answer.
    data, x, closed, ode = _gaussian_case(MEAN)
    assert float(jnp.max(jnp.abs(ode - closed))) / DIMS > 1e-3
    ll = log_likelihood(data.denoise, x, _state(256))
    np.testing.assert_array_less(np.abs(np.asarray(ll - ode)) / DIMS, 1e-3)


def test_heun_converges_at_second_order_and_euler_at_first():
    heun = _errors("heun", (32, 64, 128))
    assert heun[0] < 0.1 and heun[2] < 5e-3, heun
    assert all(a / b > 3.0 for a, b in zip(heun, heun[1:], strict=False)), heun
    euler = _errors("euler", (64, 128, 256))
    assert all(1.6 < a / b < 2.5 for a, b in zip(euler, euler[1:], strict=False)), euler
    assert euler[-1] > heun[-1]


def test_rademacher_probes_are_exact_for_an_isotropic_jacobian():
    # For N(mu, s^2 I) data the Jacobian of the drift is c(sigma) I, and v^T (c I) v = c d for v in {-1, 1}^d.
    data, x, _, _ = _gaussian_case(MEAN)
    state = _state(32)
    exact = _run(data.denoise, x, state)
    hutch = _run(data.denoise, x, state, jax.random.key(3), trace="hutchinson", probes=2)
    np.testing.assert_allclose(np.asarray(hutch), np.asarray(exact), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_agrees_with_the_exact_trace_within_3_standard_errors(probe):
    mixture = default_mixture()
    x = mixture.sample(jax.random.key(0), 4)
    state = _state(24)
    exact = log_likelihood(mixture.denoise, x, state)
    keys = jax.random.split(jax.random.key(7), 256)
    one_probe = jax.vmap(lambda k: log_likelihood(mixture.denoise, x, state, k, trace="hutchinson",
                                                  probe=probe))(keys)  # (256, 4)
    mean, stderr = jnp.mean(one_probe, 0), jnp.std(one_probe, 0, ddof=1) / jnp.sqrt(256.0)
    assert bool(jnp.all(stderr > 1e-4)), stderr  # the mixture's Jacobian is not isotropic: real noise
    np.testing.assert_array_less(np.abs(np.asarray(mean - exact)), 3 * np.asarray(stderr))
    many = log_likelihood(mixture.denoise, x, state, jax.random.key(8), trace="hutchinson", probes=64,
                          probe=probe)
    stderr_64 = jnp.std(one_probe, 0, ddof=1) / jnp.sqrt(64.0)  # 64 probes in one call
    np.testing.assert_array_less(np.abs(np.asarray(many - exact)), 3 * np.asarray(stderr_64))


def _torch_mixture(mixture, torch):
    """The mixture's exact denoiser in float64 torch, for k-diffusion (sigma is a (B,) tensor)."""
    w, mu, s = (torch.tensor(np.asarray(a, np.float64)) for a in (mixture.weights, mixture.means,
                                                                  mixture.stds))

    def denoise(x, sigma):
        sig2 = sigma[:, None] ** 2  # (B, 1)
        var = s**2 + sig2  # (B, K)
        sq = ((x[:, None, :] - mu) ** 2).sum(-1)  # (B, K)
        resp = torch.softmax(torch.log(w) - 0.5 * sq / var - 0.5 * x.shape[-1] * torch.log(var), -1)
        per = ((s**2)[:, None] * x[:, None, :] + sig2[..., None] * mu) / var[..., None]  # (B, K, D)
        return (resp[..., None] * per).sum(1)

    return denoise


def test_matches_k_diffusions_log_likelihood_on_the_mixture():
    from kdiffusion import sampling

    k_diffusion_sampling = sampling()
    import torch

    mixture = default_mixture()
    x = mixture.sample(jax.random.key(2), 5)
    denoise = _torch_mixture(mixture, torch)
    xt = torch.tensor(np.asarray(x, np.float64))

    # k-diffusion draws one Rademacher probe v; with v fixed, v = (1, 1) and (1, -1) average to the trace.
    def peer(signs):
        bits = torch.tensor(signs, dtype=torch.float64).expand_as(xt).clone()
        with mock.patch.object(torch, "randint_like", lambda like, high: bits.to(like.dtype)):
            ll, _ = k_diffusion_sampling.log_likelihood(denoise, xt, 0.01, SIGMA_MAX, atol=1e-8, rtol=1e-8)
        return ll.numpy()

    reference = 0.5 * (peer([1.0, 1.0]) + peer([1.0, 0.0]))
    ours = np.asarray(log_likelihood(mixture.denoise, x, _state(256)))
    np.testing.assert_allclose(ours, reference, atol=1e-2, rtol=0)
    assert np.ptp(reference) > 0.5  # distinct points, distinct densities: the comparison has content


def test_jit_and_vmap_agree_with_the_eager_call():
    data = GaussianData(mean=jnp.zeros((2, 2)), std=jnp.asarray(S))
    x = S * jax.random.normal(jax.random.key(4), (3, 5, 2, 2))  # 3 batches of 5 samples of shape (2, 2)
    state = _state(16)
    eager = jnp.stack([log_likelihood(data.denoise, b, state) for b in x])
    mapped = jax.jit(jax.vmap(lambda b: log_likelihood(data.denoise, b, state)))(x)
    assert mapped.shape == (3, 5)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=1e-5, atol=1e-4)
    traced_state = jax.jit(lambda s: log_likelihood(data.denoise, x[0], s))(state)
    np.testing.assert_allclose(np.asarray(traced_state), np.asarray(eager[0]), rtol=1e-5, atol=1e-4)
    flat = GaussianData(mean=jnp.zeros(4), std=jnp.asarray(S))
    np.testing.assert_allclose(np.asarray(log_likelihood(flat.denoise, x[0].reshape(5, 4), state)),
                               np.asarray(eager[0]), rtol=1e-5, atol=1e-4)


def test_cond_reaches_the_denoiser():
    centred, shifted = (GaussianData(mean=jnp.full(2, m), std=jnp.asarray(S)) for m in (0.0, 1.0))
    x, cond = jnp.asarray([[0.5, 1.5], [1.0, 0.2]]), jnp.ones((2, 2))
    with_cond = log_likelihood(lambda y, sigma, c: centred.denoise(y - c, sigma) + c, x, _state(16),
                               cond=cond)
    direct = log_likelihood(lambda y, sigma, c: shifted.denoise(y, sigma), x, _state(16))
    np.testing.assert_allclose(np.asarray(with_cond), np.asarray(direct), rtol=1e-5, atol=1e-4)
    assert float(jnp.max(jnp.abs(with_cond - log_likelihood(centred.denoise, x, _state(16))))) > 0.1


def test_bits_per_dim():
    np.testing.assert_allclose(np.asarray(bits_per_dim(jnp.asarray([-np.log(2.0) * 6, 0.0]), 3)), [2.0, 0.0],
                               atol=1e-6)
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(1.0, 0)


_GOOD = dict(denoise_fn=lambda x, sigma, cond: x, x=jnp.zeros((2, 3)))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(trace="hutch"), ValueError, "trace"),
    (dict(trace=1), TypeError, "trace"),
    (dict(probe="normal", trace="hutchinson", key=jax.random.key(0)), ValueError, "probe"),
    (dict(probes=0, trace="hutchinson", key=jax.random.key(0)), ValueError, "probes"),
    (dict(probes=True), ValueError, "probes"),
    (dict(trace="hutchinson"), ValueError, "key"),
    (dict(trace="hutchinson", key=jax.random.split(jax.random.key(0), 2)), ValueError, "key"),
    (dict(trace="hutchinson", key="seed"), TypeError, "key"),
    (dict(solver="dpmpp_2m"), ValueError, "solver"),
    (dict(x=jnp.zeros(3)), ValueError, "x must have shape"),
    (dict(x=jnp.zeros((2, 3), jnp.int32)), ValueError, "floating"),
    (dict(x=jnp.full((2, 3), jnp.nan)), ValueError, "x must be finite"),
    (dict(denoise_fn=lambda x: x), TypeError, "denoise_fn"),
    (dict(denoise_fn=lambda x, sigma, cond: x[:, :2]), ValueError, "denoise_fn must return"),
    (dict(cond=jnp.zeros(3)), ValueError, "cond"),
    (dict(state="state"), TypeError, "state"),
    (dict(state=kj.set_timesteps(kj.KarrasVeConfig(), 4, "flow")), ValueError, "flow"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    call = {**_GOOD, "state": _state(4), **kwargs}
    with pytest.raises(error, match=match):
        log_likelihood(call.pop("denoise_fn"), call.pop("x"), call.pop("state"), **call)
