"""Neuron surgery inside training: score every network's units, log inactive ratios, reset.

An agent exposes, per network it lets surgery touch:

* `surgery_targets(state, batch, key) -> {name: SurgeryTarget}`: the network, how to call it on one
  sample, the batched inputs, and the update's own loss as a function of the batched outputs;
* `fresh_network(name, key)`: a freshly initialised network (each layer's own initializer);
* `network_optimizer(state, name) -> (optimizer, opt_state)` and
  `replace_network(state, name, model, opt_state) -> state`.

Everything here is pure and runs inside the compiled training loop; the anatomy of each network is
read from its traced call once per compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

import neurosurgery as ns

#: metrics logged at every surgery step, whichever drives the resets
LOGGED = {
    "grama": ns.GraMa("preactivation"),
    "grama_act": ns.GraMa("activation"),
    "grama_weight": ns.GraMa("weight"),
    "dormant": ns.Dormant(),
}
#: reset methods → metric names in LOGGED
DRIVERS = {"redo": "dormant", "regrama": "grama", "regrama_act": "grama_act",
           "regrama_weight": "grama_weight"}  # fmt: skip


class SurgeryTarget(NamedTuple):
    """A network as a surgery step sees it."""

    model: Any
    call: Callable[..., Any]
    inputs: tuple[Array, ...]
    loss: Callable[[Any], Array]


def selection(config: Any) -> ns.Selection:
    if config.reset_max_fraction < 1.0:
        return ns.Selection("capped", config.reset_tau, max_fraction=config.reset_max_fraction)
    return ns.Selection("threshold", config.reset_tau)


def neuron_step(agent: Any, config: Any, state: Any, batch: Any, key: PRNGKeyArray,
                in_window: Array | bool = True) -> tuple[Any, dict[str, Array]]:  # fmt: skip
    """Score each network in `config.reset_networks`, log, and reset by `config.reset`
    (only where `in_window`)."""
    k_targets, k_reset = jax.random.split(key)
    targets = agent.surgery_targets(state, batch, k_targets)
    select = selection(config)
    metrics: dict[str, Array] = {}
    for i, name in enumerate(config.reset_networks):
        t = targets[name]
        anatomy = ns.anatomy(t.model, *[x[0] for x in t.inputs], fn=t.call)
        _, observation = ns.observe(anatomy, t.model, t.loss, *t.inputs)
        scores = ns.score_all(list(LOGGED.values()), anatomy, observation)
        hidden = [g.name for g in anatomy.hidden]
        for metric, by_group in scores.items():
            flagged = {g: ns.threshold(by_group[g], config.reset_tau) for g in hidden}
            for g, mask in flagged.items():
                metrics[f"surgery/{name}/{metric}/{g}"] = jnp.mean(ns.inactive_ratio(mask))
            units = sum(anatomy[g].n_units for g in hidden)
            total = sum(jnp.sum(m) for m in flagged.values())
            metrics[f"surgery/{name}/{metric}"] = jnp.asarray(total / units)
        if config.reset == "none":
            continue
        masks = select({g: scores[DRIVERS[config.reset]][g] for g in hidden})
        masks = {g: m & in_window for g, m in masks.items()}
        optimizer, opt_state = agent.network_optimizer(state, name)
        k_fresh, k_draw = jax.random.split(jax.random.fold_in(k_reset, i))
        model, opt_state = ns.reset(anatomy, t.model, masks, k_draw,
                                    fresh=agent.fresh_network(name, k_fresh),
                                    optimizer=optimizer, opt_state=opt_state)  # fmt: skip
        state = agent.replace_network(state, name, model, opt_state)
        applied = [g for g in hidden if anatomy[g].resettable]
        for g in applied:
            metrics[f"surgery/{name}/reset/{g}"] = jnp.mean(ns.inactive_ratio(masks[g]))
        reset_units = sum(jnp.sum(masks[g]) for g in applied)
        metrics[f"surgery/{name}/reset"] = jnp.asarray(
            reset_units / max(sum(anatomy[g].n_units for g in applied), 1)
        )
    return state, metrics
