"""What every metric plugin shares: the protocol, the empty state, per-unit reductions and the
running average that stateful metrics keep.

A metric is a frozen config with a `name` and two pure functions, the optax way:

* `init(anatomy) -> state` (`EmptyState()` for a metric that keeps none),
* `score(anatomy, observation, state) -> (scores, state)` where `scores` maps group names to
  arrays of the group's `unit_shape`.

Both run under `jax.jit` and `jax.vmap`. A new metric is a small class with these two methods;
see the "Write your own metric" page.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, PyTree

from .._anatomy._anatomy import Anatomy
from .._anatomy._groups import LeafSlice, NeuronGroup
from ._observe import Observation, normalise

Scores = dict[str, Array]


#: The state of a metric (or strategy) that keeps nothing between calls: optax's own, so the
#: library and optax have one convention (`ns.EmptyState is optax.EmptyState`).
EmptyState = optax.EmptyState


@runtime_checkable
class Metric(Protocol):
    """What a metric plugin provides.

    A metric may also provide `figures(anatomy, observation) -> {name: scalar}`: figures of
    whole layers that have no per-unit form (a layer's rank, see
    [`FeatureRank`][neurosurgery.FeatureRank]). A training run logs them as
    `<metric name>/<figure name>`, next to the inactive ratios of the per-unit scores.

    A metric that keeps per-unit state (running averages, ages) provides
    `on_reset(state, replaced) -> state`: `replaced` maps group names to boolean masks of the
    units whose weights were just replaced, which start afresh. Strategies call it on their own
    metric's state and the trainer on the states of the metrics it logs
    ([`after_reset`][neurosurgery.after_reset]).
    """

    @property
    def name(self) -> str: ...

    def init(self, anatomy: Anatomy) -> Any:
        """The metric's starting state. A metric that needs the network's parameters (its
        initial weights, say) takes them as a second argument, `init(anatomy, params)`:
        everything that starts a metric passes them then ([`init_state`][neurosurgery.init_state])."""
        ...

    def score(
        self, anatomy: Anatomy, observation: Observation, state: Any
    ) -> tuple[Scores, Any]: ...


def init_state(component: Any, anatomy: Anatomy, params: PyTree | None = None) -> Any:
    """The starting state of a metric or strategy: `component.init(anatomy, params)` where its
    `init` takes the network's parameters (to keep its initial weights, say), else
    `component.init(anatomy)`.

    Raises:
        ValueError: `init` takes the parameters but none were given.
    """
    try:
        taken = list(inspect.signature(component.init).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        taken = []
    if len(taken) < 2:
        return component.init(anatomy)
    if params is None:
        if taken[1].default is not inspect.Parameter.empty:  # optional: a strategy's own init
            return component.init(anatomy)
        raise ValueError(
            f"{getattr(component, 'name', type(component).__name__)}'s init takes the network's "
            "parameters (init(anatomy, params)), but none were given: pass them, e.g. "
            "ns.init_state(metric, anatomy, eqx.filter(model, eqx.is_array)), or "
            "strategy.init(anatomy, params)"
        )
    return component.init(anatomy, params)


def after_reset(metric: Any, state: Any, replaced: Mapping[str, Array] | None) -> Any:
    """`metric`'s state once the units in `replaced` (group name → boolean mask of
    `unit_shape`; `None`: nothing was replaced) have fresh weights: `metric.on_reset(state,
    replaced)` where the metric keeps per-unit state, the state unchanged for one that keeps
    none."""
    on_reset = getattr(metric, "on_reset", None)
    if replaced is None or on_reset is None:
        return state
    return on_reset(state, dict(replaced))


def unit_reduce(
    group: NeuronGroup,
    slices: tuple[LeafSlice, ...],
    leaves: list[Array],
    how: Literal["mean", "sum"],
) -> Array:
    """Sum or average leaf entries per unit, over all `slices` together.

    `leaves` is the model's array leaves in anatomy order (e.g. gradients or weights). The
    result has the leaves' floating dtype (float32 for lower precisions).
    """
    n = group.n_units
    wide = any(leaves[s.leaf].dtype == jnp.float64 for s in slices)
    dtype = jnp.float64 if wide else jnp.float32
    total = jnp.zeros(n, dtype)
    count = np.zeros(n, np.int64)
    for s in slices:
        values = leaves[s.leaf].astype(dtype)
        other = tuple(a for a in range(len(s.shape)) if a not in s.axes)
        per_pos = _sum_axes(values, other) if other else values
        units = s.units.reshape(-1)
        if units.size == n and (units == np.arange(n)).all():
            total = total + jnp.reshape(per_pos, -1)  # the usual layout: no scatter needed
            idx = units
        else:
            pos = np.flatnonzero(units >= 0)
            idx = units[pos]
            total = total.at[idx].add(jnp.reshape(per_pos, -1)[pos])
        count += np.bincount(idx, minlength=n) * int(
            np.prod([s.shape[a] for a in other], dtype=int)
        )
    if how == "mean":
        total = total / jnp.asarray(np.maximum(count, 1), dtype)
    return total.reshape(group.unit_shape)


def _sum_axes(values: Array, axes: tuple[int, ...]) -> Array:
    """Sum over `axes`, written as a contraction with a vector of ones.

    Same result as `jnp.sum(values, axis=axes)`, but a matrix-vector product: XLA's CPU backend
    runs it at memory speed, 3-4× faster than a reduction over a weight matrix's rows, which is
    what keeps GraMa(weight) cheap inside an update. Full precision on every backend.
    """
    ones = jnp.ones([values.shape[a] for a in axes], values.dtype)
    return jnp.tensordot(
        values, ones, axes=(axes, tuple(range(len(axes)))), precision=jax.lax.Precision.HIGHEST
    )


def per_unit_mean(values: dict[str, Array]) -> dict[str, Array]:
    """Average each group's `(batch, positions, *unit_shape)` record over samples and positions."""
    return {name: jnp.mean(v, axis=(0, 1)) for name, v in values.items()}


def _abs(values: dict[str, Array]) -> dict[str, Array]:
    return {k: jnp.abs(v) for k, v in values.items()}


def _normalised(values: dict[str, Array], eps: float) -> Scores:
    return {k: normalise(v, eps) for k, v in values.items()}


def _check_decay(owner: str, decay: float) -> None:
    if not 0.0 <= decay < 1.0:  # also rejects NaN
        raise ValueError(
            f"{owner}: decay={decay!r} is invalid: a running average keeps `decay` of its old "
            "value per update, so it must lie in [0, 1) (0: no memory)"
        )


class RunningAverage(NamedTuple):
    """Per-unit running averages of a stateful metric, and each unit's age in updates.

    `averages[g] = Σ_t (1 − η) η^(age − t) v_t` starts at zero, so it is divided by its weight
    `1 − η^age` when read ([`corrected`][neurosurgery.RunningAverage.corrected], the bias
    correction of Adam's moments); a strategy that replaces a unit sets both back to zero.
    """

    averages: dict[str, Array]
    ages: dict[str, Array]

    @classmethod
    def zeros(cls, anatomy: Anatomy, groups: tuple[NeuronGroup, ...] | None = None):
        """Zero averages and ages for `groups` (default: the observed ones)."""
        groups = anatomy.observed if groups is None else groups
        return cls(
            {g.name: jnp.zeros(g.unit_shape, jnp.float32) for g in groups},
            {g.name: jnp.zeros(g.unit_shape, jnp.int32) for g in groups},
        )

    def advance(
        self, values: dict[str, Array], decay: float, steps: ArrayLike = 1
    ) -> RunningAverage:
        """The averages after `steps` updates whose values were all `values` (one observation
        every `steps` updates keeps the average's time constant in updates)."""
        steps = jnp.asarray(steps, jnp.int32)
        keep = jnp.asarray(decay, jnp.float32) ** steps.astype(jnp.float32)
        averages, ages = dict(self.averages), dict(self.ages)
        for name, value in values.items():
            value = jnp.asarray(value, jnp.float32)
            averages[name] = keep * self.averages[name] + (1 - keep) * value
            ages[name] = self.ages[name] + steps
        return RunningAverage(averages, ages)

    def corrected(self, decay: float) -> dict[str, Array]:
        """The averages divided by their weight `1 − decay^age` (0 where a unit has no age)."""
        out = {}
        for name, average in self.averages.items():
            weight = 1 - jnp.asarray(decay, jnp.float32) ** self.ages[name].astype(jnp.float32)
            safe = jnp.where(weight > 0, weight, jnp.ones_like(weight))
            out[name] = jnp.where(weight > 0, average / safe, jnp.zeros_like(average))
        return out

    def restart(self, masks: dict[str, Array]) -> RunningAverage:
        """Averages and ages of the units in `masks` back to zero (replaced units)."""
        averages, ages = dict(self.averages), dict(self.ages)
        for name, mask in masks.items():
            if name in averages:
                averages[name] = jnp.where(mask, 0.0, averages[name])
                ages[name] = jnp.where(mask, 0, ages[name])
        return RunningAverage(averages, ages)
