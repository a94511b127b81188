"""Neuron surgery inside SAC training: scores logged per network and layer, resets in the window."""

import dataclasses
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import agents
import agents.testing
import neurosurgery as ns
from agents._neurons import neuron_step
from agents._sinks import read_metrics
from tests.test_trainer import BASE


def _setup(**overrides):
    config = dataclasses.replace(BASE, seeds=(0,), **overrides)
    env = agents.testing.PointMass(2, 20)
    agent = agents.SAC(config.sac, env.observation_size, env.action_size)
    state = agent.init(jax.random.key(0))
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    batch = agents.Batch(
        obs=jax.random.normal(k1, (16, env.observation_size)),
        action=jnp.tanh(jax.random.normal(k2, (16, env.action_size))),
        reward=jax.random.normal(k3, (16,)),
        next_obs=jax.random.normal(k1, (16, env.observation_size)),
        terminated=jnp.zeros(16),
    )
    return config, agent, state, batch


def _step(agent, config, state, batch, in_window=True):
    fn = eqx.filter_jit(lambda s, b, w: neuron_step(agent, config, s, b, jax.random.key(2), w))
    return fn(state, batch, jnp.asarray(in_window))


def test_scores_of_every_metric_are_logged_per_network_and_layer():
    config, agent, state, batch = _setup(reset="none", reset_networks=("critic", "actor"))
    new, metrics = _step(agent, config, state, batch)
    for net in ("critic", "actor"):
        for metric in ("grama", "grama_act", "grama_weight", "dormant"):
            assert f"surgery/{net}/{metric}" in metrics
    layers = [k for k in metrics if k.startswith("surgery/critic/grama/")]
    assert len(layers) == 2 * config.sac.critic.depth  # one entry per hidden layer of each twin
    assert not any("/reset" in k for k in metrics)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


def test_logged_ratio_matches_a_direct_computation():
    config, agent, state, batch = _setup(reset="none", reset_tau=0.5)
    _, metrics = _step(agent, config, state, batch)
    target = agent.surgery_targets(state, batch, jax.random.split(jax.random.key(2))[0])["critic"]
    anatomy = ns.anatomy(target.model, batch.obs[0], batch.action[0], fn=target.call)
    _, obs = ns.observe(anatomy, target.model, target.loss, *target.inputs)
    scores, _ = ns.Dormant().score(anatomy, obs, ())
    for g in anatomy.hidden:
        expected = float(jnp.mean(scores[g.name] <= 0.5))
        assert float(metrics[f"surgery/critic/dormant/{g.name}"]) == expected


def test_resets_only_inside_the_window():
    # τ = 1: about half of every layer's units score below the layer mean and are reset
    config, agent, state, batch = _setup(reset="regrama", reset_tau=1.0)
    new, metrics = _step(agent, config, state, batch)
    assert float(metrics["surgery/critic/reset"]) > 0
    assert not np.array_equal(
        new.critic.members[0].net.layers[0].linear.weight,
        state.critic.members[0].net.layers[0].linear.weight,
    )
    np.testing.assert_array_equal(
        new.actor.net.layers[0].linear.weight, state.actor.net.layers[0].linear.weight
    )
    outside, metrics = _step(agent, config, state, batch, in_window=False)
    assert float(metrics["surgery/critic/reset"]) == 0
    for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(outside), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_training_with_regrama_logs_and_resets(tmp_path, capsys):
    config = dataclasses.replace(BASE, reset="regrama", reset_tau=1.0, reset_period=50,
                                 run_dir=str(tmp_path / "run"), sinks=("csv", "console"),
                                 progress=True)  # fmt: skip
    summary = agents.train(config)
    assert summary["updates"] > 0
    out = capsys.readouterr()
    # the progress bar and the console show the critics' GraMa-inactive percentage
    shown = re.findall(r"critic_inactive=(\d+\.\d)%", out.err)
    logged: dict[int, list[float]] = {}
    curves = read_metrics(tmp_path / "run" / "metrics.csv")["surgery/critic/grama"]
    for points in curves.values():
        for step, value in points:
            if np.isfinite(value):
                logged.setdefault(step, []).append(value)
    assert shown and shown[-1] == f"{100 * np.mean(logged[max(logged)]):.1f}"
    assert re.search(r"surgery/critic/grama \d", out.out)
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert (
        "surgery/critic/reset" in text
        and "surgery/critic/grama/members[1].net.layers[0].linear" in text
    )
    assert (tmp_path / "run" / "inactive.png").exists()
