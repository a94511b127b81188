"""BRO: losses and targets against NumPy, optimism tuning, full resets, anatomy of its networks."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents import Batch
from agents._bro import BRO, BROConfig, gaussian_kl, grama_preset, quantile_huber

CFG = BROConfig(batch_size=4, critic_width=8, actor_width=6, n_quantiles=5, gamma=0.9, tau=0.25)


def member(tree, i):
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)


@pytest.fixture(scope="module")
def bro():
    return BRO(CFG, 3, 2, replay_ratio=2.0, learning_starts=100)


@pytest.fixture(scope="module")
def seeds(bro):
    """Two seeds' states from one compiled, vmapped init."""
    return jax.jit(jax.vmap(bro.init))(jax.random.split(jax.random.key(1), 2))


@pytest.fixture(scope="module")
def state(seeds):
    return member(seeds, 0)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    terminated = jnp.asarray([0.0, 1.0, 0.0, 1.0], jnp.float32)
    return Batch(f(4, 3), jnp.tanh(f(4, 2)), f(4), f(4, 3), terminated)


@pytest.fixture(scope="module")
def updated(bro, seeds, batch):
    """Two updates of both seeds by one compiled, vmapped update."""
    step = jax.jit(jax.vmap(lambda s, k: bro.update(s, batch, k, 0)))
    keys = jax.random.split(jax.random.key(2), 2)
    new, _ = step(seeds, keys)
    return step(new, keys)


@pytest.mark.parametrize("kappa", [1.0, 0.5])
def test_quantile_huber_matches_numpy(kappa):
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=7), rng.normal(size=5) * 2
    expected = 0.0
    for i, p in enumerate(pred):
        tau = (i + 0.5) / len(pred)
        for t in target:
            u = t - p
            huber = 0.5 * u**2 if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
            expected += abs(tau - (u < 0)) * huber / kappa / len(target)
    got = quantile_huber(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), kappa)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_gaussian_kl_matches_formula():
    rng = np.random.default_rng(2)
    mp, lp, mq, lq = (rng.normal(size=3) * 0.5 for _ in range(4))
    sp, sq = np.exp(lp), np.exp(lq)
    expected = np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5)
    f = lambda x: jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(float(gaussian_kl(f(mp), f(lp), f(mq), f(lq))), expected, rtol=1e-5)
    assert abs(float(gaussian_kl(f(mp), f(lp), f(mp), f(lp)))) < 1e-6


def test_critic_target_by_hand(bro, state, batch):
    key = jax.random.key(5)
    got = np.asarray(bro.critic_target(state, batch, key))
    noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
    alpha = math.exp(float(state.log_alpha))
    for i in range(4):
        a, logp = state.actor.sample(batch.next_obs[i], noise[i])
        q = [np.asarray(member(state.target_critic, m)(batch.next_obs[i], a)) for m in range(2)]
        soft = (q[0] + q[1]) / 2 - alpha * float(logp)
        want = float(batch.reward[i]) + 0.9 * (1 - float(batch.terminated[i])) * soft
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_critic_probe_is_the_quantile_loss_of_both_critics(bro, state, batch):
    probe = bro.critic_probe(state, batch, jax.random.key(6))
    obs, action, target = (x[0] for x in probe.inputs)
    want = sum(
        float(quantile_huber(member(state.critic, m)(obs, action), target)) for m in range(2)
    )
    np.testing.assert_allclose(
        float(probe.loss(state.critic, obs, action, target)), want, rtol=1e-5
    )


def test_acting(bro, state, batch):
    det = bro.act(state, batch.obs, jax.random.key(0), True)
    np.testing.assert_allclose(det, jnp.tanh(jax.vmap(state.actor.distribution)(batch.obs)[0]))
    key = jax.random.key(3)
    explore = bro.act(state, batch.obs, key, False)
    noise = jax.random.normal(key, (4, 2), jnp.float32)
    # π_o starts as π_c with σ scaled by 0.75 (its output layer starts at zero)
    mean, log_std = jax.vmap(state.actor.distribution)(batch.obs)
    np.testing.assert_allclose(explore, jnp.tanh(mean + 0.75 * jnp.exp(log_std) * noise), atol=1e-6)


def test_update_under_jit_and_vmap_over_seeds(updated):
    new, metrics = updated
    assert metrics["critic_loss"].shape == (2,)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values())
    assert np.all(np.asarray(new.updates) == 2)
    # the seeds differ, so do their critics
    w = new.critic.net.stem.weight
    assert not np.allclose(w[0], w[1])
    # β falls and λ rises while KL(π_o ‖ π_c) is above its target, and vice versa
    above = np.asarray(metrics["optimism_kl"]) > CFG.kl_target * 2
    beta, kl_weight = (
        np.asarray(metrics["optimism_beta"]),
        np.asarray(metrics["optimism_kl_weight"]),
    )
    np.testing.assert_array_equal(beta < 1.0, above)
    np.testing.assert_array_equal(kl_weight > 0.25, above)


def test_without_optimism_explores_with_the_conservative_actor(state, batch):
    bro = BRO(BROConfig(**{**CFG.__dict__, "optimism": False}), 3, 2)
    key = jax.random.key(4)
    noise = jax.random.normal(key, (4, 2), jnp.float32)
    want = jax.vmap(state.actor.sample)(batch.obs, noise)[0]
    np.testing.assert_allclose(bro.act(state, batch.obs, key, False), want)


def test_full_reset_schedule():
    rr10 = BRO(CFG, 3, 2, replay_ratio=10.0, learning_starts=2500)
    assert rr10.reset_updates == tuple(10 * (s - 2500) for s in (15_000, 50_000, 250_000, 500_000,
                                                                 750_000))  # fmt: skip
    assert BRO(CFG, 3, 2, replay_ratio=2.0, learning_starts=2500).reset_updates == (25_000,)
    custom = BROConfig(**{**CFG.__dict__, "full_resets": ()})
    assert BRO(custom, 3, 2).reset_updates == ()


def test_full_reset_redraws_everything_but_the_count(bro, state, updated, batch):
    trained = member(updated[0], 0)
    point = bro.reset_updates[0]  # (15000 - 100) * 2
    key = jax.random.split(jax.random.key(1), 2)[0]  # the key `state` was drawn with
    run = jax.jit(bro.scheduled)
    kept, m = run(trained, batch, key, jnp.int32(point - 1))
    assert float(m["full_reset"]) == 0.0 and eqx.tree_equal(kept, trained)
    reset, m = run(trained, batch, key, jnp.int32(point))
    assert float(m["full_reset"]) == 1.0 and int(reset.updates) == int(trained.updates) == 2
    redrawn = eqx.filter(reset, eqx.is_inexact_array)
    for got, want in zip(
        jax.tree.leaves(redrawn),
        jax.tree.leaves(eqx.filter(state, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_grama_preset_and_validation():
    preset = grama_preset("redo")
    assert preset["reset_tau"] == 0.02 and preset["replay_ratio"] == 2.0
    assert grama_preset()["reset_tau"] == 0.01 and grama_preset()["reset_period"] == 1000
    cfg = preset["bro"]
    assert (cfg.actor_blocks, cfg.critic_blocks, cfg.critic_width, cfg.actor_width) == (1, 2, 256,
                                                                                        256)  # fmt: skip
    assert (cfg.actor_lr, cfg.critic_lr, cfg.batch_size) == (1e-4, 1e-3, 128)
    cfg.validate()
    with pytest.raises(ValueError, match="critic_blocks"):
        BROConfig(critic_blocks=5).validate()
    with pytest.raises(ValueError, match="reset must be"):
        grama_preset("shrink")


@pytest.mark.parametrize("blocks", [1, 4])
def test_block_count_scales_the_networks(blocks):
    cfg = BROConfig(**{**CFG.__dict__, "critic_blocks": blocks, "actor_blocks": blocks})
    state = jax.eval_shape(BRO(cfg, 3, 2).init, jax.random.key(0))
    assert len(state.critic.net.blocks) == blocks and len(state.actor.net.blocks) == blocks
    assert len(state.optimistic_actor.net.blocks) == blocks


def test_anatomy_of_the_twin_critics(bro, state):
    w, obs, act = CFG.critic_width, 3, 2
    fn = lambda m, o, a: eqx.filter_vmap(lambda c: c(o, a))(m)
    anatomy = ns.anatomy(state.critic, jnp.zeros(obs), jnp.zeros(act), fn=fn)
    assert anatomy.names == ("net.stem", "net.blocks[0].dense1", "net.blocks[0].dense2",
                             "net.blocks[1].dense1", "net.blocks[1].dense2", "net.head")  # fmt: skip
    stream = anatomy.filter(shared=True)
    assert [g.name for g in stream] == ["net.stem", "net.blocks[0].dense2", "net.blocks[1].dense2"]
    stem = anatomy["net.stem"]
    assert stem.members == (2,) and stem.unit_shape == (2, w)
    unit = np.arange(2 * w).reshape(2, w)
    own = {s.path: s.element_owner() for s in stem.incoming}
    # the stem reads concat(obs, action): every input column of a unit's row is its own
    np.testing.assert_array_equal(
        own[".net.stem.weight"], np.broadcast_to(unit[:, :, None], (2, w, obs + act))
    )
    per_unit = {s.path: s.element_owner() for s in anatomy["net.blocks[0].dense1"].per_unit}
    assert set(per_unit) == {".net.blocks[0].norm1.weight", ".net.blocks[0].norm1.bias"}
    np.testing.assert_array_equal(per_unit[".net.blocks[0].norm1.weight"], unit)
    outgoing = {s.path for s in stem.outgoing}
    assert outgoing == {".net.blocks[0].dense1.weight", ".net.blocks[1].dense1.weight",
                        ".net.head.weight"}  # fmt: skip
    assert anatomy["net.head"].output and [g.name for g in anatomy.resettable] == [
        "net.blocks[0].dense1", "net.blocks[1].dense1"]  # fmt: skip


def test_anatomy_of_the_actors(bro, state):
    w, obs, act = CFG.actor_width, 3, 2
    actor = ns.anatomy(state.actor, jnp.zeros(obs), fn=lambda m, o: m.distribution(o))
    assert [g.name for g in actor.filter(shared=True)] == ["net.stem", "net.blocks[0].dense2"]
    optimistic = ns.anatomy(
        state.optimistic_actor, jnp.zeros(obs), jnp.zeros(act), jnp.zeros(act),
        fn=lambda m, o, mc, ls: m.distribution(o, mc, ls, 0.75),
    )  # fmt: skip
    stem = optimistic["net.stem"]
    own = {s.path: s.element_owner() for s in stem.incoming}
    assert own[".net.stem.weight"].shape == (w, obs + act)
    np.testing.assert_array_equal(own[".net.stem.weight"][:, -1], np.arange(w))
    per_unit = {s.path for s in stem.per_unit}
    assert per_unit == {".net.stem_norm.weight", ".net.stem_norm.bias"}


def test_surgery_step_scores_and_resets_every_network(bro, state, batch):
    from types import SimpleNamespace

    from agents._neurons import neuron_step

    config = SimpleNamespace(reset="regrama", reset_tau=0.5, reset_max_fraction=1.0,
                             reset_networks=("critic", "actor", "optimistic_actor"))  # fmt: skip
    new, metrics = jax.jit(lambda s, k: neuron_step(bro, config, s, batch, k))(
        state, jax.random.key(0)
    )
    for name in config.reset_networks:
        assert f"surgery/{name}/grama" in metrics and f"surgery/{name}/reset" in metrics
    assert any(float(metrics[f"surgery/{n}/reset"]) > 0 for n in ("critic", "actor"))
    assert jax.tree.structure(new) == jax.tree.structure(state)
