"""ReBorn-style splits (Qin et al., NeurIPS 2024): weight moved from over-active units to dormant
ones, keeping the network's function."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._anatomy import Anatomy
from ._metrics import Dormant, Metric
from ._observe import Observation
from ._optstate import Initable, reset_optimizer_state
from ._reset import Init
from ._schedule import Schedule
from ._select import inactive_ratio
from ._strategy import Count, StepResult, _when, unit_info
from ._units import from_units, spread


def pairs(scores: Array, tau: float, overactive: float) -> tuple[Array, Array, Array]:
    """Receivers (score ≤ `tau`, in index order), donors (score > `overactive`, most active
    first), paired one to one per member: the paired receivers, the paired donors, and for
    every unit its donor's index along the last axis (its own index if it receives nothing)."""
    receive, give = scores <= tau, scores > overactive
    r_rank = jnp.cumsum(receive, axis=-1) - 1
    d_order = jnp.argsort(jnp.where(give, -scores, jnp.inf), axis=-1, stable=True)
    d_rank = jnp.argsort(d_order, axis=-1, stable=True)
    n = jnp.minimum(jnp.sum(receive, -1), jnp.sum(give, -1))[..., None]
    receivers, donors = receive & (r_rank < n), give & (d_rank < n)
    own = jnp.broadcast_to(jnp.arange(scores.shape[-1]), scores.shape)
    donor_of = jnp.take_along_axis(d_order, jnp.clip(r_rank, 0, None), axis=-1)
    return receivers, donors, jnp.where(receivers, donor_of, own)


@dataclasses.dataclass(frozen=True)
class ReBorn:
    """Dormant units reborn as copies of over-active ones, the function kept (Qin et al. 2024).

    When the schedule is due, in every hidden, non-residual group and per ensemble member, the
    units whose `metric` score is ≤ `tau` (receivers, dormant) are paired one to one with the
    units whose score is > `overactive` (donors, most active first; as many pairs as the fewer
    of the two). A receiver takes its donor's incoming weights, bias and per-unit parameters,
    so it computes the donor's activation, and the donor's outgoing weights are split between
    them: the receiver gets `share` of them and the donor keeps `1 − share`. The consumers then
    see h_d · w_d as before, so a receiver that contributed nothing (activation exactly zero, a
    dead ReLU unit at τ = 0) is reborn without changing the network's outputs; with τ > 0 the
    receivers' small contributions are dropped. Optimizer-state entries of the receivers and of
    the donors' outgoing weights are zeroed. With `share = 0.5` the two units are exact clones
    whose gradients differ only through the optimizer state, while another share gives them
    different outgoing weights and so different updates.

    Groups behind a norm over their units (`normalized`, LayerNorm) are not function-preserving
    (a copied unit changes the layer's statistics), nor are groups `entangled_with` another
    (the split columns also carry the other group's units): see `NeuronGroup.preserving`. `info` holds `flagged/<group>` (dormant),
    `reset/<group>` (reborn now), `donors/<group>` and the network totals.
    """

    tau: float = 0.0
    overactive: float = 1.0
    share: float = 0.5
    metric: Metric = dataclasses.field(default_factory=Dormant)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    name: str = "reborn"
    observes: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.tau >= 0:
            raise ValueError(f"ReBorn: tau={self.tau!r} is invalid: a score threshold >= 0")
        if not self.overactive > self.tau:
            raise ValueError(
                f"ReBorn: overactive={self.overactive!r} must exceed tau={self.tau!r}: donors "
                "are the units scoring above it, receivers those at or below tau"
            )
        if not 0.0 < self.share < 1.0:
            raise ValueError(
                f"ReBorn: share={self.share!r} is invalid: the receiver's part of the donor's "
                "outgoing weights, in (0, 1)"
            )

    def init(self, anatomy: Anatomy) -> Any:
        return self.metric.init(anatomy)

    def step(
        self,
        anatomy: Anatomy,
        model: PyTree,
        observation: Observation | None,
        state: Any,
        key: PRNGKeyArray,
        step: Count,
        *,
        init: Init,
        optimizer: Initable | None = None,
        opt_state: PyTree | None = None,
        since: Count | None = None,
    ) -> StepResult:
        """Score, pair and split when `schedule.due(step, since)`."""
        if observation is None:
            raise ValueError("reborn scores units: pass the observation of this update")
        scores, state = self.metric.score(anatomy, observation, state)
        groups = [g for g in anatomy.resettable if g.name in scores]
        plan = {g.name: pairs(scores[g.name], self.tau, self.overactive) for g in groups}
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            params, static = eqx.partition(model, eqx.is_array)
            leaves = anatomy._leaves(model)
            for g in groups:  # in execution order: a later group copies already-split rows
                receivers, donors, donor_of = plan[g.name]
                offsets = np.arange(g.n_units).reshape(g.unit_shape) - np.arange(g.width)
                source = (jnp.asarray(offsets) + donor_of).reshape(-1)
                for s in (*g.incoming, *g.per_unit):
                    leaves[s.leaf] = from_units(s, g, leaves[s.leaf], source)
                factor = jnp.where(receivers, self.share, jnp.where(donors, 1 - self.share, 1.0))
                for s in g.outgoing:
                    moved = from_units(s, g, leaves[s.leaf], source)
                    leaves[s.leaf] = moved * spread(s, g, factor.astype(moved.dtype), fill=1)
            new = eqx.combine(anatomy._tree(leaves), static)
            if optimizer is None:
                return new, opt_state
            touched = [
                None if a is None and b is None else (a if b is None else b if a is None else a | b)
                for a, b in zip(
                    anatomy.element_masks({k: v[0] for k, v in plan.items()}),
                    anatomy.element_masks({k: v[1] for k, v in plan.items()}, ("outgoing",)),
                    strict=True,
                )
            ]
            masks = anatomy._tree(
                [
                    jnp.zeros(jnp.shape(leaf), bool) if m is None else m
                    for leaf, m in zip(anatomy._leaves(model), touched, strict=True)
                ]
            )
            return new, reset_optimizer_state(optimizer, opt_state, params, masks)

        model, opt_state = _when(due, act, model, opt_state)
        now = {k: v[0] & due for k, v in plan.items()}
        dormant = {g.name: scores[g.name] <= self.tau for g in groups}
        info = unit_info(anatomy, dormant, now)
        info.update({f"donors/{k}": jnp.mean(inactive_ratio(v[1] & due)) for k, v in plan.items()})
        return StepResult(model, opt_state, state, info)
