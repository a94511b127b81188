"""Metric plugins: per-unit scores, normalised by the layer mean (higher = more active).

A metric is a frozen config with a `name` and two pure functions, the optax way:

* `init(anatomy) -> state` (`EmptyState()` for a metric that keeps none),
* `score(anatomy, observation, state) -> (scores, state)` where `scores` maps group names to
  arrays of the group's `unit_shape`.

Both run under `jax.jit` and `jax.vmap`. A new metric is a small class with these two methods;
see the "Write your own metric" page.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._anatomy import Anatomy
from ._groups import LeafSlice, NeuronGroup
from ._observe import Observation, normalise

Scores = dict[str, Array]


class EmptyState(NamedTuple):
    """The state of a metric (or strategy) that keeps nothing between calls."""


@runtime_checkable
class Metric(Protocol):
    """What a metric plugin provides."""

    @property
    def name(self) -> str: ...

    def init(self, anatomy: Anatomy) -> Any: ...

    def score(
        self, anatomy: Anatomy, observation: Observation, state: Any
    ) -> tuple[Scores, Any]: ...


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


#: what each GraMa source is called in scores and logs
GRAMA_NAMES = {"preactivation": "grama", "activation": "grama_activation", "weight": "grama_weight"}


@dataclasses.dataclass(frozen=True)
class GraMa:
    """Gradient magnitude of each unit (Liu et al. 2025), normalised by the layer mean.

    Sources (see the metrics page for what each can and cannot see):

    * `"preactivation"` (default, name `grama`): E_x|∂L(x)/∂z_i| at the pre-activation, after
      any per-unit norm — sees dead ReLU units.
    * `"activation"` (`grama_activation`): the same at the activation (the literal reading of
      Eq. 2); blind to dead ReLU units, because ∂L/∂h does not pass through the unit's own
      activation derivative.
    * `"weight"` (`grama_weight`): the released code's rule, mean_j |∂L/∂W_ij| over the unit's
      incoming weights (the batch gradient); a unit with per-unit scale parameters (a norm
      layer) is also scored by |∂L/∂γ_i| on its own, and keeps the lower of the two scores.

    `eps` is added to the layer mean (see [`normalise`][neurosurgery.normalise]).
    """

    source: str = "preactivation"
    eps: float = 0.0

    def __post_init__(self) -> None:
        if self.source not in GRAMA_NAMES:
            raise ValueError(
                f"GraMa source {self.source!r} is unknown; use one of {list(GRAMA_NAMES)}."
            )

    @property
    def name(self) -> str:
        return GRAMA_NAMES[self.source]

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        if self.source != "weight":
            grads = observation.grads(self.source)
            return _normalised(per_unit_mean(_abs(grads)), self.eps), state
        absg = [jnp.abs(g) for g in jax.tree_util.tree_leaves(observation.weight_grads)]
        out = {}
        for g in anatomy.groups:
            rows = tuple(s for s in g.incoming if s.kind == "weight")
            score = normalise(unit_reduce(g, rows, absg, "mean"), self.eps)
            scales = tuple(s for s in g.per_unit if s.kind == "scale")
            if scales:
                score = jnp.minimum(
                    score, normalise(unit_reduce(g, scales, absg, "mean"), self.eps)
                )
            out[g.name] = score
        return out, state


def _abs(values: dict[str, Array]) -> dict[str, Array]:
    return {k: jnp.abs(v) for k, v in values.items()}


def _normalised(values: dict[str, Array], eps: float) -> Scores:
    return {k: normalise(v, eps) for k, v in values.items()}


@dataclasses.dataclass(frozen=True)
class Dormant:
    """τ-dormant score (ReDo, Sokar et al. 2023): E_x|h_i(x)| over the layer mean."""

    eps: float = 0.0

    @property
    def name(self) -> str:
        return "dormant"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        return _normalised(per_unit_mean(_abs(observation.activations)), self.eps), state


class UtilityState(NamedTuple):
    """Running averages of `Utility`, per group, and how many updates they have seen."""

    averages: dict[str, Array]
    seen: Array


@dataclasses.dataclass(frozen=True)
class Utility:
    """Contribution utility of continual backprop (Dohare et al. 2024).

    A running average of |h_i| · Σ_k |w_out,ki| (activation times the total magnitude of the
    unit's outgoing weights), bias-corrected, over the layer mean. Output units have no outgoing
    weights; their utility is the activation magnitude alone.
    """

    decay: float = 0.99
    eps: float = 0.0

    @property
    def name(self) -> str:
        return "utility"

    def init(self, anatomy: Anatomy) -> UtilityState:
        averages = {g.name: jnp.zeros(g.unit_shape) for g in anatomy.observed}
        return UtilityState(averages, jnp.zeros((), jnp.int32))

    def score(
        self, anatomy: Anatomy, observation: Observation, state: UtilityState
    ) -> tuple[Scores, UtilityState]:
        weights = [jnp.abs(w) for w in jax.tree_util.tree_leaves(observation.params)]
        seen = state.seen + 1
        acts = per_unit_mean(_abs(observation.activations))
        averages, out = dict(state.averages), {}
        for name, act in acts.items():
            g = anatomy[name]
            fan_out = unit_reduce(g, g.outgoing, weights, "sum") if g.outgoing else 1.0
            averages[name] = self.decay * state.averages[name] + (1 - self.decay) * act * fan_out
            corrected = averages[name] / (1 - self.decay ** seen.astype(jnp.float32))
            out[name] = normalise(corrected, self.eps)
        return out, UtilityState(averages, seen)


@dataclasses.dataclass(frozen=True)
class GradientActivity:
    """Fraction of samples whose pre-activation gradient is non-zero (|g| > `tol`).

    Low for units whose gradient vanishes on most inputs (e.g. ReLU units active on few samples).
    """

    tol: float = 0.0
    eps: float = 0.0

    @property
    def name(self) -> str:
        return "grad_activity"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        out = {}
        for name, g in observation.grads("preactivation").items():
            per_sample = jnp.mean(jnp.abs(g), axis=1)  # over positions
            active = jnp.mean((per_sample > self.tol).astype(jnp.float32), axis=0)
            out[name] = normalise(active, self.eps)
        return out, state


@dataclasses.dataclass(frozen=True)
class WeightMagnitude:
    """Mean |W_ij| of each unit's incoming weights over the layer mean."""

    eps: float = 0.0

    @property
    def name(self) -> str:
        return "weight_norm"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        weights = [jnp.abs(w) for w in jax.tree_util.tree_leaves(observation.params)]
        out = {}
        for g in anatomy.groups:
            rows = tuple(s for s in g.incoming if s.kind == "weight")
            out[g.name] = normalise(unit_reduce(g, rows, weights, "mean"), self.eps)
        return out, state
