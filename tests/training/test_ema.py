"""The weights' EMA: EDM2's power-function average, against its float64 recursion and the
width sigma_rel it is named by."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj


def sigma_rel_of(gamma):
    """EDM2, eq. 3: the relative width of the power-function profile t^gamma."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def exact_weights(num_updates, gamma):
    """w_t of theta_t in the average after T updates, from beta_t = (1 - 1/t)^(gamma + 1), in float64."""
    weights = np.zeros(num_updates)
    for t in range(1, num_updates + 1):
        beta = (1 - 1 / t) ** (gamma + 1)
        weights *= beta
        weights[t - 1] += 1 - beta
    return weights


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.27])
def test_ema_gamma_inverts_edm2s_sigma_rel_of_gamma(sigma_rel):
    gamma = kj.ema_gamma(sigma_rel)
    assert isinstance(gamma, float) and gamma > 0
    assert sigma_rel_of(gamma) == pytest.approx(sigma_rel, rel=1e-10)


def test_ema_gamma_of_0_05_is_16_97_and_of_0_10_is_6_94():
    # EDM2's eq. 3 (Karras et al. 2024)
    assert kj.ema_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert kj.ema_gamma(0.10) == pytest.approx(6.94, abs=0.005)


def test_a_wider_average_has_a_smaller_exponent():
    gammas = [kj.ema_gamma(s) for s in (0.01, 0.05, 0.1, 0.2)]
    assert gammas == sorted(gammas, reverse=True)


@pytest.mark.parametrize("sigma_rel", [0, -0.1, 0.29, 0.5, float("nan"), float("inf"), np.array([0.05, 0.1])])
def test_ema_gamma_rejects_a_bad_sigma_rel_naming_the_range(sigma_rel):
    with pytest.raises(ValueError, match=r"sigma_rel must be .*\(0, 1/sqrt\(12\) = 0.2887\)"):
        kj.ema_gamma(sigma_rel)


@pytest.mark.parametrize("sigma_rel", [True, "0.05", None, [0.05]])
def test_ema_gamma_rejects_a_sigma_rel_that_is_not_a_number_with_a_type_error(sigma_rel):
    with pytest.raises(TypeError, match="sigma_rel must be a real number"):
        kj.ema_gamma(sigma_rel)


@pytest.mark.parametrize("sigma_rel", [jnp.float32(0.05), jnp.asarray(0.05), np.float32(0.05),
                                       np.asarray(0.05)])
def test_ema_gamma_takes_a_concrete_numpy_or_jax_scalar(sigma_rel):
    assert kj.ema_gamma(sigma_rel) == pytest.approx(kj.ema_gamma(0.05), rel=1e-6)


def test_ema_gamma_of_a_traced_value_is_a_type_error_saying_why():
    with pytest.raises(TypeError, match="sigma_rel must be a concrete number"):
        jax.jit(kj.ema_gamma)(0.05)


@pytest.mark.parametrize("step", [0, -1, 1.5, float("nan"), jnp.arange(0, 3)])
def test_a_step_that_is_not_an_update_count_is_refused_not_a_nan_or_huge_average(step):
    params = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"step must be an integer >= 1"):
        kj.ema_update({"w": jnp.ones(3)}, params, step, 5.0)
    with pytest.raises(ValueError, match=r"step must be an integer >= 1"):
        kj.ema_decay(step, 5.0)


@pytest.mark.parametrize("gamma", [-2.0, float("nan"), float("inf")])
def test_a_negative_or_non_finite_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match=r"gamma must be >= 0"):
        kj.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 3, gamma)


def test_traced_steps_and_gammas_are_not_checked_and_arrays_of_valid_steps_pass():
    update = jax.jit(kj.ema_update)
    got = update({"w": jnp.ones(())}, {"w": jnp.zeros(())}, 3, 5.0)
    np.testing.assert_allclose(got["w"], (2 / 3) ** 6, rtol=1e-6)
    np.testing.assert_allclose(kj.ema_decay(jnp.arange(1, 4), 0.0), [0.0, 0.5, 2 / 3], rtol=1e-6)


def test_ema_and_params_of_other_shapes_are_refused_naming_the_leaf():
    with pytest.raises(ValueError, match=r"ema\['w'\] has shape \(3,\)"):
        kj.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(4)}, 2, 5.0)
    with pytest.raises(ValueError, match="same structure"):
        kj.ema_update({"w": jnp.ones(3)}, {"v": jnp.zeros(3)}, 2, 5.0)


def test_the_first_update_forgets_the_initial_average():
    for gamma in (0.0, 1.5, 6.94, 16.97):
        assert float(kj.ema_decay(1, gamma)) == 0.0
    params = {"w": jnp.asarray([1.5, -2.0, 3.25])}
    ema = kj.ema_update({"w": jnp.asarray([1e6, 7.0, -3.0])}, params, 1, kj.ema_gamma(0.05))
    np.testing.assert_array_equal(ema["w"], params["w"])


def test_ema_decay_is_one_minus_one_over_t_to_the_gamma_plus_one():
    t = np.array([1, 2, 3, 10, 100, 12345])
    for gamma in (0.0, 6.94, 16.97):
        got = kj.ema_decay(jnp.asarray(t, jnp.int32), gamma)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, (1 - 1 / t) ** (gamma + 1), rtol=1e-6, atol=1e-7)


update = jax.jit(kj.ema_update)


def test_ema_update_is_the_power_function_weighted_average_of_the_params_so_far():
    rng = np.random.default_rng(0)
    thetas = [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
              for _ in range(40)]
    gamma = kj.ema_gamma(0.1)
    ema = jax.tree_util.tree_map(jnp.zeros_like, thetas[0])
    for t, theta in enumerate(thetas, start=1):
        ema = update(ema, theta, t, gamma)
        weights = exact_weights(t, gamma)
        for name in ("w", "b"):
            want = np.tensordot(weights, np.stack([th[name] for th in thetas[:t]]).astype(np.float64), axes=1)
            np.testing.assert_allclose(ema[name], want, rtol=2e-5, atol=2e-6)


@functools.partial(jax.jit, static_argnums=0)
def weights_of_kj_ema(num_updates, gamma):
    """Each update's weight in kj's average, from averaging one-hot parameter vectors."""
    def body(ema, t):
        return kj.ema_update(ema, jax.nn.one_hot(t - 1, num_updates), t, gamma), None

    ema, _ = jax.lax.scan(body, jnp.zeros(num_updates), jnp.arange(1, num_updates + 1))
    return ema


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_the_average_covers_a_fraction_sigma_rel_of_the_run_whatever_its_length(sigma_rel):
    gamma = kj.ema_gamma(sigma_rel)
    for num_updates in (200, 1000):
        weights = np.asarray(weights_of_kj_ema(num_updates, gamma), np.float64)
        np.testing.assert_allclose(weights, exact_weights(num_updates, gamma), atol=1e-6)
        assert weights.sum() == pytest.approx(1, abs=1e-5)
        # weights ~ t^gamma: the profile's mean and std, relative to the run's length T
        fraction = np.arange(1, num_updates + 1) / num_updates
        mean = np.sum(weights * fraction)
        assert mean == pytest.approx((gamma + 1) / (gamma + 2), abs=1 / num_updates)
        assert math.sqrt(np.sum(weights * (fraction - mean) ** 2)) == pytest.approx(sigma_rel, rel=2e-3)


def test_ema_update_keeps_each_leafs_dtype_and_is_pure():
    ema = {"half": jnp.ones(3, jnp.bfloat16), "single": jnp.ones(3, jnp.float32)}
    params = {"half": jnp.zeros(3, jnp.bfloat16), "single": jnp.zeros(3, jnp.float32)}
    new = kj.ema_update(ema, params, 2, 1.0)  # beta_2 = (1/2)^2
    assert new["half"].dtype == jnp.bfloat16 and new["single"].dtype == jnp.float32
    np.testing.assert_array_equal(new["single"], np.full(3, 0.25, np.float32))
    np.testing.assert_array_equal(new["half"].astype(jnp.float32), np.full(3, 0.25, np.float32))
    np.testing.assert_array_equal(ema["single"], np.ones(3))  # the inputs are left as they were
    np.testing.assert_array_equal(params["single"], np.zeros(3))
