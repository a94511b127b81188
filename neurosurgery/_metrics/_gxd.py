"""GXD (arXiv 2605.06834): the first-order cost of replacing a unit."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores
from ._observe import Observation, normalise

REFERENCES = ("zero", "mean")


@register_metric("gxd", gxd_mean={"reference": "mean"})
@dataclasses.dataclass(frozen=True)
class GXD:
    """Gradient times difference from reference (GXD, arXiv 2605.06834):
    E_x|Σ_p ∂L(x)/∂a_i,p · (a_i,p(x) − a_ref)|.

    To first order, replacing unit i's activation a_i by a reference value a_ref changes the
    loss of sample x by ∂L(x)/∂a_i · (a_ref − a_i(x)) (summed over the positions p of a
    convolution); the score is the magnitude of that change, averaged over samples, over the
    layer mean: a unit that is cheap to replace scores low. a_ref is what the unit's consumers
    see after the intervention: `"zero"` (default) for a reset that zeroes the unit's outgoing
    weights (ReDo, ReGraMa, CBP without bias correction), `"mean"` (the unit's mean activation
    over the batch and positions) for one that moves the unit's mean contribution into the
    consumers' biases (CBP's bias correction).
    """

    reference: str = "zero"
    eps: float = 0.0

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(
                f"GXD: reference {self.reference!r} is unknown; use one of {list(REFERENCES)}"
            )

    @property
    def name(self) -> str:
        return "gxd" if self.reference == "zero" else "gxd_mean"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        out = {}
        for name, g in observation.grads("activation").items():
            a = observation.activations[name]
            ref = jnp.mean(a, axis=(0, 1), keepdims=True) if self.reference == "mean" else 0.0
            cost = jnp.abs(jnp.sum(g * (a - ref), axis=1))  # per sample, over positions
            out[name] = normalise(jnp.mean(cost, axis=0), self.eps)
        return out, state
