"""Gradient activity: how often a unit's pre-activation gradient is non-zero."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores
from ._observe import Observation, normalise


@register_metric("grad_activity")
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
