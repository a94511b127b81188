"""BRO: losses and targets against NumPy, optimism tuning, full resets, anatomy of its networks."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents import BRO, BROConfig, grama_preset
from agents.algorithms._bro import ADJUST_LOG_MAX, ADJUST_LOG_MIN, gaussian_kl, quantile_huber

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
def batch(random_batch):
    return random_batch([0.0, 1.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def updated(bro, seeds, batch):
    """Two updates of both seeds by one compiled, vmapped update."""
    step = jax.jit(jax.vmap(lambda s, k: bro.update(s, batch, k, 0)))
    keys = jax.random.split(jax.random.key(2), 2)
    new, _ = step(seeds, keys)
    return step(new, keys)


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
        q = [np.asarray(state.target_critic.members[m](batch.next_obs[i], a)) for m in range(2)]
        soft = (q[0] + q[1]) / 2 - alpha * float(logp)
        want = float(batch.reward[i]) + 0.9 * (1 - float(batch.terminated[i])) * soft
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_critic_objective_is_the_quantile_loss_of_both_critics(bro, state, batch):
    objective = bro.critic_objective(state, batch, jax.random.key(6))
    (obs, action), (target,) = objective.inputs, objective.targets
    want = [
        sum(
            float(quantile_huber(state.critic.members[m](obs[i], action[i]), target[i]))
            for m in range(2)
        )
        for i in range(4)
    ]
    np.testing.assert_allclose(float(objective.batch_loss(state.critic)), np.mean(want), rtol=1e-5)


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
    w = new.critic.members[0].net.stem.weight
    assert not np.allclose(w[0], w[1])


def test_optimism_starts_below_its_kl_target(bro, seeds, batch):
    """π_o starts as π_c's mean with a narrower σ: the KL that the duals follow is the mean
    shift's, 0 at first (not the 0.069 per dimension that σ_o = 0.75 σ_c alone would add), so
    the first update raises β and lowers λ."""
    step = jax.jit(jax.vmap(lambda s, k: bro.update(s, batch, k, 0)))
    _, metrics = step(seeds, jax.random.split(jax.random.key(2), 2))
    np.testing.assert_array_equal(np.asarray(metrics["optimism_kl"]), 0.0)
    assert np.all(np.asarray(metrics["optimism_beta"]) > 1.0)
    assert np.all(np.asarray(metrics["optimism_kl_weight"]) < 0.25)


def test_optimism_kl_is_the_mean_shift_per_dimension(bro, state, batch):
    rng = np.random.default_rng(4)
    head = state.optimistic_actor.net.head
    shifted = eqx.tree_at(
        lambda s: s.optimistic_actor.net.head.weight,
        state,
        jnp.asarray(rng.normal(size=head.weight.shape) * 0.05, jnp.float32),
    )
    noise = jnp.zeros((4, 2), jnp.float32)
    sample = lambda o, n: bro.optimistic_sample(shifted.actor, shifted.optimistic_actor, o, n)
    _, _, kl = jax.vmap(sample)(batch.obs, noise)
    mean_c, log_std_c = (
        np.asarray(x, np.float64) for x in jax.vmap(state.actor.distribution)(batch.obs)
    )
    mean_o, log_std_o = jax.vmap(
        lambda o, m, ls: shifted.optimistic_actor.distribution(o, m, ls, 0.75)
    )(batch.obs, jnp.asarray(mean_c, jnp.float32), jnp.asarray(log_std_c, jnp.float32))
    np.testing.assert_allclose(np.exp(log_std_o), 0.75 * np.exp(log_std_c), rtol=1e-5)
    want = np.sum((np.asarray(mean_o) - mean_c) ** 2 / (2 * np.exp(2 * log_std_c)), axis=1)
    assert np.all(want > 0)
    np.testing.assert_allclose(np.asarray(kl), want, rtol=1e-4)


def test_dual_update_of_beta_and_kl_weight_by_hand():
    """Adam (lr 3e-5, b1 0.5) on the raw parameters p, log β = −10 + 8.75·(1 + tanh p), of
    β·(KL − target) and −λ·(KL − target), recomputed in NumPy over KLs (per dimension) above,
    then below, the target."""
    bro = BRO(dataclasses.replace(CFG, kl_target=0.5), 3, 4)
    opt = bro._optimizers()[3]
    raw = bro.init(jax.random.key(0)).adjust
    opt_state = opt.init(raw)
    span = ADJUST_LOG_MAX - ADJUST_LOG_MIN
    p = np.array([np.arctanh(2 * (np.log(v) - ADJUST_LOG_MIN) / span - 1) for v in (1.0, 0.25)])
    np.testing.assert_allclose(raw, p, rtol=1e-6)
    m, v = np.zeros(2), np.zeros(2)
    betas, weights = [], []
    for t, kl in enumerate([0.75, 0.75, 0.25, 0.25], start=1):
        raw, opt_state, _ = bro.adjust_step(opt, raw, opt_state, jnp.float32(kl))
        log_value = ADJUST_LOG_MIN + 0.5 * span * (np.tanh(p) + 1)
        grad = np.array([1.0, -1.0]) * np.exp(log_value) * (kl - 0.5)
        grad *= 0.5 * span * (1 - np.tanh(p) ** 2)
        m, v = 0.5 * m + 0.5 * grad, 0.999 * v + 0.001 * grad**2
        p = p - 3e-5 * (m / (1 - 0.5**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(raw, p, rtol=1e-5)
        beta, kl_weight = np.asarray(bro.optimism_weights(raw))
        betas.append(beta)
        weights.append(kl_weight)
    # above the target β falls and λ rises; below it, the other way round
    assert betas[0] < 1.0 and betas[1] < betas[0] and betas[2] > betas[1] and betas[3] > betas[2]
    assert weights[0] > 0.25 and weights[1] > weights[0] and weights[3] < weights[2] < weights[1]
    # the first step moves log β by lr × d log β / dp = 3e-5 × 8.75 × (1 − tanh² p0)
    np.testing.assert_allclose(
        np.log(betas[0]), -3e-5 * 0.5 * span * (1 - (10 / 8.75 - 1) ** 2), rtol=1e-2
    )  # float32: log β is −10 + 10.0003, good to about 1e-6


def test_without_optimism_explores_with_the_conservative_actor(state, batch):
    bro = BRO(BROConfig(**{**CFG.__dict__, "optimism": False}), 3, 2)
    key = jax.random.key(4)
    noise = jax.random.normal(key, (4, 2), jnp.float32)
    want = jax.vmap(state.actor.sample)(batch.obs, noise)[0]
    np.testing.assert_allclose(bro.act(state, batch.obs, key, False), want)


def test_full_reset_schedule():
    rr10 = BRO(CFG, 3, 2, replay_ratio=10.0, learning_starts=2500)
    points = (15_000, 50_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000)
    assert rr10.reset_updates == tuple(10 * (s - 2500) for s in points)
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
    assert preset["reset"].method == "redo" and preset["reset"].tau == 0.02
    assert preset["replay_ratio"] == 2.0 and preset["surgery"].tau == 0.02
    regrama = grama_preset()
    assert regrama["reset"].tau == 0.01 and regrama["reset"].every == 1000
    assert regrama["reset"].strategy() == ns.strategy("regrama", tau=0.01, every=1000)
    cfg = preset["bro"]
    assert (cfg.actor_blocks, cfg.critic_blocks, cfg.critic_width, cfg.actor_width) == (
        1,
        2,
        256,
        256,
    )
    assert (cfg.actor_lr, cfg.critic_lr, cfg.batch_size) == (1e-4, 1e-3, 128)
    cfg.validate()
    with pytest.raises(ValueError, match="critic_blocks"):
        BROConfig(critic_blocks=5).validate()
    with pytest.raises(ValueError, match="init_kl_weight"):
        BROConfig(init_kl_weight=1e-6).validate()
    with pytest.raises(ValueError, match="reset must be"):
        grama_preset("shrink")


def test_orthogonal_init_gains(state):
    """Hidden layers gain √2, critic heads √2, π_c's mean units √2 and log σ units 1, π_o's
    output zero: Wᵀ W = gain² I for a layer (stored `(in, out)`) with no more outputs than
    inputs."""

    def gram(w):
        w = np.asarray(w, np.float64)
        return w.T @ w

    critic = state.critic.members[0].net
    np.testing.assert_allclose(gram(critic.blocks[0].dense1.weight), 2 * np.eye(8), atol=1e-5)
    np.testing.assert_allclose(gram(critic.head.weight), 2 * np.eye(5), atol=1e-5)
    stem = np.asarray(critic.stem.weight, np.float64)  # 8 units on 5 inputs: rows orthogonal
    np.testing.assert_allclose(stem @ stem.T, 2 * np.eye(5), atol=1e-5)
    head = np.asarray(state.actor.net.head.weight, np.float64)
    np.testing.assert_allclose(gram(head[:, :2]), 2 * np.eye(2), atol=1e-5)
    np.testing.assert_allclose(gram(head[:, 2:]), np.eye(2), atol=1e-5)
    assert not np.any(np.asarray(state.optimistic_actor.net.head.weight))
    for layer in (critic.stem, critic.head, state.actor.net.head):
        assert not np.any(np.asarray(layer.bias))


@pytest.mark.parametrize("blocks", [1, 4])
def test_block_count_scales_the_networks(blocks):
    cfg = BROConfig(**{**CFG.__dict__, "critic_blocks": blocks, "actor_blocks": blocks})
    state = jax.eval_shape(BRO(cfg, 3, 2).init, jax.random.key(0))
    assert all(len(c.net.blocks) == blocks for c in state.critic.members)
    assert len(state.actor.net.blocks) == blocks
    assert len(state.optimistic_actor.net.blocks) == blocks


def test_anatomy_of_the_twin_critics(bro, state):
    w, obs, act = CFG.critic_width, 3, 2
    anatomy = ns.anatomy(state.critic, jnp.zeros(obs), jnp.zeros(act))
    layers = ("net.stem", "net.blocks[0].dense1", "net.blocks[0].dense2")
    layers += ("net.blocks[1].dense1", "net.blocks[1].dense2", "net.head")
    assert anatomy.names == tuple(f"members[{m}].{n}" for m in range(2) for n in layers)
    stream = anatomy.filter(shared=True)
    assert [g.name for g in stream] == [
        f"members[{m}].{n}"
        for m in range(2)
        for n in ("net.stem", "net.blocks[0].dense2", "net.blocks[1].dense2")
    ]
    stem = anatomy["members[1].net.stem"]
    assert stem.members == () and stem.unit_shape == (w,)
    unit = np.arange(w)
    own = {s.path: s.element_owner() for s in stem.incoming}
    # the stem reads concat(obs, action): every input row of a unit's column is its own
    np.testing.assert_array_equal(
        own[".members[1].net.stem.weight"], np.broadcast_to(unit[None, :], (obs + act, w))
    )
    dense1 = anatomy["members[1].net.blocks[0].dense1"]
    per_unit = {s.path: s.element_owner() for s in dense1.per_unit}
    norm = ".members[1].net.blocks[0].norm1"
    assert set(per_unit) == {f"{norm}.weight", f"{norm}.bias"}
    np.testing.assert_array_equal(per_unit[f"{norm}.weight"], unit)
    outgoing = {s.path for s in stem.outgoing}
    assert outgoing == {
        ".members[1].net.blocks[0].dense1.weight",
        ".members[1].net.blocks[1].dense1.weight",
        ".members[1].net.head.weight",
    }
    assert anatomy["members[0].net.head"].output
    assert [g.name for g in anatomy.resettable] == [
        f"members[{m}].net.blocks[{b}].dense1" for m in range(2) for b in range(2)
    ]


def test_anatomy_of_the_actors(bro, state):
    w, obs, act = CFG.actor_width, 3, 2
    actor = ns.anatomy(state.actor, jnp.zeros(obs), fn=lambda m, o: m.distribution(o))
    assert [g.name for g in actor.filter(shared=True)] == ["net.stem", "net.blocks[0].dense2"]
    optimistic = ns.anatomy(
        state.optimistic_actor,
        jnp.zeros(obs),
        jnp.zeros(act),
        jnp.zeros(act),
        fn=lambda m, o, mc, ls: m.distribution(o, mc, ls, 0.75),
    )
    stem = optimistic["net.stem"]
    own = {s.path: s.element_owner() for s in stem.incoming}
    assert own[".net.stem.weight"].shape == (obs + act, w)
    np.testing.assert_array_equal(own[".net.stem.weight"][-1], np.arange(w))
    per_unit = {s.path for s in stem.per_unit}
    assert per_unit == {".net.stem_norm.weight", ".net.stem_norm.bias"}


def test_surgery_step_scores_and_resets_every_network(bro, state, batch):
    from agents import ResetConfig, SurgeryConfig, TrainConfig
    from agents.training import Surgery

    networks = ("critic", "actor", "optimistic_actor")
    config = TrainConfig(
        agent="bro",
        surgery=SurgeryConfig(networks=networks),
        reset=ResetConfig(method="regrama", tau=0.5, networks=networks, every=1),
    )
    surgery = Surgery.of(config)
    states = surgery.init(bro, state, batch, jax.random.key(0))

    @jax.jit
    def step(s, states, k):
        return surgery.step(bro, s, states, batch, k, jnp.int32(1), jnp.int32(0))

    new, _, metrics = step(state, states, jax.random.key(0))
    for name in networks:
        assert f"surgery/{name}/grama" in metrics and f"surgery/{name}/reset" in metrics
    assert any(float(metrics[f"surgery/{n}/reset"]) > 0 for n in ("critic", "actor"))
    assert jax.tree.structure(new) == jax.tree.structure(state)
