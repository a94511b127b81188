"""Gradient flow: a running average of the gradient magnitude that reaches each unit."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import RunningAverage, Scores, _check_decay, per_unit_mean
from ._observe import SITES, Observation, normalise


@register_metric("grad_flow", grad_flow_preactivation={"site": "preactivation"})
@dataclasses.dataclass(frozen=True)
class GradientFlow:
    """How much gradient flows through each unit over time: a running average (decay η,
    bias-corrected) of E_x|∂L(x)/∂a_i| at the unit's activation (`site="activation"`, the
    default; `"preactivation"` reads it before the activation function), averaged over
    positions, over the layer mean.

    One observation is GraMa at the same site; the running average tells a unit whose gradient
    stays small from one that is small on one batch.
    """

    site: str = "activation"
    decay: float = 0.99
    eps: float = 0.0

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(
                f"GradientFlow site {self.site!r} is unknown; use one of {list(SITES)}."
            )
        _check_decay("GradientFlow", self.decay)

    @property
    def name(self) -> str:
        return "grad_flow" if self.site == "activation" else "grad_flow_preactivation"

    def init(self, anatomy: Anatomy) -> RunningAverage:
        return RunningAverage.zeros(anatomy)

    def on_reset(self, state: RunningAverage, replaced: dict[str, Array]) -> RunningAverage:
        """Replaced units start afresh: their averages and ages go back to zero."""
        return state.restart(replaced)

    def score(
        self, anatomy: Anatomy, observation: Observation, state: RunningAverage
    ) -> tuple[Scores, RunningAverage]:
        magnitudes = per_unit_mean({k: jnp.abs(g) for k, g in observation.grads(self.site).items()})
        state = state.advance(magnitudes, self.decay)
        return {k: normalise(v, self.eps) for k, v in state.corrected(self.decay).items()}, state
