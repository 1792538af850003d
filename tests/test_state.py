"""set_timesteps and KarrasVeState: layout of the levels, static fields, and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj

CFG = kj.KarrasVeConfig()
RTOL = 1e-6
ORACLE = {
    "ve": oracle.ve_sigmas,
    "karras": oracle.karras_sigmas,
    "diffusers": oracle.diffusers_sigmas,
}


@pytest.mark.parametrize("name", list(ORACLE))
@pytest.mark.parametrize("n", [1, 4, 10])
def test_state_layout(name, n):
    state = kj.set_timesteps(CFG, n, name)
    levels = ORACLE[name](CFG.sigma_min, CFG.sigma_max, n)
    assert state.num_inference_steps == n and type(state.num_inference_steps) is int
    assert state.schedule_name == name
    # timesteps: int32 [N-1, ..., 0], diffusers' loop order.
    assert state.timesteps.dtype == jnp.int32
    np.testing.assert_array_equal(state.timesteps, np.arange(n)[::-1])
    # sigmas: sampling order with the trailing 0.
    assert state.sigmas.dtype == jnp.float32 and state.sigmas.shape == (n + 1,)
    np.testing.assert_allclose(state.sigmas, oracle.with_trailing_zero(levels), rtol=RTOL)
    assert float(state.sigmas[-1]) == 0.0
    # schedule[t] is the level at timestep t: ascending in t, schedule[N-1] the largest.
    assert state.schedule.shape == (n,)
    np.testing.assert_allclose(state.schedule, levels[::-1], rtol=RTOL)
    for i, t in enumerate(np.asarray(state.timesteps)):
        assert state.schedule[t] == state.sigmas[i]


def test_default_schedule_is_ve():
    state = kj.set_timesteps(CFG, 5)
    assert state.schedule_name == "ve"
    np.testing.assert_allclose(
        state.sigmas, [100.0, 11.892071, 1.4142135, 0.16817929, 0.02, 0.0], rtol=RTOL
    )


@pytest.mark.parametrize("name", ["ve", "karras"])
def test_init_noise_sigma_is_the_first_level(name):
    state = kj.set_timesteps(CFG, 6, name)
    assert state.init_noise_sigma.shape == ()
    assert float(state.init_noise_sigma) == float(state.sigmas[0])


def test_diffusers_init_noise_sigma_is_sigma_max_not_the_first_level():
    # diffusers starts from randn * sigma_max = 100 while its first level is t_0 = 1e4.
    state = kj.set_timesteps(CFG, 5, "diffusers")
    assert float(state.init_noise_sigma) == pytest.approx(100.0)
    assert float(state.sigmas[0]) == pytest.approx(1e4)


def test_karras_rho_keyword():
    state = kj.set_timesteps(CFG, 6, "karras", rho=3.0)
    np.testing.assert_allclose(
        state.sigmas[:-1], oracle.karras_sigmas(0.02, 100.0, 6, rho=3.0), rtol=RTOL
    )


def test_custom_sigmas():
    state = kj.set_timesteps(CFG, sigmas=[5.0, 1.0, 0.1])
    assert state.num_inference_steps == 3 and state.schedule_name == "custom"
    np.testing.assert_allclose(state.sigmas, [5.0, 1.0, 0.1, 0.0], rtol=RTOL)
    np.testing.assert_allclose(state.schedule, [0.1, 1.0, 5.0], rtol=RTOL)
    assert float(state.init_noise_sigma) == 5.0
    # A matching num_inference_steps is accepted.
    assert kj.set_timesteps(CFG, 3, sigmas=np.array([5.0, 1.0, 0.1])).num_inference_steps == 3


def test_single_custom_level():
    state = kj.set_timesteps(CFG, sigmas=[2.5])
    np.testing.assert_array_equal(state.sigmas, [2.5, 0.0])


def test_levels_are_float64_under_x64():
    with jax.enable_x64(True):
        state = kj.set_timesteps(CFG, 4, "karras")
        assert state.sigmas.dtype == jnp.float64
        assert state.init_noise_sigma.dtype == jnp.float64
        np.testing.assert_allclose(
            state.sigmas[:-1], oracle.karras_sigmas(0.02, 100.0, 4), rtol=1e-13
        )


# --- pytree structure -------------------------------------------------------------------


def test_num_inference_steps_and_name_are_static_arrays_are_leaves():
    state = kj.set_timesteps(CFG, 4)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 10  # timesteps, schedule, sigmas, init_noise_sigma, the config's six
    assert all(isinstance(leaf, jax.Array) for leaf in leaves[:4])
    assert leaves[4:] == [CFG.sigma_min, CFG.sigma_max, CFG.s_noise, CFG.s_churn, CFG.s_min, CFG.s_max]

    @jax.jit
    def count(s):
        assert isinstance(s.num_inference_steps, int)  # static: a Python int while tracing
        return s.sigmas.sum() * s.num_inference_steps

    assert float(count(state)) == pytest.approx(float(state.sigmas.sum()) * 4, rel=1e-6)


def test_states_with_different_step_counts_have_different_treedefs():
    a = jax.tree_util.tree_structure(kj.set_timesteps(CFG, 4))
    b = jax.tree_util.tree_structure(kj.set_timesteps(CFG, 5))
    assert a != b


def test_empty_state():
    state = kj.KarrasVeState.create()
    assert not state.is_set
    assert state.num_inference_steps is None and state.sigmas is None
    assert kj.set_timesteps(CFG, 3).is_set


def test_set_timesteps_with_a_traced_config_under_jit():
    @jax.jit
    def levels(sigma_max):
        return kj.set_timesteps(CFG.replace(sigma_max=sigma_max), 5).sigmas

    np.testing.assert_allclose(
        levels(jnp.float32(80.0)), oracle.with_trailing_zero(oracle.ve_sigmas(0.02, 80.0, 5)),
        rtol=1e-5,
    )


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,exc",
    [(True, TypeError), (False, TypeError), (5.0, TypeError), ("5", TypeError),
     (np.float32(5), TypeError), (0, ValueError), (-2, ValueError)],
)
def test_num_inference_steps_must_be_a_positive_int(bad, exc):
    with pytest.raises(exc, match="num_inference_steps"):
        kj.set_timesteps(CFG, bad)


def test_numpy_int_step_count_is_accepted():
    state = kj.set_timesteps(CFG, np.int64(3))
    assert state.num_inference_steps == 3 and type(state.num_inference_steps) is int


def test_traced_num_inference_steps_raises_type_error():
    with pytest.raises(TypeError, match="num_inference_steps"):
        jax.jit(lambda n: kj.set_timesteps(CFG, n).sigmas)(5)


def test_num_inference_steps_is_required_without_sigmas():
    with pytest.raises(TypeError, match="num_inference_steps"):
        kj.set_timesteps(CFG)


@pytest.mark.parametrize("bad", ["VE", "euler", "", "edm"])
def test_unknown_schedule_name(bad):
    with pytest.raises(ValueError, match="schedule must be one of"):
        kj.set_timesteps(CFG, 5, bad)


@pytest.mark.parametrize("rho", [0.0, -1.0, float("nan")])
def test_rho_must_be_positive(rho):
    with pytest.raises(ValueError, match="rho"):
        kj.set_timesteps(CFG, 5, "karras", rho=rho)


def test_schedule_and_sigmas_are_exclusive():
    with pytest.raises(ValueError, match="schedule"):
        kj.set_timesteps(CFG, schedule="ve", sigmas=[2.0, 1.0])


def test_a_step_count_other_than_len_sigmas_interpolates_in_log_sigma():
    # It used to be refused; the levels are now resampled (Align Your Steps' recipe).
    state = kj.set_timesteps(CFG, 4, sigmas=[8.0, 1.0])
    assert state.num_inference_steps == 4 and state.schedule_name == "custom"
    np.testing.assert_allclose(state.sigmas, [8.0, 4.0, 2.0, 1.0, 0.0], rtol=RTOL)
    np.testing.assert_allclose(state.schedule, [1.0, 2.0, 4.0, 8.0], rtol=RTOL)
    assert float(state.init_noise_sigma) == 8.0
    with pytest.raises(ValueError, match="num_inference_steps"):
        kj.set_timesteps(CFG, 0, sigmas=[2.0, 1.0])


@pytest.mark.parametrize(
    "bad",
    [np.ones((2, 2)), np.array([]), [2.0, np.nan], [2.0, 0.0], [1.0, 2.0]],
)
def test_bad_custom_sigmas(bad):
    with pytest.raises(ValueError, match="sigmas"):
        kj.set_timesteps(CFG, sigmas=bad)


def test_config_must_be_a_karras_ve_config():
    with pytest.raises(TypeError, match="config"):
        kj.set_timesteps({"sigma_min": 0.02}, 5)


# --- one source of truth: the state carries the config its levels were built from ---------------


def _denoise(x, sigma, cond):
    return x / (1.0 + sigma**2)


KEYS = jax.random.split(jax.random.key(0), 2)


def test_the_state_carries_its_config_and_sampling_uses_it():
    cfg = kj.KarrasVeConfig(s_churn=30.0, s_noise=1.0)
    state = kj.set_timesteps(cfg, 5)
    assert state.config is cfg
    from_state = kj.sample(_denoise, KEYS, state, None, (3,))
    np.testing.assert_array_equal(from_state, kj.sample(_denoise, KEYS, state, cfg, (3,)))
    deterministic = kj.sample(_denoise, KEYS, kj.set_timesteps(cfg.replace(s_churn=0.0), 5), None, (3,))
    assert not np.allclose(from_state, deterministic)  # s_churn really came from the state


@pytest.mark.parametrize("field, value", [("sigma_max", 80.0), ("sigma_min", 0.01)])
def test_a_config_of_another_range_is_refused_naming_both(field, value):
    cfg = kj.KarrasVeConfig()
    state = kj.set_timesteps(cfg, 5)
    other = cfg.replace(**{field: value})
    built = getattr(cfg, field)
    with pytest.raises(ValueError, match=rf"config.{field}={value}.*{field}={built}.*set_timesteps"):
        kj.sample(_denoise, KEYS, state, other, (3,))
    with pytest.raises(ValueError, match=rf"config.{field}"):
        kj.make_sampler(lambda p, x, s, c: _denoise(x, s, c), state, other, (3,))
    sampler = kj.make_sampler(lambda p, x, s, c: _denoise(x, s, c), state, None, (3,))
    with pytest.raises(ValueError, match=rf"config.{field}"):
        sampler(None, KEYS, config=other)
    with pytest.raises(ValueError, match=rf"state.replace\(config=...\): config.{field}"):
        state.replace(config=other)
    # A state built from the other config brings its own config along: consistent.
    rebuilt = kj.set_timesteps(other, 5)
    np.testing.assert_allclose(sampler(None, KEYS, state=rebuilt),
                               kj.sample(_denoise, KEYS, rebuilt, None, (3,)), rtol=1e-5, atol=1e-6)


def test_a_traced_sweep_of_the_range_cannot_be_silently_ignored():
    # The trap: vmap over cfg.replace(sigma_max=m) with a state built outside the
    # vmap used to return the same samples for every m. It is refused now, traced or not.
    cfg = kj.KarrasVeConfig(s_churn=0.0)
    state = kj.set_timesteps(cfg, 5, "karras")
    grid = jnp.asarray([20.0, 80.0])
    with pytest.raises(ValueError, match="config.sigma_max cannot be compared"):
        jax.vmap(lambda m: kj.sample(_denoise, KEYS, state, cfg.replace(sigma_max=m), (3,)))(grid)
    with pytest.raises(ValueError, match="config.sigma_m.. cannot be compared"):
        jax.jit(lambda c: kj.sample(_denoise, KEYS, state, c, (3,)))(cfg)
    with pytest.raises(ValueError, match="sigma_max cannot be compared"):
        jax.vmap(lambda m: state.replace(config=cfg.replace(sigma_max=m)).sigmas)(grid)
    # Beside a traced state nothing can be compared either: a Python loop over a jitted
    # run(state, config) would otherwise return the same samples for every sigma_max.
    run = jax.jit(lambda s, c: kj.sample(_denoise, KEYS, s, c, (3,)))
    for other in (cfg, cfg.replace(sigma_max=500.0)):
        with pytest.raises(ValueError, match="config.sigma_m.. cannot be compared"):
            run(state, other)
        with pytest.raises(ValueError, match="config.sigma_m.. cannot be compared"):
            jax.jit(lambda s, c=other: kj.sample(_denoise, KEYS, s, c, (3,)))(state)
    # Passing the state (which holds its config) through jit is the way, and so is a churn
    # sweep with the range untouched (state.config's own values).
    jitted = jax.jit(lambda s: kj.sample(_denoise, KEYS, s, None, (3,)))(state)
    np.testing.assert_allclose(jitted, kj.sample(_denoise, KEYS, state, None, (3,)), rtol=1e-6)
    jax.vmap(lambda c: kj.sample(_denoise, KEYS, state, cfg.replace(s_churn=c), (3,)))(grid)


def test_other_hyperparameters_and_custom_levels_are_not_compared():
    cfg = kj.KarrasVeConfig()
    kj.sample(_denoise, KEYS, kj.set_timesteps(cfg, 5), cfg.replace(s_churn=3.0, s_min=0.1), (3,))
    custom = kj.set_timesteps(cfg, sigmas=[3.0, 1.0, 0.1])
    kj.sample(_denoise, KEYS, custom, cfg.replace(sigma_max=7.0), (3,))  # custom levels: no range
    assert custom.replace(config=cfg.replace(sigma_max=7.0)).config.sigma_max == 7.0


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_state_starts_at_an_infinite_level(shift):
    state = kj.set_timesteps(CFG, 6, "flow", shift=shift)
    assert state.schedule_name == "flow" and state.num_inference_steps == 6
    sigmas = np.asarray(state.sigmas)
    assert sigmas[0] == np.inf and float(state.init_noise_sigma) == np.inf and sigmas[-1] == 0.0
    assert np.all(np.isfinite(sigmas[1:])) and np.all(np.diff(sigmas[1:]) < 0)
    assert state.schedule[-1] == np.inf and state.sigmas.dtype == jnp.float32
    with jax.enable_x64(True):
        assert kj.set_timesteps(CFG, 6, "flow", shift=shift).sigmas.dtype == jnp.float64


def test_flow_levels_have_no_range_to_compare():
    # Like custom levels, flow levels ignore sigma_min/sigma_max: another range is not refused.
    cfg = kj.KarrasVeConfig(s_churn=0.0)
    flow = kj.set_timesteps(cfg, 5, "flow", shift=3.0)
    other = cfg.replace(sigma_min=0.5, sigma_max=7.0)
    assert flow.replace(config=other).config.sigma_max == 7.0
    np.testing.assert_array_equal(kj.sample(_denoise, KEYS, flow, other, (3,)),
                                  kj.sample(_denoise, KEYS, flow, None, (3,)))
    # A named schedule built from the range still refuses it.
    with pytest.raises(ValueError, match="config.sigma_min"):
        kj.sample(_denoise, KEYS, kj.set_timesteps(cfg, 5, "exponential"), other, (3,))


def test_a_state_without_a_config_needs_one():
    bare = kj.set_timesteps(kj.KarrasVeConfig(), 5).replace(config=None)
    with pytest.raises(TypeError, match="carries none"):
        kj.sample(_denoise, KEYS, bare, None, (3,))
    assert kj.sample(_denoise, KEYS, bare, kj.KarrasVeConfig(), (3,)).shape == (2, 3)


def test_sweeping_sigma_max_builds_the_state_inside_the_vmap():
    cfg = kj.KarrasVeConfig(s_churn=0.0)

    def run(sigma_max):
        return kj.sample(_denoise, KEYS, kj.set_timesteps(cfg.replace(sigma_max=sigma_max), 5, "karras"),
                         None, (3,))

    swept = jax.vmap(run)(jnp.asarray([20.0, 80.0]))
    for j, m in enumerate([20.0, 80.0]):
        state_m = kj.set_timesteps(cfg.replace(sigma_max=m), 5, "karras")
        single = kj.sample(_denoise, KEYS, state_m, None, (3,))
        np.testing.assert_allclose(swept[j], single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(swept[0], swept[1])


@pytest.mark.parametrize("n", [3, 8])
def test_a_state_edited_to_another_step_count_is_refused(n):
    state = kj.set_timesteps(kj.KarrasVeConfig(), 5)
    edited = state.replace(num_inference_steps=n)
    keys = jax.random.split(jax.random.key(0), 2)
    message = rf"num_inference_steps={n} disagrees with state.sigmas of shape \(6,\)"
    with pytest.raises(ValueError, match=message):
        kj.sample(_denoise, keys, edited, kj.KarrasVeConfig(), (3,))
    with pytest.raises(ValueError, match="num_inference_steps"):
        kj.initial_noise(keys, edited, (3,))
    with pytest.raises(ValueError, match="num_inference_steps"):
        kj.add_noise_to_input(kj.KarrasVeConfig(), edited, jnp.zeros(3), 1.0, jax.random.key(0))


def test_set_timesteps_takes_a_config_holding_a_churn_sweep():
    # Only sigma_min / sigma_max shape the levels; a grid over s_churn may ride along.
    grid = kj.KarrasVeConfig().replace(s_churn=jnp.asarray([0.0, 10.0]))
    state = kj.set_timesteps(grid, 5)
    np.testing.assert_allclose(state.sigmas, kj.set_timesteps(kj.KarrasVeConfig(), 5).sigmas)
