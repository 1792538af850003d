"""The sampler as one XLA program: one loop whatever N, no host callbacks unless asked,
no retracing for new weights / keys / cond / hyperparameters, vmap over the churn grid,
and gradients through the whole loop."""

import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_utils import GAUSS, edm_config, fast_sample, float32_tolerance, gauss_denoise, keys_for

import karras_jax as kj
from karras_jax.analytic import GaussianData

LOOP_PRIMITIVES = ("scan", "while")


def _count_loops(jaxpr) -> int:
    """Loop primitives anywhere in a (closed) jaxpr, sub-jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in LOOP_PRIMITIVES:
            count += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count_loops(sub)
    return count


def _sample_fn(solver="heun", return_trajectory=False):
    def run(keys, state, cfg):  # cfg is the state's own config
        return kj.sample(gauss_denoise, keys, state, None, (3,), solver=solver,
                         return_trajectory=return_trajectory)

    return run


@pytest.mark.parametrize("return_trajectory", [False, True])
@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_one_loop_whose_size_does_not_grow_with_n(solver, return_trajectory):
    cfg = edm_config()
    keys = keys_for(0, 4)
    run = _sample_fn(solver, return_trajectory)
    texts, loops = {}, {}
    for n in (10, 100):
        state = kj.set_timesteps(cfg, n, "karras")
        closed = jax.make_jaxpr(run)(keys, state, cfg)
        loops[n] = _count_loops(closed.jaxpr)
        texts[n] = str(closed)
    assert loops == {10: 1, 100: 1}
    # Only the printed shapes of the per-step arrays (10 vs 100) and loop bounds differ.
    assert re.sub(r"\d+", "", texts[100]) == re.sub(r"\d+", "", texts[10])


def test_compiled_program_does_not_grow_with_n():
    cfg = edm_config()
    keys = keys_for(0, 4)
    hlo = {}
    for n in (10, 100):
        state = kj.set_timesteps(cfg, n, "karras")
        hlo[n] = jax.jit(_sample_fn()).lower(keys, state, cfg).compile().as_text()
    # Exactly one while loop carries the (B, *sample_shape) = f32[4,3] samples: the sampling
    # loop. (JAX's key splitting may add its own small rolled Threefry loop over u32 keys.)
    for text in hlo.values():
        carries = [line.split(" while(")[0] for line in text.splitlines() if " while(" in line]
        assert sum("f32[4,3]" in c for c in carries) == 1, carries
    # The same number of loops for both N, and the same program size up to printed constants.
    assert hlo[10].count(" while(") == hlo[100].count(" while(")
    assert abs(len(hlo[100]) - len(hlo[10])) < 0.01 * len(hlo[10])


# --- progress -----------------------------------------------------------------------------


def _callback_primitives(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        if "callback" in eqn.primitive.name:
            found.append(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _callback_primitives(sub)
    return found


def _host_calls(text: str) -> list:
    """Host callbacks in StableHLO (custom_call @...callback) or compiled HLO (custom_call_target)."""
    return re.findall(r"custom_call(?:_target=\"| @)[\w.]*callback", text)


@pytest.mark.parametrize("progress", [False, "callable"])
def test_host_callbacks_only_with_progress(progress):
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 5, "karras")
    keys = keys_for(0, 4)
    report = (lambda i: None) if progress else False

    def run(keys, state, cfg):  # cfg is the state's own config
        return kj.sample(gauss_denoise, keys, state, None, (3,), progress=report)

    lowered = jax.jit(run).lower(keys, state, cfg)
    found = [
        _callback_primitives(jax.make_jaxpr(run)(keys, state, cfg).jaxpr),
        _host_calls(lowered.as_text()),
        _host_calls(lowered.compile().as_text()),
    ]
    if progress:  # the detector sees them when they are there
        assert all(found), found
    else:
        assert not any(found), found


def test_make_sampler_program_has_no_host_callbacks():
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 5, "karras")
    sampler = kj.make_sampler(lambda p, x, s, c: GaussianData(p[0], p[1]).denoise(x, s), state, cfg, (3,))
    params = (GAUSS.mean, GAUSS.std)
    lowered = sampler.jitted.lower(params, keys_for(0, 4), None, None, state)
    assert not _host_calls(lowered.as_text())


@pytest.mark.parametrize("n", [1, 7])
def test_progress_callable_called_once_per_step(n):
    cfg = edm_config()
    state = kj.set_timesteps(cfg, n, "karras")
    steps = []

    def run(keys):
        return kj.sample(gauss_denoise, keys, state, cfg, (3,), progress=lambda i: steps.append(int(i)))

    out = (run if n > 1 else jax.jit(run))(keys_for(0, 4))  # eager and jitted
    out.block_until_ready()
    jax.effects_barrier()
    assert steps == list(range(n))
    # The same computation as the jitted program without progress (to float32 round-off).
    x0 = kj.initial_noise(keys_for(0, 4), state, (3,))
    np.testing.assert_allclose(np.asarray(out),
                               np.asarray(fast_sample(gauss_denoise, keys_for(0, 4), state, cfg, (3,))),
                               rtol=1e-5, atol=float32_tolerance(x0))


def test_progress_bar_on_stderr(capfd):
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 4, "karras")
    jax.jit(lambda k: kj.sample(gauss_denoise, k, state, cfg, (3,), progress=True))(
        keys_for(0, 2)).block_until_ready()
    jax.effects_barrier()
    err = capfd.readouterr().err
    assert "sampling" in err and "4/4" in err  # tqdm on stderr, closed at the last step


# --- no retrace ---------------------------------------------------------------------------


def test_make_sampler_does_not_retrace_for_new_weights_keys_cond_config_state():
    traces = []

    def apply_fn(params, x, sigma, cond):
        traces.append(1)
        mean, std = params
        return GaussianData(mean + cond["shift"][:, None], std).denoise(x, sigma)

    cfg = edm_config()
    state = kj.set_timesteps(cfg, 5, "karras")
    sampler = kj.make_sampler(apply_fn, state, cfg, (3,))
    cond = {"shift": jnp.zeros((4,))}
    first = sampler((GAUSS.mean, GAUSS.std), keys_for(0, 4), cond)
    traced_once = len(traces)
    assert traced_once == 3  # Euler stage and Heun correction in the loop, the peeled last step

    second = sampler((GAUSS.mean + 1.0, jnp.asarray(0.3)), keys_for(1, 4), {"shift": jnp.ones((4,))})
    sampler((GAUSS.mean, GAUSS.std), keys_for(2, 4), cond, config=cfg.replace(s_churn=3.0, s_noise=1.0))
    new_range = cfg.replace(sigma_min=0.01, sigma_max=20.0)
    new_levels = kj.set_timesteps(new_range, 5, "karras")
    sampler((GAUSS.mean, GAUSS.std), keys_for(3, 4), cond, state=new_levels)  # with its own config
    sampler((GAUSS.mean, GAUSS.std), jax.random.key_data(keys_for(4, 4)), cond)  # raw keys
    sampler((GAUSS.mean, GAUSS.std), keys_for(5, 4), cond, config=cfg.replace(s_churn=jnp.asarray(2.0)))
    assert len(traces) == traced_once
    assert sampler.jitted._cache_size() == 1
    assert not np.allclose(np.asarray(first), np.asarray(second))

    # With chex: at most one trace of the jitted body for new values.
    import chex

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, keys, cfg):  # the state built in the trace from the traced config
        return kj.sample(lambda x, s, c: GaussianData(*params).denoise(x, s), keys,
                         kj.set_timesteps(cfg, 5, "karras"), None, (3,))

    run((GAUSS.mean, GAUSS.std), keys_for(0, 4), cfg)
    run((GAUSS.mean * 2, GAUSS.std * 2), keys_for(1, 4), cfg.replace(s_churn=1.0, s_min=0.1, s_max=5.0))


def test_make_sampler_with_x_init_does_not_retrace():
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 7, "karras")
    sampler = kj.make_sampler(lambda p, x, s, c: GaussianData(*p).denoise(x, s), state, cfg, (3,))
    keys = keys_for(0, 4)
    params = (GAUSS.mean, GAUSS.std)
    a = sampler(params, keys, None, jnp.zeros((4, 3)))
    b = sampler(params, keys, None, jnp.ones((4, 3)))
    assert sampler.jitted._cache_size() == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))
    default = sampler(params, keys)
    np.testing.assert_allclose(np.asarray(default),
                               np.asarray(fast_sample(gauss_denoise, keys, state, cfg, (3,))),
                               rtol=1e-5, atol=float32_tolerance(kj.initial_noise(keys, state, (3,))))


# --- vmap over the churn grid --------------------------------------------------------------


def test_vmap_over_hyperparameter_grid_is_one_program():
    cfg = edm_config()
    state = kj.set_timesteps(cfg, 7, "karras")
    keys = keys_for(5, 4)
    grid = np.array(np.meshgrid([0.0, 5.0, 40.0], [1.0, 1.007], [0.05, 0.5], [1.0, 50.0],
                                indexing="ij")).reshape(4, -1).T.astype(np.float32)  # (24, 4)
    traces = []

    def denoise(x, sigma, cond):
        traces.append(1)
        return GAUSS.denoise(x, sigma)

    @jax.jit
    def sweep(values):
        def one(v):
            c = cfg.replace(s_churn=v[0], s_noise=v[1], s_min=v[2], s_max=v[3])
            return kj.sample(denoise, keys, state, c, (3,))

        return jax.vmap(one)(values)

    out = sweep(jnp.asarray(grid))
    assert out.shape == (len(grid), 4, 3)
    assert len(traces) == 3  # traced once
    sweep(jnp.asarray(grid[::-1]))
    assert len(traces) == 3 and sweep._cache_size() == 1
    # Equal to float32 round-off: the vmapped program fuses differently.
    tol = float32_tolerance(kj.initial_noise(keys, state, (3,)))
    for row, result in zip(grid, np.asarray(out), strict=True):
        c = cfg.replace(s_churn=float(row[0]), s_noise=float(row[1]), s_min=float(row[2]),
                        s_max=float(row[3]))
        single = fast_sample(gauss_denoise, keys, state, c, (3,))
        np.testing.assert_allclose(result, np.asarray(single), rtol=1e-5, atol=tol)
    # The grid is not degenerate: different churn gives different samples.
    assert not np.allclose(np.asarray(out[0]), np.asarray(out[-1]))


# --- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("s_churn", [0.0, 40.0])
def test_gradients_finite(s_churn, n):
    # n = 1 is the peeled final step alone (to sigma = 0); n = 5 adds the loop.
    cfg = edm_config(s_churn=s_churn)
    state = kj.set_timesteps(cfg, n, "karras")
    keys = keys_for(6, 4)
    x_init = kj.initial_noise(keys, state, (3,))
    weights = jnp.linspace(0.5, 1.5, 12).reshape(4, 3)

    def loss(params, x0):
        data = GaussianData(mean=params["mean"], std=params["std"])
        out = kj.sample(data.denoise, keys, state, cfg, (3,), x_init=x0)
        return jnp.sum(weights * out**2)

    params = {"mean": GAUSS.mean, "std": GAUSS.std}
    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x_init)
    for leaf in jax.tree_util.tree_leaves((g_params, g_x)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.all(np.asarray(g_params["mean"]) != 0) and float(g_params["std"]) != 0
    assert np.all(np.asarray(g_x) != 0)


def test_gradients_match_finite_differences_with_churn():
    cfg = edm_config(s_churn=40.0)
    state = kj.set_timesteps(cfg, 5, "karras")
    keys = keys_for(7, 4)
    x_init = kj.initial_noise(keys, state, (3,))
    weights = jnp.linspace(0.5, 1.5, 12).reshape(4, 3)

    @jax.jit
    def f(mean, x0):
        out = kj.sample(GaussianData(mean, GAUSS.std).denoise, keys, state, cfg, (3,), x_init=x0)
        return jnp.sum(weights * out)

    g_mean, g_x = jax.jit(jax.grad(f, argnums=(0, 1)))(GAUSS.mean, x_init)
    # The sampler is affine in x_init for this denoiser (the churn noise is additive): a
    # central difference with a large step is exact up to round-off.
    direction = jax.random.normal(jax.random.key(1), x_init.shape)
    fd = (f(GAUSS.mean, x_init + direction) - f(GAUSS.mean, x_init - direction)) / 2
    np.testing.assert_allclose(float(jnp.sum(g_x * direction)), float(fd), rtol=1e-3, atol=1e-4)
    # It is affine in the mean too (D is linear in mu): same check per coordinate.
    for j in range(3):
        e = jnp.zeros(3).at[j].set(1.0)
        fd = (f(GAUSS.mean + e, x_init) - f(GAUSS.mean - e, x_init)) / 2
        np.testing.assert_allclose(float(g_mean[j]), float(fd), rtol=1e-3, atol=1e-4)


def test_int_and_float_config_values_share_one_compiled_sampler():
    traces = []
    data = kj.analytic.GaussianData(mean=jnp.float32(0.0), std=jnp.float32(1.0))

    def apply_fn(params, x, sigma, cond):
        traces.append(1)
        return data.denoise(x, sigma) * params

    cfg = kj.KarrasVeConfig(s_churn=1.0)
    state = kj.set_timesteps(cfg, 4)
    sampler = kj.make_sampler(apply_fn, state, cfg, (2,))
    keys = jax.random.split(jax.random.key(0), 3)
    sampler(jnp.float32(1.0), keys)
    first = len(traces)
    sampler(jnp.float32(1.0), keys, config=cfg.replace(s_churn=2))
    sampler(jnp.float32(1.0), keys, config=cfg.replace(s_noise=np.float32(1.0)))
    assert len(traces) == first


# --- deterministic runs draw nothing --------------------------------------------------------


def _draws(fn, *args):
    """How many churn draws the program makes (each folds the step into its key)."""
    return str(jax.make_jaxpr(fn)(*args)).count("random_fold_in")


@pytest.mark.parametrize("cfg", [edm_config(s_churn=0.0),
                                 edm_config(s_churn=40.0, s_min=500.0, s_max=900.0)],  # window empty
                         ids=["s_churn=0", "window outside the levels"])
def test_a_run_known_deterministic_has_no_churn_draw_and_no_branch(cfg):
    state = kj.set_timesteps(cfg, 6, "karras")
    keys = keys_for(0, 64)  # 64 x 3 elements: large enough for the lax.cond form when it draws

    def run(k):
        return kj.sample(gauss_denoise, k, state, None, (3,))

    jaxpr = str(jax.make_jaxpr(run)(keys))
    assert jaxpr.count("random_fold_in") == 0 and "cond[" not in jaxpr  # the start noise only
    churned = state.replace(config=cfg.replace(s_churn=40.0, s_min=0.0, s_max=1e3))
    assert _draws(lambda k: kj.sample(gauss_denoise, k, churned, None, (3,)), keys) > 1
    # The same samples as the program that draws and adds zero (a traced config keeps that path),
    # up to float32 round-off: the two are different compilations (fusions, FMAs).
    traced = jax.jit(lambda k, s: kj.sample(gauss_denoise, k, s, None, (3,)))
    assert _draws(traced, keys, state) > 1
    tolerance = float32_tolerance(kj.initial_noise(keys, state, (3,)))
    np.testing.assert_allclose(run(keys), traced(keys, state), rtol=0, atol=tolerance)


def test_make_sampler_compiles_a_draw_free_program_for_a_deterministic_config():
    cfg = edm_config(s_churn=0.0)
    state = kj.set_timesteps(cfg, 6, "karras")
    sampler = kj.make_sampler(lambda p, x, s, c: GaussianData(*p).denoise(x, s), state, None, (3,))
    params, keys = (GAUSS.mean, GAUSS.std), keys_for(0, 64)
    plain = sampler(params, keys)
    churned = sampler(params, keys, config=cfg.replace(s_churn=40.0))  # the drawing program
    assert sampler.jitted._cache_size() == 2 and not np.allclose(plain, churned)
    np.testing.assert_allclose(plain, kj.sample(gauss_denoise, keys, state, None, (3,)), rtol=1e-5, atol=1e-5)
    assert "random_fold_in" not in str(jax.make_jaxpr(sampler.jitted, static_argnums=5)(
        params, keys, None, None, state, False))


def test_s_noise_zero_still_churns_the_levels_in_every_form():
    # s_noise = 0 with s_churn > 0 draws nothing but still raises sigma_hat: make_sampler
    # must not take it for an idle churn (it would sample with sigma_hat = sigma).
    cfg = kj.KarrasVeConfig(s_churn=40.0, s_noise=0.0, sigma_max=80.0)
    state = kj.set_timesteps(cfg, 6)
    keys = keys_for(3, 2)
    reference = kj.sample(gauss_denoise, keys, state, None, (3,))
    sampler = kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s, c), state, None, (3,))
    np.testing.assert_allclose(sampler(None, keys), reference, rtol=1e-5, atol=1e-6)
    deterministic = kj.sample(gauss_denoise, keys, kj.set_timesteps(cfg.replace(s_churn=0.0), 6), None, (3,))
    assert not np.allclose(reference, deterministic)


def test_a_facade_state_shares_the_program_of_a_plain_one():
    cfg = kj.KarrasVeConfig()
    sampler = kj.make_sampler(lambda p, x, s, c: gauss_denoise(x, s, c), kj.set_timesteps(cfg, 4), None, (3,))
    keys = keys_for(0, 2)
    plain = sampler(None, keys)
    scheduler = kj.KarrasVeScheduler()
    facade = sampler(None, keys, state=scheduler.set_timesteps(scheduler.create_state(), 4))
    assert sampler.jitted._cache_size() == 1
    np.testing.assert_array_equal(plain, facade)


def test_a_denoiser_returning_a_tuple_gets_a_named_error():
    state = kj.set_timesteps(kj.KarrasVeConfig(), 3)
    with pytest.raises(ValueError, match="denoise_fn must return one array shaped like its input"):
        jax.jit(lambda k: kj.sample(lambda x, s, c: (x, x), k, state, None, (3,)))(keys_for(0, 2))
