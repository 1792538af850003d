"""The diffusers-shaped facade, and diffusers' own KarrasVeScheduler / KarrasVePipeline as oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest

import karras_jax as kj

SHAPE = (2, 3)


def _x(seed=0, shape=SHAPE):
    return jax.random.normal(jax.random.key(seed), shape)


# --- facade ------------------------------------------------------------------------------


def test_alias_and_constructor():
    assert kj.FlaxKarrasVeScheduler is kj.KarrasVeScheduler
    scheduler = kj.KarrasVeScheduler(sigma_max=80.0, s_churn=0.0)
    assert scheduler.config.sigma_max == 80.0 and scheduler.config.s_churn == 0.0
    assert scheduler.config.sigma_min == 0.02  # the other defaults are diffusers'
    assert isinstance(scheduler.config, kj.KarrasVeConfig)
    assert scheduler.order == 2 and scheduler.has_state
    assert "sigma_max=80.0" in repr(scheduler)


def test_constructor_validates():
    with pytest.raises(ValueError, match="s_churn"):
        kj.KarrasVeScheduler(s_churn=-1.0)
    with pytest.raises(TypeError, match="sigma_max"):
        kj.KarrasVeScheduler(sigma_max="100")


def test_config_is_immutable():
    scheduler = kj.KarrasVeScheduler()
    with pytest.raises(AttributeError):
        scheduler.config = kj.KarrasVeConfig()  # type: ignore[misc]


def test_create_state_then_set_timesteps_matches_functional_api():
    scheduler = kj.KarrasVeScheduler()
    empty = scheduler.create_state()
    assert isinstance(empty, kj.KarrasVeState) and not empty.is_set
    for schedule in (None, "ve", "karras", "diffusers"):
        state = scheduler.set_timesteps(empty, 7, shape=(1, 3, 8, 8), schedule=schedule)
        want = kj.set_timesteps(scheduler.config, 7, schedule)
        assert state.schedule_name == want.schedule_name
        jax.tree_util.tree_map(np.testing.assert_array_equal, state, want)
    custom = scheduler.set_timesteps(empty, sigmas=[3.0, 1.0])
    np.testing.assert_array_equal(custom.sigmas, [3.0, 1.0, 0.0])
    karras = scheduler.set_timesteps(empty, 4, schedule="karras", rho=2.0)
    np.testing.assert_allclose(karras.sigmas[:-1], oracle.karras_sigmas(0.02, 100.0, 4, 2.0),
                               rtol=1e-6)


def test_set_timesteps_requires_a_state():
    with pytest.raises(TypeError, match="state"):
        kj.KarrasVeScheduler().set_timesteps(7)


def test_methods_agree_with_the_functional_api():
    scheduler = kj.KarrasVeScheduler(s_churn=1.0)
    state = scheduler.set_timesteps(scheduler.create_state(), 10)
    cfg = scheduler.config
    x, key = _x(1), jax.random.key(3)
    x_hat, sigma_hat = scheduler.add_noise_to_input(state, x, 1.0, key)
    want_hat, want_sigma = kj.add_noise_to_input(cfg, state, x, 1.0, key)
    np.testing.assert_array_equal(x_hat, want_hat)
    assert float(sigma_hat) == float(want_sigma) == pytest.approx(1.1)  # gamma = 1/10
    m1, m2 = _x(2), _x(3)
    # Like diffusers' FlaxKarrasVeScheduler, the facade's step outputs carry the state along.
    out = scheduler.step(state, m1, sigma_hat, 0.5, x_hat)
    want = kj.step(m1, sigma_hat, 0.5, x_hat)
    assert out.state is state
    for name in ("prev_sample", "derivative", "pred_original_sample"):
        np.testing.assert_array_equal(getattr(out, name), getattr(want, name))
    corr = scheduler.step_correct(state, m2, sigma_hat, 0.5, x_hat, out.prev_sample,
                                  out.derivative)
    want = kj.step_correct(m2, sigma_hat, 0.5, x_hat, out.prev_sample, out.derivative)
    assert corr.state is state
    for name in ("prev_sample", "derivative", "pred_original_sample"):
        np.testing.assert_array_equal(getattr(corr, name), getattr(want, name))
    prev, d, same_state = scheduler.step_correct(state, m2, sigma_hat, 0.5, x_hat,
                                                 out.prev_sample, out.derivative, return_dict=False)
    assert same_state is state
    np.testing.assert_array_equal(prev, want.prev_sample)
    np.testing.assert_array_equal(d, want.derivative)
    prev, d, _ = scheduler.step(state, m1, sigma_hat, 0.5, x_hat, return_dict=False)
    np.testing.assert_array_equal(prev, out.prev_sample)
    np.testing.assert_array_equal(scheduler.scale_model_input(state, x, timestep=3), x)


def test_add_noise_on_an_empty_state_raises_a_clear_error():
    scheduler = kj.KarrasVeScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.add_noise_to_input(scheduler.create_state(), _x(), 1.0, jax.random.key(0))


def test_from_config_dict_and_config():
    scheduler = kj.KarrasVeScheduler.from_config({"sigma_max": 80.0, "s_churn": 40})
    assert scheduler.config.sigma_max == 80.0 and scheduler.config.s_churn == 40.0
    again = kj.KarrasVeScheduler.from_config(scheduler.config)
    assert again.config == scheduler.config
    with pytest.warns(UserWarning, match="num_train_timesteps"):
        kj.KarrasVeScheduler.from_config({"num_train_timesteps": 1000})


def test_facade_methods_jit():
    scheduler = kj.KarrasVeScheduler()
    state = scheduler.set_timesteps(scheduler.create_state(), 10)

    @jax.jit
    def iteration(state, x, sigma, key):
        x_hat, sigma_hat = scheduler.add_noise_to_input(state, x, sigma, key)
        return scheduler.step(state, -0.5 * x_hat, sigma_hat, state.sigmas[1], x_hat)

    out = iteration(state, _x(1), state.sigmas[0], jax.random.key(0))
    x_hat, sigma_hat = scheduler.add_noise_to_input(state, _x(1), state.sigmas[0],
                                                    jax.random.key(0))
    want = scheduler.step(state, -0.5 * x_hat, sigma_hat, state.sigmas[1], x_hat)
    np.testing.assert_allclose(out.prev_sample, want.prev_sample, rtol=1e-6, atol=1e-6)


# --- diffusers' KarrasVeScheduler as oracle -----------------------------------------------


def _diffusers():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.schedulers.deprecated import scheduling_karras_ve

    return scheduling_karras_ve


@pytest.mark.parametrize("n", [2, 5, 50])
@pytest.mark.parametrize(
    "config",
    [{}, {"sigma_min": 0.002, "sigma_max": 80.0}, {"sigma_min": 0.5, "sigma_max": 3.0}],
)
def test_set_timesteps_diffusers_schedule_matches_diffusers(n, config):
    ref = _diffusers().KarrasVeScheduler(**config)
    ref.set_timesteps(n)
    scheduler = kj.KarrasVeScheduler(**config)
    state = scheduler.set_timesteps(scheduler.create_state(), n, schedule="diffusers")
    np.testing.assert_array_equal(state.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(state.schedule, ref.schedule.numpy(), rtol=1e-6)
    assert float(state.init_noise_sigma) == pytest.approx(ref.init_noise_sigma, rel=1e-7)


def test_single_step_is_legal_where_diffusers_gives_nan():
    ref = _diffusers().KarrasVeScheduler()
    ref.set_timesteps(1)
    assert not np.isfinite(ref.schedule.numpy()).all()  # 0/0 in diffusers
    state = kj.set_timesteps(kj.KarrasVeConfig(), 1, "diffusers")
    np.testing.assert_allclose(state.sigmas, [1e4, 0.0])


def _analytic_unet_f(y, s, xp):
    """F of eq. (213) such that D(x; sigma) = x + sigma * (sigma/2) F((x+1)/2, sigma/2) is the
    exact denoiser of data N(MU, SD^2 I)."""
    return 2.0 * (MU - (2.0 * y - 1.0)) / (SD**2 + 4.0 * s**2)


MU, SD = 0.1, 0.3


CHURN_EVERYWHERE = {"s_churn": 30.0, "s_min": 0.01, "s_max": 2e4, "s_noise": 1.0}


# Not N = 2 with churn at 1e4: one Heun step from 1.4e4 straight to 4e-4 amplifies float32
# round-off by sigma_hat / sigma_prev ~ 3e7 in diffusers' formula, so no two float32 codes agree.
@pytest.mark.parametrize(
    "config,n",
    [({}, 2), ({}, 6), ({}, 30), (CHURN_EVERYWHERE, 6), (CHURN_EVERYWHERE, 30)],
    ids=["defaults-2", "defaults-6", "defaults-30", "churn-everywhere-6", "churn-everywhere-30"],
)
def test_full_pipeline_loop_matches_diffusers_karras_ve_pipeline(monkeypatch, config, n):
    """diffusers' own deprecated KarrasVePipeline, fed the noise our keys define, against the
    same loop written with karras_jax (and against the float64 oracle)."""
    mod = _diffusers()
    import torch
    from diffusers import KarrasVePipeline
    from diffusers.pipelines.deprecated.stochastic_karras_ve import (
        pipeline_stochastic_karras_ve as pipeline_mod,
    )

    shape = (1, 3, 4, 4)
    k_init, *churn_keys = jax.random.split(jax.random.key(42), n + 1)
    z_init = np.array(jax.random.normal(k_init, shape, jnp.float32))
    z_churn = [np.array(jax.random.normal(k, shape, jnp.float32)) for k in churn_keys]

    # --- diffusers, its pipeline code unchanged, randn replaced by our noise in order --------
    churn_queue = iter(z_churn)
    monkeypatch.setattr(pipeline_mod, "randn_tensor",
                        lambda *a, **k: torch.from_numpy(z_init.copy()))
    monkeypatch.setattr(mod, "randn_tensor",
                        lambda *a, **k: torch.from_numpy(next(churn_queue).copy()))
    monkeypatch.setattr(KarrasVePipeline, "device", property(lambda self: torch.device("cpu")),
                        raising=False)

    class Out:
        def __init__(self, sample):
            self.sample = sample

    class Unet(torch.nn.Module):
        config = type("Cfg", (), {"sample_size": shape[-1]})()

        def forward(self, y, s):
            return Out(_analytic_unet_f(y, s, torch))

    ref = mod.KarrasVeScheduler(**config)
    last = {}  # the pipeline returns clip(x/2 + 0.5); keep its last x before clipping too

    def recording(method):
        def wrapped(*args, **kwargs):
            out = method(*args, **kwargs)
            last["sample"] = out.prev_sample.numpy().copy()
            return out

        return wrapped

    ref.step, ref.step_correct = recording(ref.step), recording(ref.step_correct)
    pipe = KarrasVePipeline(unet=Unet(), scheduler=ref)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=1, num_inference_steps=n, output_type="np").images
    assert next(churn_queue, None) is None  # one churn draw per step, all used

    # --- karras_jax, the pipeline's loop with the facade -------------------------------------
    scheduler = kj.KarrasVeScheduler(**config)
    state = scheduler.set_timesteps(scheduler.create_state(), n, schedule="diffusers")

    def model(x, sigma):  # eq. (213)
        return (sigma / 2) * _analytic_unet_f((x + 1) / 2, sigma / 2, jnp)

    sample = jnp.asarray(z_init) * state.init_noise_sigma
    x0 = np.asarray(sample, np.float64)
    peak = 0.0
    for i, t in enumerate(state.timesteps.tolist()):
        sigma = state.schedule[t]
        sigma_prev = state.schedule[t - 1] if t > 0 else 0.0
        sample_hat, sigma_hat = scheduler.add_noise_to_input(state, sample, sigma, churn_keys[i])
        peak = max(peak, float(jnp.abs(sample_hat).max()))
        out = scheduler.step(state, model(sample_hat, sigma_hat), sigma_hat, sigma_prev,
                             sample_hat)
        if sigma_prev != 0:
            out = scheduler.step_correct(
                state, model(out.prev_sample, sigma_prev), sigma_hat, sigma_prev, sample_hat,
                out.prev_sample, out.derivative,
            )
        sample = out.prev_sample
    ours = np.asarray(jnp.clip(sample / 2 + 0.5, 0, 1)).transpose(0, 2, 3, 1)

    # --- float64 Algorithm 2 with the same levels and noise ---------------------------------
    cfg = scheduler.config
    want = oracle.algorithm2(
        oracle.gaussian_denoiser(MU, SD), x0,
        oracle.with_trailing_zero(oracle.diffusers_sigmas(cfg.sigma_min, cfg.sigma_max, n)),
        cfg.s_churn, cfg.s_min, cfg.s_max, [cfg.s_noise * z for z in z_churn],
    )

    # float32 precision of the largest value the loop went through (|x_hat| reaches 1e4 when
    # diffusers' 1e4 level is churned): both float32 loops sit this close to float64.
    atol = 1e-7 * peak
    np.testing.assert_allclose(sample, last["sample"], rtol=1e-5, atol=atol)
    np.testing.assert_allclose(sample, want, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=max(atol / 2, 1e-6))  # x/2 + 0.5


def test_the_scheduler_config_reads_like_diffusers_frozen_dict():
    # diffusers' dict interface lives in compat: scheduler.config is a KarrasVeConfig that
    # also answers config["sigma_max"] and dict(**config); the core config does not.
    scheduler = kj.KarrasVeScheduler(sigma_max=80.0)
    cfg = scheduler.config
    assert isinstance(cfg, kj.KarrasVeConfig) and isinstance(cfg, kj.SchedulerConfig)
    assert cfg["sigma_max"] == 80.0 == cfg.sigma_max
    assert dict(**cfg) == cfg.to_dict()
    assert kj.KarrasVeScheduler(**cfg).config == cfg
    with pytest.raises(KeyError):
        cfg["num_train_timesteps"]
    with pytest.raises(TypeError):
        kj.KarrasVeConfig()["sigma_max"]
    # Still a pytree of the same kind through jit and replace, checks included.
    doubled = jax.jit(lambda c: jax.tree_util.tree_map(lambda v: v * 2, c))(cfg)
    assert isinstance(doubled, kj.SchedulerConfig) and float(doubled["sigma_max"]) == 160.0
    assert isinstance(cfg.replace(s_churn=1.0), kj.SchedulerConfig)
    with pytest.raises(ValueError, match="s_churn must be >= 0"):
        cfg.replace(s_churn=-1.0)
