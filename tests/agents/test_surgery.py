"""Neuron surgery inside training, through the library's pipeline: scores logged per network and
layer, resets when the strategy is due, a user's own metric and strategy."""

import dataclasses
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
import envs
import neurosurgery as ns
from agents.training import Surgery, read_metrics

from ..user_metrics import Start

pytestmark = pytest.mark.usefixtures("quick_compiles")


@dataclasses.dataclass(frozen=True)
class FiringRate:
    """A user's metric: the fraction of samples on which a unit is active, over the layer mean."""

    name: str = "firing_rate"

    def init(self, anatomy):
        return ns.EmptyState()

    def score(self, anatomy, observation, state):
        fired = {k: (v > 0).astype(jnp.float32) for k, v in observation.activations.items()}
        return {k: ns.normalise(jnp.mean(v, axis=(0, 1))) for k, v in fired.items()}, state


@dataclasses.dataclass(frozen=True)
class Steps:
    """A stateful user metric: counts the surgery steps it has seen (to check states flow)."""

    name: str = "steps"

    def init(self, anatomy):
        return {g.name: jnp.zeros(()) for g in anatomy.observed}

    def score(self, anatomy, observation, state):
        state = {k: v + 1 for k, v in state.items()}
        return {k: jnp.full(anatomy[k].unit_shape, v) for k, v in state.items()}, state


def _setup(base_config, **overrides):
    config = dataclasses.replace(base_config, seeds=(0,), **overrides)
    config.validate()
    env = envs.make("test/point-mass", num_envs=2, episode_length=20)
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
    surgery = Surgery.of(config)
    return surgery, agent, state, surgery.init(agent, state, batch, jax.random.key(0)), batch


def _step(surgery, agent, state, states, batch, updates=1000, since=998):
    fn = eqx.filter_jit(
        lambda s, st, b, u, p: surgery.step(agent, s, st, b, jax.random.key(2), u, p)
    )
    return fn(state, states, batch, jnp.int32(updates), jnp.int32(since))


def same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_scores_of_every_metric_are_logged_per_network_and_layer(base_config):
    surgery_config = agents.SurgeryConfig(networks=("critic", "actor"))
    surgery, agent, state, states, batch = _setup(base_config, surgery=surgery_config)
    new, _, metrics = _step(surgery, agent, state, states, batch)
    for net in ("critic", "actor"):
        for metric in ("grama", "grama_activation", "grama_weight", "dormant"):
            assert f"surgery/{net}/{metric}" in metrics
    layers = [k for k in metrics if k.startswith("surgery/critic/grama/")]
    assert len(layers) == 2 * base_config.sac.critic.depth  # each hidden layer of each twin
    assert not any("/reset" in k or "/flagged" in k for k in metrics)
    same(state, new)


def test_logged_ratio_and_mean_score_match_a_direct_computation(base_config):
    """The fraction <= tau (each metric's own tau where `taus` gives one) and, with `means`,
    the mean score per layer and per hidden unit, against numpy on the same scores."""
    taus = {"grama": 0.8}
    surgery_config = agents.SurgeryConfig(
        metrics=("dormant", "grama"), tau=0.5, taus=tuple(taus.items()), means=True
    )
    surgery, agent, state, states, batch = _setup(base_config, surgery=surgery_config)
    _, _, metrics = _step(surgery, agent, state, states, batch)
    k_objectives = jax.random.split(jax.random.key(2))[0]
    objective = agent.objectives(state, batch, k_objectives)["critic"]
    anatomy = ns.anatomy(objective.model, batch.obs[0], batch.action[0], fn=objective.call)
    _, obs = ns.observe(anatomy, objective.model, objective.loss_of_outputs, *objective.inputs)
    for metric in (ns.Dormant(), ns.metric("grama")):
        tau = taus.get(metric.name, 0.5)
        scores, _ = metric.score(anatomy, obs, metric.init(anatomy))
        hidden = {g.name: np.asarray(scores[g.name], np.float64) for g in anatomy.hidden}
        for name, s in hidden.items():
            got = float(metrics[f"surgery/critic/{metric.name}/{name}"])
            assert got == pytest.approx(np.mean(s <= tau), abs=1e-7)
            got = float(metrics[f"surgery/critic/mean/{metric.name}/{name}"])
            assert got == pytest.approx(np.mean(s), rel=1e-5)
        every = np.concatenate([s.ravel() for s in hidden.values()])
        assert 0 < np.mean(every <= tau) < 1, (metric.name, tau)  # a threshold that tells
        if metric.name in taus:  # and the metric's own tau flags other units than the shared
            assert np.mean(every <= tau) != np.mean(every <= 0.5)
        got = float(metrics[f"surgery/critic/{metric.name}"])
        assert got == pytest.approx(np.mean(every <= tau), rel=1e-6)
        got = float(metrics[f"surgery/critic/mean/{metric.name}"])
        assert got == pytest.approx(np.mean(every), rel=1e-5)


def test_a_tau_for_a_metric_that_is_not_logged_is_refused(base_config):
    surgery = agents.SurgeryConfig(metrics=("grama",), taus=(("dormant", 0.1),))
    with pytest.raises(
        ValueError,
        match=r"surgery.taus: dormant is not logged \(surgery.metrics: "
        r"grama\); log it or leave its tau out",
    ):
        dataclasses.replace(base_config, surgery=surgery).validate()
    surgery = agents.SurgeryConfig(metrics=("grama",), taus=(("grama", -1.0),))
    with pytest.raises(
        ValueError, match=re.escape("surgery.taus: grama's tau must be >= 0, got -1.0")
    ):
        dataclasses.replace(base_config, surgery=surgery).validate()


def test_resets_only_when_the_strategy_is_due(base_config):
    # τ = 1: about half of every layer's units score below the layer mean and are reset
    reset = agents.ResetConfig(method="regrama", tau=1.0, every=1000, start=0, end=3000)
    surgery, agent, state, states, batch = _setup(base_config, reset=reset)
    new, _, metrics = _step(surgery, agent, state, states, batch)
    assert float(metrics["surgery/critic/reset"]) > 0
    assert float(metrics["surgery/critic/flagged"]) > 0
    assert not np.array_equal(
        new.critic.members[0].net.layers[0].linear.weight,
        state.critic.members[0].net.layers[0].linear.weight,
    )
    np.testing.assert_array_equal(
        new.actor.net.layers[0].linear.weight, state.actor.net.layers[0].linear.weight
    )
    for updates, since in ((1500, 1498), (3000, 2998)):  # between points; at the window's end
        outside, _, metrics = _step(surgery, agent, state, states, batch, updates, since)
        assert float(metrics["surgery/critic/reset"]) == 0
        same(state, outside)


def test_a_users_metric_is_logged_and_its_state_carried(base_config):
    surgery_config = agents.SurgeryConfig(
        metrics=(FiringRate(), Steps(), Start(), "dormant"), tau=0.0
    )
    surgery, agent, state, states, batch = _setup(base_config, surgery=surgery_config)
    # a metric whose init takes the parameters starts from the network's own
    critic = agent.objectives(state, batch, jax.random.key(0))["critic"].model
    start = states["critic"]["metrics"]["start"]
    want = jax.tree_util.tree_leaves(eqx.filter(critic, eqx.is_array))
    assert len(start) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(start, want, strict=True))
    _, states, metrics = _step(surgery, agent, state, states, batch)
    _, states, metrics = _step(surgery, agent, state, states, batch)
    layer = "members[0].net.layers[0].linear"
    # a ReLU unit that never fires has both scores 0
    np.testing.assert_allclose(
        metrics[f"surgery/critic/firing_rate/{layer}"], metrics[f"surgery/critic/dormant/{layer}"]
    )
    assert all(float(v) == 2.0 for v in jax.tree.leaves(states["critic"]["metrics"]["steps"]))


@dataclasses.dataclass(frozen=True)
class Broken:
    """A user's metric gone wrong: `score` returns what `how` says."""

    how: str
    name: str = "broken"

    def init(self, anatomy):
        return ns.EmptyState()

    def score(self, anatomy, observation, state):
        if self.how == "none":
            return None
        return {k: jnp.mean(v, axis=(0, 1, 2)) for k, v in observation.activations.items()}, state


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("none", r"metric 'broken': score\(anatomy, observation, state\) returned NoneType"),
        ("shape", r"metric 'broken': the scores of group '.*' have shape \(\), the group's"),
    ],
)
def test_a_broken_metric_is_named_at_its_first_call(base_config, how, error):
    """A metric whose `score` returns None, or a scalar per layer, fails at its first call in
    a training step with what is wrong, not with a TypeError deep in the step."""
    surgery_config = agents.SurgeryConfig(metrics=(Broken(how),), tau=0.0)
    surgery, agent, state, states, batch = _setup(base_config, surgery=surgery_config)
    with pytest.raises((TypeError, ValueError), match=error):
        _step(surgery, agent, state, states, batch)


def test_a_users_strategy_drives_the_resets(base_config):
    """A strategy built from the user's metric, selection and schedule resets the units it
    flags: every unit of the first critic layer that never fires."""
    strategy = ns.Resetter(
        FiringRate(), lambda scores: ns.threshold(scores, 0.0), ns.Schedule(every=500)
    )
    reset = agents.ResetConfig(method=strategy, networks=("critic",))
    surgery, agent, state, states, batch = _setup(base_config, reset=reset)
    # kill four units of the first critic's first layer
    path = lambda s: s.critic.members[0].net.layers[0].linear.bias
    state = eqx.tree_at(path, state, path(state).at[:4].set(-1e3))
    new, _, metrics = _step(surgery, agent, state, states, batch)
    layer = "members[0].net.layers[0].linear"
    assert float(metrics[f"surgery/critic/reset/{layer}"]) >= 4 / 16
    assert (path(new)[:4] > -1e3).all()  # re-drawn


def test_training_with_regrama_logs_and_resets(base_config, tmp_path, capsys):
    config = dataclasses.replace(
        base_config,
        surgery=agents.SurgeryConfig(every=50),
        reset=agents.ResetConfig(method="regrama", tau=1.0, every=50),
        run_dir=str(tmp_path / "run"),
        sinks=("csv", "console"),
        progress=True,
    )
    summary = agents.train(config)
    assert summary["updates"] > 0
    out = capsys.readouterr()
    # the progress bar and the console show the fraction the strategy flags on the critics
    shown = re.findall(r"critic_inactive=(\d+\.\d)%", out.err)
    logged: dict[int, list[float]] = {}
    curves = read_metrics(tmp_path / "run" / "metrics.csv")["surgery/critic/flagged"]
    for points in curves.values():
        for step, value in points:
            if np.isfinite(value):
                logged.setdefault(step, []).append(value)
    assert shown and shown[-1] == f"{100 * np.mean(logged[max(logged)]):.1f}"
    assert re.search(r"surgery/critic/flagged \d", out.out)
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert (
        "surgery/critic/reset" in text
        and "surgery/critic/grama/members[1].net.layers[0].linear" in text
    )
    assert (tmp_path / "run" / "inactive.png").exists()
