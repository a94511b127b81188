"""Neuron surgery inside training, through the library's public pipeline.

Every `surgery.every` updates (and whenever the reset strategy is due) the compiled update loop
maps each operated network from its own objective (`ns.anatomy` on `objective.call`), observes
the objective on a replay batch (`ns.observe`), logs every configured metric's inactive ratios
per network and per layer, and lets the strategy (`ns.Strategy.step`) reset the network and its
optimizer state. Nothing here knows a metric or a method by name.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

import neurosurgery as ns

from ..algorithms import Agent, Batch, Objective
from ._config import TrainConfig


def _anatomy(objective: Objective) -> ns.Anatomy:
    example = jax.tree.map(lambda x: x[0], objective.inputs)
    return ns.anatomy(objective.model, *example, fn=objective.call)


@dataclasses.dataclass(frozen=True)
class Surgery:
    """The surgery of one run: logged metrics on some networks, a strategy on others."""

    metrics: tuple[ns.Metric, ...]
    log_networks: tuple[str, ...]
    tau: float
    every: int
    strategy: ns.Strategy | None
    reset_networks: tuple[str, ...]
    units: bool = False  # keep per-unit scores and reset counts (`SurgeryConfig.units`)
    taus: tuple[tuple[str, float], ...] = ()  # per-metric tau (`SurgeryConfig.taus`)
    means: bool = False  # log mean scores too (`SurgeryConfig.means`)

    @classmethod
    def of(cls, config: TrainConfig) -> Surgery:
        s, r = config.surgery, config.reset
        metrics = s.built_metrics()
        networks = s.networks if metrics else ()
        return cls(
            metrics,
            networks,
            s.tau,
            s.every,
            r.strategy(),
            r.networks,
            s.units,
            s.taus,
            s.means,
        )

    def tau_of(self, metric: str) -> float:
        """The logged threshold of a metric: its own (`taus`), else `tau`."""
        return dict(self.taus).get(metric, self.tau)

    @property
    def networks(self) -> tuple[str, ...]:
        """Every network a surgery step maps: the logged ones, then the reset ones."""
        reset = self.reset_networks if self.strategy is not None else ()
        return tuple(dict.fromkeys((*self.log_networks, *reset)))

    @property
    def active(self) -> bool:
        return bool(self.networks)

    def _observes(self, name: str) -> bool:
        logged = name in self.log_networks and bool(self.metrics)
        reset = self.strategy is not None and name in self.reset_networks
        return logged or (reset and self.strategy.observes)  # type: ignore[union-attr]

    def init(self, agent: Agent, agent_state: Any, batch: Batch, key: PRNGKeyArray) -> Any:
        """The metrics' and the strategy's states, per network (empty for stateless ones)."""
        objectives = agent.objectives(agent_state, batch, key)
        states: dict[str, Any] = {}
        for name in self.networks:
            anatomy = _anatomy(objectives[name])
            params = eqx.filter(objectives[name].model, eqx.is_array)
            states[name] = {
                "metrics": {m.name: ns.init_state(m, anatomy, params) for m in self.metrics}
                if name in self.log_networks
                else {},
                "strategy": ns.init_state(self.strategy, anatomy, params)
                if self.strategy is not None and name in self.reset_networks
                else ns.EmptyState(),
            }
            if self.units:  # the last per-unit scores and every unit's reset count
                hidden = anatomy.hidden
                logged = self.metrics if name in self.log_networks else ()
                states[name]["units"] = {  # NaN until the first surgery step
                    m.name: {g.name: jnp.full(g.unit_shape, jnp.nan, jnp.float32) for g in hidden}
                    for m in logged
                }
                states[name]["resets"] = {
                    g.name: jnp.zeros(g.unit_shape, jnp.int32) for g in hidden
                }
        return states

    def due(self, updates: Array, since: Array) -> Array:
        """Whether a surgery step runs after the updates `(since, updates]` (unbatched)."""
        log = (updates // self.every) != (since // self.every)
        if self.strategy is None:
            return log
        return log | self.strategy.schedule.due(updates, since)

    def step(
        self,
        agent: Agent,
        agent_state: Any,
        states: Any,
        batch: Batch,
        key: PRNGKeyArray,
        updates: Array,
        since: Array,
    ) -> tuple[Any, Any, dict[str, Array]]:
        """Score, log and reset; returns the agent's state, the surgery states and the
        `surgery/<network>/…` metrics."""
        k_objectives, k_reset = jax.random.split(key)
        objectives = agent.objectives(agent_state, batch, k_objectives)
        out: dict[str, Array] = {}
        states = dict(states)
        for name in self.networks:
            objective = objectives[name]
            anatomy = _anatomy(objective)
            observation = None
            if self._observes(name):
                _, observation = ns.observe(
                    anatomy,
                    objective.model,
                    objective.loss_of_outputs,
                    *objective.inputs,
                    has_aux=objective.has_aux,
                )
            net_states = dict(states[name])
            if name in self.log_networks and observation is not None:
                metric_states, logged, scores = self._log(
                    anatomy, observation, net_states["metrics"]
                )
                net_states["metrics"] = metric_states
                out.update({f"surgery/{name}/{k}": v for k, v in logged.items()})
                if self.units:
                    net_states["units"] = {  # NaN for a layer the metric does not score
                        m: {
                            g: jnp.asarray(scores[m][g], jnp.float32)
                            if g in scores[m]
                            else jnp.full_like(old, jnp.nan)
                            for g, old in kept.items()
                        }
                        for m, kept in net_states["units"].items()
                    }
            if self.strategy is not None and name in self.reset_networks:
                i = self.reset_networks.index(name)
                operand = ns.Operand(
                    objective.model,
                    key=jax.random.fold_in(k_reset, i),
                    step=updates,
                    init=functools.partial(agent.make_network, name),
                    optimizer=agent.optimizer(name),
                    opt_state=agent.opt_state(agent_state, name),
                    since=since,
                )
                result = self.strategy.step(anatomy, operand, observation, net_states["strategy"])
                agent_state = agent.replace_network(
                    agent_state, name, result.model, result.opt_state
                )
                net_states["strategy"] = result.state
                if self.units and result.replaced is not None:
                    net_states["resets"] = {
                        g: count + result.replaced[g].astype(jnp.int32)
                        if g in result.replaced
                        else count
                        for g, count in net_states["resets"].items()
                    }
                # the logged metrics' per-unit state starts afresh for the replaced units
                net_states["metrics"] = {
                    m.name: ns.after_reset(m, net_states["metrics"][m.name], result.replaced)
                    for m in self.metrics
                    if m.name in net_states["metrics"]
                }
                out.update({f"surgery/{name}/{k}": v for k, v in result.info.items()})
            states[name] = net_states
        return agent_state, states, out

    def _log(
        self, anatomy: ns.Anatomy, observation: ns.Observation, states: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Array], dict[str, dict[str, Array]]]:
        """Each metric's inactive ratio (score <= tau) per hidden layer and over the network,
        and the whole-layer figures of metrics that have them; also the scores, per metric."""
        out: dict[str, Array] = {}
        new = {}
        all_scores = {}
        hidden = {g.name for g in anatomy.hidden}
        for metric in self.metrics:
            scores, new[metric.name] = ns.checked_score(
                metric, anatomy, observation, states[metric.name]
            )
            all_scores[metric.name] = scores
            layers = {g: s for g, s in scores.items() if g in hidden}
            flagged = ns.threshold(layers, self.tau_of(metric.name))
            for group, mask in flagged.items():
                out[f"{metric.name}/{group}"] = jnp.mean(ns.inactive_ratio(mask))
            if flagged:
                out[metric.name] = jnp.mean(ns.network_inactive_ratio(flagged))
            if self.means and layers:  # the raw scores: mean per layer, and per hidden unit
                for group, s in layers.items():
                    out[f"mean/{metric.name}/{group}"] = jnp.mean(s)
                every = jnp.concatenate([jnp.ravel(s) for s in layers.values()])
                out[f"mean/{metric.name}"] = jnp.mean(every)
            figures = getattr(metric, "figures", None)
            if figures is not None:  # whole-layer figures (a layer's rank), logged as they are
                out.update(
                    {f"{metric.name}/{k}": v for k, v in figures(anatomy, observation).items()}
                )
        return new, out, all_scores
