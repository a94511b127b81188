"""ReBorn-style splits (Qin et al., NeurIPS 2024): weight moved from over-active units to dormant
ones, keeping the network's function."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .._anatomy._anatomy import Anatomy
from .._anatomy._graph import evaluate
from .._anatomy._groups import NeuronGroup
from .._errors import AnatomyError
from .._metrics import Dormant, Metric, after_reset, init_state
from .._metrics._observe import Observation
from .._registry import register_method
from .._surgery._optstate import reset_optimizer_state
from ._schedule import Schedule
from ._select import inactive_ratio
from ._strategy import Operand, StepResult, _when, unit_info
from ._units import from_units, spread


def _split(g: NeuronGroup, leaves: list, receivers, donors, donor_of, share: float) -> list:
    """The leaves with every receiver of `g` a copy of its donor (incoming and per-unit entries)
    and the donor's outgoing entries split: `share` to the receiver, the rest kept."""
    leaves = list(leaves)
    offsets = np.arange(g.n_units).reshape(g.unit_shape) - np.arange(g.width)
    source = (jnp.asarray(offsets) + donor_of).reshape(-1)
    for s in (*g.incoming, *g.per_unit):
        leaves[s.leaf] = from_units(s, g, leaves[s.leaf], source)
    factor = jnp.where(receivers, share, jnp.where(donors, 1 - share, 1.0))
    for s in g.outgoing:
        moved = from_units(s, g, leaves[s.leaf], source)
        leaves[s.leaf] = moved * spread(s, g, factor.astype(moved.dtype), fill=1)
    return leaves


def uneven_readers(g: NeuronGroup) -> str:
    """Why the units of `g` are read by different consumers ("": every outgoing leaf reads
    every unit): a copy of a unit read where the receiver is not cannot carry that part."""
    n = int(np.prod(g.unit_shape, dtype=int))
    for s in g.outgoing:
        own = s.element_owner()
        read = np.unique(own[own >= 0])
        if 0 < len(read) < n:
            return f"`{s.path}` reads {len(read)} of its {n} units"
    return ""


def copy_change(anatomy: Anatomy, g: NeuronGroup, share: float = 0.5, draws: int = 5) -> float:
    """The largest output change, relative to the outputs' scale, when units of `g` whose
    outgoing entries are zero (dead receivers) become copies of others (`_split`), on random
    weights and inputs: 0 for interchangeable units. Four pairings: each unit of the first half
    with the unit half a width away, and neighbours (2i with 2i + 1), each both ways (units
    read by different consumers, e.g. the first half only by a FiLM layer's conditioning, split
    cleanly one way and not the other). A draw where zeroing the
    receivers' outgoing entries leaves the outputs as they were (the units do not reach them,
    e.g. behind ReLUs that happen to be dead) says nothing, and the next draw is taken."""
    if g.width < 2:
        return 0.0
    units = np.arange(g.width)
    half = g.width // 2
    upper = units >= g.width - half
    odd = (units % 2 == 1) & (units >= 1)
    pairings = [
        (units < half, np.where(units < half, units + half, units)),
        (units % 2 == 0, np.where((units % 2 == 0) & (units + 1 < g.width), units + 1, units)),
        (upper, np.where(upper, units - (g.width - half), units)),
        (odd, np.where(odd, units - 1, units)),
    ]
    worst = 0.0
    with jax.ensure_compile_time_eval():
        for receive, donor in pairings:
            receive = receive & (donor != units)
            for seed in range(draws):
                seen, change = _copy_trial(anatomy, g, share, receive, donor, seed)
                if seen:
                    worst = max(worst, change)
                    break
    return worst


def _copy_trial(anatomy: Anatomy, g: NeuronGroup, share: float, receive, donor, seed: int):
    """One random draw: (do the receivers reach the outputs, the relative change of a split)."""
    graph = anatomy._graph
    rng = np.random.default_rng(seed)
    values = []
    n = len(anatomy.leaf_paths)
    for i, vid in enumerate(graph.inputs):
        dtype, shape = graph.dtypes[vid], graph.shapes[vid]
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            values.append(jax.random.key(1000 * seed + i))
        elif jnp.issubdtype(dtype, jnp.floating):
            # weights N(0, 0.5²): large enough to reach the outputs, small enough that softmaxes
            # and saturating activations do not flatten every difference
            scale = 0.5 if i < n else 1.0
            values.append(jnp.asarray(scale * rng.standard_normal(shape), dtype))
        else:
            values.append(jnp.zeros(shape, dtype))
    leaves, xs = values[:n], values[n:]
    receivers = jnp.broadcast_to(jnp.asarray(receive), g.unit_shape)
    donors = jnp.broadcast_to(
        jnp.asarray(np.isin(np.arange(g.width), donor[receive])), g.unit_shape
    )
    donor_of = jnp.broadcast_to(jnp.asarray(donor), g.unit_shape)
    dead = list(leaves)
    for s in g.outgoing:
        owner = s.element_owner()
        gone = (owner >= 0) & receive[np.where(owner >= 0, owner, 0) % g.width]
        dead[s.leaf] = jnp.where(gone, jnp.zeros_like(dead[s.leaf]), dead[s.leaf])
    split = _split(g, dead, receivers, donors, donor_of, share)
    outs = [evaluate(graph, [*ls, *xs], {})[0] for ls in (leaves, dead, split)]
    seen, change = False, 0.0
    for full, before, after in zip(*outs, strict=True):
        if not jnp.issubdtype(jnp.result_type(before), jnp.inexact):
            continue
        full, a, b = (np.asarray(v, np.float64) for v in (full, before, after))
        if not (np.isfinite(full).all() and np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        scale = max(float(np.max(np.abs(a), initial=0.0)), 1e-30)
        seen |= float(np.max(np.abs(full - a), initial=0.0)) > 1e-6 * scale
        change = max(change, float(np.max(np.abs(a - b), initial=0.0)) / scale)
    return seen, change


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
    (the split columns also carry the other group's units): see `NeuronGroup.preserving`. In a
    preserving group the split keeps the function only if the group's units are
    interchangeable downstream; `init` checks this by reading which units each outgoing leaf
    reads (all, or the group is refused) and by running the traced program on random weights
    and inputs with units copied onto others, and refuses groups where a copy moves the outputs
    (value units of different attention heads), naming them: leave such groups out with
    `skip` (group names). `info` holds `flagged/<group>` (dormant), `reset/<group>` (reborn
    now), `donors/<group>` and the network totals.
    """

    tau: float = 0.0
    overactive: float = 1.0
    share: float = 0.5
    metric: Metric = dataclasses.field(default_factory=Dormant)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    skip: tuple[str, ...] = ()
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

    def init(self, anatomy: Anatomy, params: PyTree | None = None) -> Any:
        """The metric's state, once every group ReBorn may split is known to keep the function.

        Raises:
            AnatomyError: in a `preserving` group, copying one unit onto another changes the
                outputs (its units are not interchangeable, e.g. value units of different
                attention heads, weighted by different attention patterns); the message names
                the groups and the way out, `skip`.
        """
        unknown = sorted(set(self.skip) - set(anatomy.names))
        if unknown:
            raise ValueError(
                f"ReBorn: skip names {unknown}, which are not groups of this anatomy; its groups: "
                f"{list(anatomy.names)}"
            )
        bad = []
        for g in anatomy.resettable:
            if not g.preserving or g.name in self.skip:
                continue
            uneven = uneven_readers(g)
            if uneven:
                bad.append((g.name, uneven))
                continue
            change = copy_change(anatomy, g, self.share)
            if change > 1e-5:
                bad.append((g.name, f"a copy moves the outputs by {change:.2g} of their scale"))
        if bad:
            names = ", ".join(f"{n!r} ({why})" for n, why in bad)
            raise AnatomyError(
                f"ReBorn: the units of {names} are not interchangeable: a dormant unit that takes "
                "another's incoming weights and half its outgoing ones does not compute what the "
                "other did downstream (e.g. value units of different attention heads are weighted "
                "by different attention patterns), so a split would change the function. Leave "
                f"them out: ReBorn(..., skip={tuple(n for n, _ in bad)!r})."
            )
        return init_state(self.metric, anatomy, params)

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        """Score, pair and split when `schedule.due(step, since)`."""
        model = operand.model
        step = operand.step
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        if observation is None:
            raise ValueError("reborn scores units: pass the observation of this update")
        scores, state = self.metric.score(anatomy, observation, state)
        groups = [g for g in anatomy.resettable if g.name in scores and g.name not in self.skip]
        plan = {g.name: pairs(scores[g.name], self.tau, self.overactive) for g in groups}
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            params, static = eqx.partition(model, eqx.is_array)
            leaves = anatomy._leaves(model)
            for g in groups:  # in execution order: a later group copies already-split rows
                leaves = _split(g, leaves, *plan[g.name], self.share)
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
        state = after_reset(self.metric, state, now)  # the split units start afresh
        return StepResult(model, opt_state, state, info, now)


@register_method("reborn")
def _reborn(
    tau: float = 0.0,
    overactive: float = 1.0,
    share: float = 0.5,
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
) -> ReBorn:
    """reborn: every `every` updates, units with τ-dormant score <= tau take over the incoming
    weights of units scoring above `overactive` and `share` of their outgoing weights.

    Args:
        tau: τ-dormant threshold: a unit whose score is <= tau is reborn.
        overactive: units scoring above it give their weights to dormant ones.
        share: the dormant unit's share of its donor's outgoing weights.
        every: gradient updates between rebirths.
        start: updates before which nothing happens.
        end: updates from which nothing happens (None: never).
    """
    return ReBorn(tau, overactive, share, schedule=Schedule(every, start, end))
