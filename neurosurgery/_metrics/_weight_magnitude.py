"""Weight magnitude: mean |W_ij| of each unit's incoming weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores, unit_reduce
from ._observe import Observation, normalise


@register_metric("weight_norm")
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
