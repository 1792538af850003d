"""Self-checks of the float64 oracle against closed forms, so the reference itself is trusted."""

import numpy as np
import oracle
import pytest

MU, S = 0.7, 0.4


def _ode_error(n, heun):
    sigmas = oracle.with_trailing_zero(oracle.karras_sigmas(0.002, 80.0, n))
    x0 = 80.0 * np.linspace(-2.0, 2.0, 9)
    got = oracle.algorithm2(oracle.gaussian_denoiser(MU, S), x0, sigmas, 0.0, 0.0, np.inf,
                            [np.zeros_like(x0)] * n, heun=heun)
    return np.abs(got - oracle.gaussian_ode_solution(x0, MU, S, sigmas[0])).max()


def test_heun_is_second_order_and_euler_first_order():
    heun = [_ode_error(n, True) for n in (16, 32, 64)]
    euler = [_ode_error(n, False) for n in (16, 32, 64)]
    # error ratio per doubling of N: about 4 for Heun (2nd order), 2 for Euler (1st order)
    np.testing.assert_allclose(np.array(heun[:-1]) / heun[1:], 4.0, rtol=0.25)
    np.testing.assert_allclose(np.array(euler[:-1]) / euler[1:], 2.0, rtol=0.25)
    assert heun[-1] < euler[-1] / 10


def test_gamma_and_churn_follow_algorithm_2():
    assert oracle.gamma(80.0, 0.05, 50.0, 50, 1.0) == pytest.approx(np.sqrt(2) - 1)
    assert oracle.gamma(1.0, 0.05, 50.0, 10, 50.0) == pytest.approx(0.1)
    assert oracle.gamma(1.0, 0.05, 50.0, 10, 50.1) == 0.0
    x_hat, sigma_hat = oracle.add_noise_to_input(np.zeros(3), 2.0, np.sqrt(2) - 1, np.ones(3))
    assert sigma_hat == pytest.approx(2.0 * np.sqrt(2))
    np.testing.assert_allclose(x_hat, 2.0)  # sqrt(8 - 4) = 2


def test_diffusers_levels_quoted_in_algorithm_md():
    np.testing.assert_allclose(oracle.diffusers_sigmas(0.02, 100.0, 5),
                               [1e4, 141.4214, 2.0, 0.028284, 4e-4], rtol=1e-5)
    np.testing.assert_allclose(oracle.ve_sigmas(0.02, 100.0, 5) ** 2,
                               oracle.diffusers_sigmas(0.02, 100.0, 5))
