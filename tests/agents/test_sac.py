"""SAC pieces checked against independent NumPy computations."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
from agents import SAC, Batch, NetworkConfig, SACConfig, TwinCritic
from agents.algorithms._sac import twin_q
from agents.networks import Dense

NET = NetworkConfig(width=8, depth=1)


def np_mlp(mlp: agents.MLP, x: np.ndarray, act=lambda h: np.maximum(h, 0.0)) -> np.ndarray:
    """Forward pass of a plain MLP in NumPy (float64), from its weights."""
    for layer in mlp.layers:
        x = act(x @ np.asarray(layer.linear.weight, np.float64) + np.asarray(layer.linear.bias))
    return x @ np.asarray(mlp.head.weight, np.float64) + np.asarray(mlp.head.bias)


def member(critic: TwinCritic, i: int):
    return critic.members[i]


@pytest.fixture(scope="module")
def sac():
    return SAC(SACConfig(batch_size=4, actor=NET, critic=NET, gamma=0.9, tau=0.25), 3, 2)


@pytest.fixture(scope="module")
def state(sac):
    return sac.init(jax.random.key(0))


@pytest.fixture(scope="module")
def batch(random_batch):
    return random_batch([0.0, 1.0, 0.0, 1.0])


def test_squashed_gaussian_log_prob_matches_numpy():
    rng = np.random.default_rng(1)
    mean, log_std, noise = (rng.normal(size=3) for _ in range(3))
    action, logp = agents.squashed_gaussian(
        jnp.asarray(mean, jnp.float32),
        jnp.asarray(log_std, jnp.float32),
        jnp.asarray(noise, jnp.float32),
    )
    u = mean + np.exp(log_std) * noise
    std = np.exp(log_std)
    log_normal = -((u - mean) ** 2) / (2 * std**2) - np.log(std * math.sqrt(2 * math.pi))
    expected = np.sum(log_normal - np.log(1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(np.asarray(action), np.tanh(u), rtol=1e-5)
    np.testing.assert_allclose(float(logp), expected, rtol=1e-4, atol=1e-4)


def test_log_prob_stable_for_saturated_actions():
    _, logp = agents.squashed_gaussian(jnp.full(2, 30.0), jnp.zeros(2), jnp.zeros(2))
    assert np.isfinite(float(logp))


def test_critic_target_matches_numpy(sac, state, batch):
    key = jax.random.key(5)
    objective = sac.critic_objective(state, batch, key)
    # the next action uses the same noise draw as the objective
    noise = np.asarray(jax.random.normal(key, batch.action.shape, batch.action.dtype), np.float64)
    out = np_mlp(state.actor.net, np.asarray(batch.next_obs, np.float64))
    mean, raw = out[:, :2], out[:, 2:]
    log_std = -5.0 + 0.5 * 7.0 * (np.tanh(raw) + 1.0)
    u = mean + np.exp(log_std) * noise
    a = np.tanh(u)
    logp = np.sum(
        -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi) - np.log(1 - a**2), axis=-1
    )
    x = np.concatenate([np.asarray(batch.next_obs, np.float64), a], axis=-1)
    q = np.stack([np_mlp(member(state.target_critic, i).net, x)[:, 0] for i in range(2)], -1)
    alpha = float(np.exp(state.log_alpha))
    expected = np.asarray(batch.reward) + 0.9 * (1 - np.asarray(batch.terminated)) * (
        q.min(-1) - alpha * logp
    )
    np.testing.assert_allclose(np.asarray(objective.targets[0]), expected, rtol=1e-4, atol=1e-4)
    # per-sample loss: sum over the two critics of the squared TD error; the batch loss its mean
    x0 = np.concatenate([np.asarray(batch.obs, np.float64), np.asarray(batch.action)], -1)
    q0 = np.stack([np_mlp(member(state.critic, i).net, x0)[:, 0] for i in range(2)], -1)
    per_sample = ((q0 - expected[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        float(objective.batch_loss(state.critic)), per_sample.mean(), rtol=1e-4, atol=1e-5
    )
    outputs = jax.vmap(twin_q, in_axes=(None, 0, 0))(state.critic, batch.obs, batch.action)
    np.testing.assert_allclose(
        float(objective.loss_of_outputs(outputs)), per_sample.mean(), rtol=1e-4, atol=1e-5
    )


@pytest.fixture(scope="module")
def updated(sac, state, batch):
    update = eqx.filter_jit(sac.update)
    s0, m0 = update(state, batch, jax.random.key(1), 0)
    s1, m1 = update(s0, batch, jax.random.key(2), 1)
    return s0, m0, s1, m1


def test_soft_target_update(sac, state, updated):
    s0, _, _, _ = updated
    tau = sac.config.tau
    old = jax.tree.leaves(eqx.filter(state.target_critic, eqx.is_array))
    new = jax.tree.leaves(eqx.filter(s0.critic, eqx.is_array))
    got = jax.tree.leaves(eqx.filter(s0.target_critic, eqx.is_array))
    for o, n, g in zip(old, new, got, strict=True):
        np.testing.assert_allclose(
            np.asarray(g), (1 - tau) * np.asarray(o) + tau * np.asarray(n), rtol=1e-6, atol=1e-7
        )


def test_policy_delay_updates_actor_on_phase_zero_only(state, updated):
    s0, m0, s1, m1 = updated
    changed = lambda a, b: any(
        not np.array_equal(x, y)
        for x, y in zip(
            jax.tree.leaves(eqx.filter(a, eqx.is_array)),
            jax.tree.leaves(eqx.filter(b, eqx.is_array)),
            strict=True,
        )
    )
    assert changed(state.actor, s0.actor) and changed(state.critic, s0.critic)
    assert not changed(s0.actor, s1.actor) and changed(s0.critic, s1.critic)
    assert float(s0.log_alpha) != float(state.log_alpha)
    assert float(s1.log_alpha) == float(s0.log_alpha)
    assert {"actor_loss", "alpha_loss", "alpha", "entropy"} <= set(m0) and "actor_loss" not in m1
    assert int(s1.updates) == 2
    # Adam took policy_delay (=2) actor steps on phase 0
    counts = [int(x) for x in jax.tree.leaves(s0.actor_opt) if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and all(c == 2 for c in counts)


def test_alpha_moves_towards_target_entropy(sac, state, updated):
    # α rises when the policy entropy is below the target −|A| and falls when above
    s0, m0, _, _ = updated
    step = float(s0.log_alpha) - float(state.log_alpha)
    assert sac.target_entropy == -2.0
    assert np.sign(step) == np.sign(sac.target_entropy - float(m0["entropy"]))


def test_twin_critics_are_two_networks_that_differ(state):
    w0, w1 = (c.net.layers[0].linear.weight for c in state.critic.members)
    assert w0.shape == w1.shape == (5, 8)  # inputs (obs 3 + actions 2), units
    assert not np.allclose(w0, w1)


@pytest.mark.parametrize("activation", sorted(agents.ACTIVATIONS))
@pytest.mark.parametrize("layer_norm,residual", [(False, False), (True, False), (True, True)])
def test_network_options(activation, layer_norm, residual):
    cfg = NetworkConfig(
        width=6, depth=2, activation=activation, layer_norm=layer_norm, residual=residual
    )
    mlp = agents.MLP(3, 2, cfg, key=jax.random.key(0))
    out = mlp(jnp.ones(3))
    assert out.shape == (2,) and bool(jnp.all(jnp.isfinite(out)))
    n_linear = sum(
        isinstance(x, Dense) for x in jax.tree.leaves(mlp, is_leaf=lambda x: isinstance(x, Dense))
    )
    assert n_linear == (1 + 2 * 2 + 1 if residual else 2 + 1)


def test_unknown_activation_rejected():
    with pytest.raises(ValueError, match="activation"):
        NetworkConfig(activation="swishy").validate("sac.actor")


def test_act_deterministic_and_bounded(sac, state):
    obs = jnp.ones((5, 3))
    a1 = sac.act(state, obs, jax.random.key(0), True)
    a2 = sac.act(state, obs, jax.random.key(1), True)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    a3 = sac.act(state, obs, jax.random.key(1), False)
    assert a3.shape == (5, 2) and bool(jnp.all(jnp.abs(a3) <= 1))


def test_objectives_are_the_update_losses(sac, state, batch):
    """What a surgery step observes is the loss the update differentiates: the same value, and
    the same gradient (through `ns.observe`) as the update's step."""
    import neurosurgery as ns

    objectives = sac.objectives(state, batch, jax.random.key(0))
    assert set(objectives) == set(sac.surgery_networks) == {"critic", "actor"}
    for objective in objectives.values():
        anatomy = ns.anatomy(objective.model, *(x[0] for x in objective.inputs), fn=objective.call)
        value, obs = ns.observe(
            anatomy,
            objective.model,
            objective.loss_of_outputs,
            *objective.inputs,
            has_aux=objective.has_aux,
        )
        direct, grads = eqx.filter_value_and_grad(objective.batch_loss, has_aux=objective.has_aux)(
            objective.model
        )
        np.testing.assert_allclose(
            np.asarray(jax.tree.leaves(value)[0]), np.asarray(jax.tree.leaves(direct)[0]), rtol=1e-6
        )
        for a, b in zip(jax.tree.leaves(obs.weight_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert objectives["actor"].has_aux and not objectives["critic"].has_aux


def test_replay_buffer_wraps_and_samples():
    r = agents.replay_init(5, 1, 1)
    for start in (0, 3):
        v = jnp.arange(start, start + 3, dtype=jnp.float32)
        r = agents.replay_add(r, Batch(v[:, None], v[:, None], v, v[:, None], v))
    assert int(r.size) == 5 and int(r.position) == 1
    np.testing.assert_array_equal(np.asarray(r.data.reward), [5, 1, 2, 3, 4])
    sample = agents.replay_sample(r, jax.random.key(0), 64)
    assert set(np.asarray(sample.reward).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    np.testing.assert_array_equal(np.asarray(sample.obs[:, 0]), np.asarray(sample.reward))


def test_dense_is_linear_transposed():
    """Same function as eqx.nn.Linear with the weight stored (in, out), same initial values."""
    layer = Dense(300, 7, key=jax.random.key(0))
    linear = eqx.nn.Linear(300, 7, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(layer.weight), np.asarray(linear.weight).T)
    np.testing.assert_array_equal(np.asarray(layer.bias), np.asarray(linear.bias))
    assert layer.weight.shape == (300, 7) and layer.bias.shape == (7,)
    bound = 1 / np.sqrt(300)
    for p in (layer.weight, layer.bias):
        p = np.asarray(p)
        assert np.all(np.abs(p) <= bound) and np.abs(p).max() > 0.9 * bound
    # U(-b, b) has standard deviation b/√3
    assert np.std(np.asarray(layer.weight)) == pytest.approx(bound / np.sqrt(3), rel=0.05)
    x = np.random.default_rng(0).normal(size=(4, 300))
    expected = x @ np.asarray(layer.weight, np.float64) + np.asarray(layer.bias, np.float64)
    got = jax.vmap(layer)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_twin_q_values_and_gradients_per_member(state):
    """Each member's Q from its own network (NumPy forward pass), and each member's gradient
    only from its own output."""
    rng = np.random.default_rng(3)
    obs, action = (
        jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
        jnp.asarray(rng.uniform(-1, 1, (6, 2)), jnp.float32),
    )
    q = jax.vmap(twin_q, in_axes=(None, 0, 0))(state.critic, obs, action)
    x = np.concatenate([np.asarray(obs), np.asarray(action)], 1)
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(q[:, i]), np_mlp(member(state.critic, i).net, x)[:, 0], rtol=1e-4, atol=1e-5
        )

    def loss(critic):  # member 0 enters linearly, member 1 not at all
        return jnp.sum(jax.vmap(twin_q, in_axes=(None, 0, 0))(critic, obs, action)[:, 0])

    g = eqx.filter_grad(loss)(state.critic)
    assert float(g.members[0].net.head.bias[0]) == pytest.approx(6.0)  # dq/db = 1 per sample
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g.members[1]))
    h = np.maximum(
        x @ np.asarray(member(state.critic, 0).net.layers[0].linear.weight, np.float64)
        + np.asarray(member(state.critic, 0).net.layers[0].linear.bias),
        0.0,
    )
    np.testing.assert_allclose(
        np.asarray(g.members[0].net.head.weight[:, 0]), h.sum(0), rtol=1e-4, atol=1e-5
    )
