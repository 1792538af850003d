"""With churn on, the samples of a Gaussian mixture have its mean, covariance and component
weights within sampling error (convergence orders: tests/solvers/)."""

import jax
import numpy as np
from sampler_utils import edm_config, keys_for

import karras_jax as kj
from karras_jax.analytic import default_mixture


def test_mixture_with_churn_matches_mean_covariance_and_weights():
    mixture = default_mixture()
    cfg = edm_config(s_churn=40.0)
    state = kj.set_timesteps(cfg, 32, "karras")
    n = 4096
    keys = keys_for(101, n)

    # 4096 seeds, vmapped one at a time: each sample from its own key.
    @jax.jit
    def generate(keys):
        return jax.vmap(lambda k: kj.sample(mixture.denoise, k[None], state, cfg, (2,))[0])(keys)

    samples = np.asarray(generate(keys), np.float64)
    assert samples.shape == (n, 2) and np.all(np.isfinite(samples))

    mean = np.asarray(mixture.mean(), np.float64)
    cov = np.asarray(mixture.covariance(), np.float64)
    # Standard errors of the estimators, from a large exact sample of the true mixture.
    exact = np.asarray(mixture.sample(jax.random.key(999), 200_000), np.float64)
    centred = exact - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = products.std(0) / np.sqrt(n)

    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * se_mean)
    np.testing.assert_array_less(np.abs(np.cov(samples.T, bias=True) - cov), 5 * se_cov)

    # Mean and covariance alone would not tell a mixture from a Gaussian: the fraction of
    # samples nearest to each (well separated) component matches its weight.
    means = np.asarray(mixture.means, np.float64)
    nearest = np.argmin(np.sum((samples[:, None, :] - means) ** 2, axis=-1), axis=-1)
    freq = np.bincount(nearest, minlength=len(means)) / n
    exact_nearest = np.argmin(np.sum((exact[:, None, :] - means) ** 2, axis=-1), axis=-1)
    expected = np.bincount(exact_nearest, minlength=len(means)) / len(exact)
    se_freq = np.sqrt(expected * (1 - expected) / n)
    np.testing.assert_array_less(np.abs(freq - expected), 5 * se_freq)
