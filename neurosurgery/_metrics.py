"""Metric plugins: per-unit scores, normalised by the layer mean (higher = more active).

A metric is a frozen config with two pure functions, the optax way:

* `init(anatomy) -> state` (most metrics keep none: `()`),
* `score(anatomy, observation, state) -> (scores, state)` where `scores` maps group names to
  arrays of the group's `unit_shape`.

Both run under `jax.jit` and `jax.vmap`. A new metric is a small class with these two methods;
see the "Write your own metric" page.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._anatomy import Anatomy
from ._groups import LeafSlice, NeuronGroup
from ._observe import Observation, normalise

Scores = dict[str, Array]


@runtime_checkable
class Metric(Protocol):
    """What a metric plugin provides."""

    @property
    def name(self) -> str: ...

    def init(self, anatomy: Anatomy) -> Any: ...

    def score(
        self, anatomy: Anatomy, observation: Observation, state: Any
    ) -> tuple[Scores, Any]: ...


def unit_reduce(group: NeuronGroup, slices: tuple[LeafSlice, ...], leaves: list[Array],
                how: Literal["mean", "sum"]) -> Array:  # fmt: skip
    """Sum or average leaf entries per unit, over all `slices` together.

    `leaves` is the model's array leaves in anatomy order (e.g. gradients or weights).
    """
    n = group.n_units
    total = jnp.zeros(n, jnp.float32)
    count = np.zeros(n, np.int64)
    for s in slices:
        values = leaves[s.leaf]
        other = tuple(a for a in range(len(s.shape)) if a not in s.axes)
        per_pos = _sum_axes(values.astype(jnp.float32), other) if other else values
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
        total = total / jnp.asarray(np.maximum(count, 1), jnp.float32)
    return total.reshape(group.unit_shape)


def _sum_axes(values: Array, axes: tuple[int, ...]) -> Array:
    """Sum over `axes`, written as a contraction with a vector of ones.

    Same result as `jnp.sum(values, axis=axes)`, but a matrix-vector product: XLA's CPU backend
    runs it at memory speed, 3-4× faster than a reduction over a weight matrix's rows, which is
    what keeps GraMa(weight) cheap inside an update. Full float32 precision on every backend.
    """
    ones = jnp.ones([values.shape[a] for a in axes], values.dtype)
    return jnp.tensordot(
        values, ones, axes=(axes, tuple(range(len(axes)))), precision=jax.lax.Precision.HIGHEST
    )


def _leaves(anatomy: Anatomy, tree: Any) -> list[Array]:
    return jax.tree_util.tree_leaves(tree)


def _observed(anatomy: Anatomy, values: dict[str, Array] | None) -> list[NeuronGroup]:
    if values is None:
        return []
    return [g for g in anatomy.groups if g.name in values]


@dataclasses.dataclass(frozen=True)
class GraMa:
    """Gradient magnitude of each unit (Liu et al. 2025), normalised by the layer mean.

    Sources (see the metrics page for what each can and cannot see):

    * `"preactivation"` (default): E_x|∂L(x)/∂z_i| at the pre-activation, after any per-unit
      norm — sees dead ReLU units.
    * `"activation"`: the same at the activation (the literal reading of Eq. 2); blind to dead
      ReLU units, because ∂L/∂h does not pass through the unit's own activation derivative.
    * `"weight"`: the released code's rule, mean_j |∂L/∂W_ij| over the unit's incoming weights
      (the batch gradient); a unit with per-unit scale parameters (a norm layer) is also scored
      by |∂L/∂γ_i| on its own, and keeps the lower of the two scores.
    """

    source: str = "preactivation"
    eps: float = 1e-9

    def __post_init__(self) -> None:
        if self.source not in ("preactivation", "activation", "weight"):
            raise ValueError(
                f"GraMa source {self.source!r} is unknown; use 'preactivation', 'activation' or "
                "'weight'."
            )

    @property
    def name(self) -> str:
        return {"preactivation": "grama", "activation": "grama_act", "weight": "grama_weight"}[
            self.source
        ]

    def init(self, anatomy: Anatomy) -> tuple:
        return ()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: tuple
    ) -> tuple[Scores, tuple]:
        if self.source == "weight":
            grads = _leaves(anatomy, observation.weight_grads)
            absg = [jnp.abs(g) for g in grads]
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
        site, grads = (
            ("pre", observation.pre_grads)
            if self.source == "preactivation"
            else ("post", observation.post_grads)
        )
        if grads is None:
            raise ValueError(
                f"GraMa(source={self.source!r}) needs per-sample gradients at the '{site}' site; "
                f"observe with sites including {site!r}."
            )
        out = {}
        for g in _observed(anatomy, grads):
            per_sample = anatomy.pool(g.name, jnp.abs(grads[g.name]), where=site)
            out[g.name] = normalise(jnp.mean(per_sample, axis=0), self.eps)
        return out, state


@dataclasses.dataclass(frozen=True)
class Dormant:
    """τ-dormant score (ReDo, Sokar et al. 2023): E_x|h_i(x)| over the layer mean."""

    eps: float = 1e-9

    @property
    def name(self) -> str:
        return "dormant"

    def init(self, anatomy: Anatomy) -> tuple:
        return ()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: tuple
    ) -> tuple[Scores, tuple]:
        out = {}
        for g in _observed(anatomy, observation.acts):
            per_sample = anatomy.pool(g.name, jnp.abs(observation.acts[g.name]))
            out[g.name] = normalise(jnp.mean(per_sample, axis=0), self.eps)
        return out, state


@dataclasses.dataclass(frozen=True)
class Utility:
    """Contribution utility of continual backprop (Dohare et al. 2024).

    A running average of |h_i| · Σ_k |w_out,ki| (activation times the total magnitude of the
    unit's outgoing weights), bias-corrected, over the layer mean. Output units have no outgoing
    weights; their utility is the activation magnitude alone.
    """

    decay: float = 0.99
    eps: float = 1e-9

    @property
    def name(self) -> str:
        return "utility"

    def init(self, anatomy: Anatomy) -> dict[str, Array]:
        state = {g.name: jnp.zeros(g.unit_shape) for g in anatomy.groups}
        state["__count__"] = jnp.zeros((), jnp.int32)
        return state

    def score(self, anatomy: Anatomy, observation: Observation, state: dict[str, Array]
              ) -> tuple[Scores, dict[str, Array]]:  # fmt: skip
        weights = [jnp.abs(w) for w in _leaves(anatomy, observation.params)]
        count = state["__count__"] + 1
        new: dict[str, Array] = {"__count__": count}
        out = {}
        for g in _observed(anatomy, observation.acts):
            act = jnp.mean(anatomy.pool(g.name, jnp.abs(observation.acts[g.name])), axis=0)
            fan_out = unit_reduce(g, g.outgoing, weights, "sum") if g.outgoing else 1.0
            new[g.name] = self.decay * state[g.name] + (1 - self.decay) * act * fan_out
            corrected = new[g.name] / (1 - self.decay ** count.astype(jnp.float32))
            out[g.name] = normalise(corrected, self.eps)
        for name, value in state.items():
            new.setdefault(name, value)
        return out, new


@dataclasses.dataclass(frozen=True)
class GradientActivity:
    """Fraction of samples whose pre-activation gradient is non-zero (|g| > `tol`).

    Low for units whose gradient vanishes on most inputs (e.g. ReLU units active on few samples).
    """

    tol: float = 0.0
    eps: float = 1e-9

    @property
    def name(self) -> str:
        return "grad_activity"

    def init(self, anatomy: Anatomy) -> tuple:
        return ()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: tuple
    ) -> tuple[Scores, tuple]:
        if observation.pre_grads is None:
            raise ValueError("GradientActivity needs pre-activation gradients; observe with 'pre'.")
        out = {}
        for g in _observed(anatomy, observation.pre_grads):
            per_sample = anatomy.pool(g.name, jnp.abs(observation.pre_grads[g.name]), where="pre")
            active = jnp.mean((per_sample > self.tol).astype(jnp.float32), axis=0)
            out[g.name] = normalise(active, self.eps)
        return out, state


@dataclasses.dataclass(frozen=True)
class WeightMagnitude:
    """Mean |W_ij| of each unit's incoming weights over the layer mean."""

    eps: float = 1e-9

    @property
    def name(self) -> str:
        return "weight_norm"

    def init(self, anatomy: Anatomy) -> tuple:
        return ()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: tuple
    ) -> tuple[Scores, tuple]:
        weights = [jnp.abs(w) for w in _leaves(anatomy, observation.params)]
        out = {}
        for g in anatomy.groups:
            rows = tuple(s for s in g.incoming if s.kind == "weight")
            out[g.name] = normalise(unit_reduce(g, rows, weights, "mean"), self.eps)
        return out, state
