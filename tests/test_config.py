"""KarrasVeConfig: diffusers' defaults, an immutable pytree, traced leaves, and its checks."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import karras_jax as kj

DEFAULTS = dict(
    sigma_min=0.02, sigma_max=100.0, s_noise=1.007, s_churn=80.0, s_min=0.05, s_max=50.0
)


def test_defaults_are_diffusers_defaults():
    cfg = kj.KarrasVeConfig()
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} == DEFAULTS
    assert cfg.to_dict() == DEFAULTS


def test_config_is_immutable_and_replace_returns_a_new_config():
    cfg = kj.KarrasVeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.s_churn = 0.0  # type: ignore[misc]
    other = cfg.replace(s_churn=0.0)
    assert other.s_churn == 0.0 and cfg.s_churn == 80.0


def test_every_hyperparameter_is_a_traced_pytree_leaf():
    leaves, treedef = jax.tree_util.tree_flatten(kj.KarrasVeConfig())
    assert leaves == list(DEFAULTS.values())
    rebuilt = jax.tree_util.tree_unflatten(treedef, [jnp.float32(v) for v in leaves])
    assert isinstance(rebuilt, kj.KarrasVeConfig)


def test_config_passes_through_jit_as_an_argument():
    @jax.jit
    def churn_over_n(cfg):
        return cfg.s_churn / 10

    assert float(churn_over_n(kj.KarrasVeConfig(s_churn=40.0))) == pytest.approx(4.0)


def test_vmap_over_s_churn_via_replace():
    cfg = kj.KarrasVeConfig()
    out = jax.vmap(lambda c: cfg.replace(s_churn=c).s_churn * 2)(jnp.arange(3.0))
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])


def test_traced_values_are_not_checked_inside_jit():
    # A negative s_churn would fail eagerly; traced it passes through (no host round-trip).
    out = jax.jit(lambda c: kj.KarrasVeConfig(s_churn=c).s_churn)(-1.0)
    assert float(out) == -1.0


def test_to_dict_refuses_non_scalar_values():
    with pytest.raises(ValueError, match="s_churn"):
        kj.KarrasVeConfig(s_churn=jnp.array([1.0, 2.0])).to_dict()


# --- one test per validation rule ----------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_raise_value_error_naming_the_field(name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be finite"):
        kj.KarrasVeConfig(**{name: bad})


def test_non_finite_array_value_raises():
    with pytest.raises(ValueError, match="s_noise must be finite"):
        kj.KarrasVeConfig(s_noise=np.array(np.nan))


@pytest.mark.parametrize("bad", [10**400, -(10**400)])
def test_ints_too_large_for_a_float_are_not_finite(bad):
    with pytest.raises(ValueError, match="s_max must be finite"):
        kj.KarrasVeConfig(s_max=bad)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_sigma_min_must_be_positive(bad):
    with pytest.raises(ValueError, match=r"sigma_min must be > 0"):
        kj.KarrasVeConfig(sigma_min=bad)


@pytest.mark.parametrize("bad", [0.02, 0.01])
def test_sigma_max_must_exceed_sigma_min(bad):
    with pytest.raises(ValueError, match=r"sigma_max must be > sigma_min"):
        kj.KarrasVeConfig(sigma_min=0.02, sigma_max=bad)


def test_s_churn_must_be_non_negative():
    with pytest.raises(ValueError, match=r"s_churn must be >= 0"):
        kj.KarrasVeConfig(s_churn=-1.0)
    kj.KarrasVeConfig(s_churn=0.0)  # the deterministic sampler is legal


def test_s_noise_must_be_non_negative():
    with pytest.raises(ValueError, match=r"s_noise must be >= 0"):
        kj.KarrasVeConfig(s_noise=-0.1)
    kj.KarrasVeConfig(s_noise=0.0)


def test_s_min_must_not_exceed_s_max():
    with pytest.raises(ValueError, match=r"s_min must be <= s_max"):
        kj.KarrasVeConfig(s_min=2.0, s_max=1.0)
    kj.KarrasVeConfig(s_min=1.0, s_max=1.0)  # a one-point window is legal


@pytest.mark.parametrize("bad", ["80", b"80", True, 1 + 2j, np.array(["a"])])
def test_non_real_values_raise_type_error_naming_the_field(bad):
    with pytest.raises(TypeError, match="s_churn"):
        kj.KarrasVeConfig(s_churn=bad)


@pytest.mark.parametrize("bad", [[80.0, -5.0], (1.0,), {"a": 1.0}])
def test_python_containers_are_rejected_naming_the_field(bad):
    # A list would otherwise slip past the range checks (s_churn=[80, -5] has a negative entry).
    with pytest.raises(TypeError, match="s_churn"):
        kj.KarrasVeConfig(s_churn=bad)


def test_placeholder_leaves_are_allowed_in_specs_but_not_in_arithmetic():
    # None leaves make a config usable as a vmap in_axes / sharding spec ...
    spec = kj.KarrasVeConfig(None, None, None, 0, None, None)
    grid = kj.KarrasVeConfig().replace(s_churn=jnp.asarray([0.0, 40.0]))
    out = jax.vmap(lambda c: kj.churn_gamma(c, 10, 1.0), in_axes=(spec,))(grid)
    np.testing.assert_allclose(out, [0.0, math.sqrt(2) - 1], rtol=1e-6)
    # ... but a config whose values enter the arithmetic must hold numbers.
    with pytest.raises(TypeError, match="config.sigma_min"):
        kj.set_timesteps(kj.KarrasVeConfig(sigma_min=None), 5)
    with pytest.raises(TypeError, match="config.s_max"):
        kj.churn_gamma(kj.KarrasVeConfig(s_max=None), 5, 1.0)


def test_checked_where_users_build_it_not_on_pytree_rebuilds(monkeypatch):
    # JAX rebuilds a config on every tree_map / vmap / jit; those rebuilds check nothing.
    from karras_jax import config as config_module

    calls = []
    real = config_module._check_values
    monkeypatch.setattr(config_module, "_check_values", lambda c: calls.append(1) or real(c))
    cfg = kj.KarrasVeConfig(s_churn=3.0)
    grid = cfg.replace(s_churn=jnp.ones(3))
    spec = kj.KarrasVeConfig(None, None, None, 0, None, None)
    assert len(calls) == 3  # the constructors and replace()
    rebuilt = jax.tree_util.tree_map(lambda v: v * 2, cfg)
    jax.jit(lambda c: c.s_churn)(cfg)
    jax.vmap(lambda c: c.s_churn, in_axes=(spec,))(grid)
    assert len(calls) == 3  # rebuilds by JAX check nothing
    assert isinstance(rebuilt, kj.KarrasVeConfig) and rebuilt.s_churn == 6.0
    with pytest.raises(ValueError, match="s_churn must be >= 0"):
        cfg.replace(s_churn=-1.0)


def test_flax_serialization_round_trips():
    from flax import serialization

    cfg = kj.KarrasVeConfig(sigma_max=80.0, s_churn=3.0)
    data = serialization.to_bytes(cfg)
    back = serialization.from_bytes(kj.KarrasVeConfig(), data)
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("make", [lambda: kj.KarrasVeConfig(sigmamax=1.0),
                                  lambda: kj.KarrasVeConfig().replace(schurn=1.0)])
def test_unknown_fields_list_the_valid_ones(make):
    with pytest.raises(TypeError, match="no field 's.*'; the fields are sigma_min, sigma_max, s_noise, "
                                        "s_churn, s_min, s_max"):
        make()
