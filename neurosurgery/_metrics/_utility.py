"""Contribution utility of continual backprop (Dohare et al., Nature 2024)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import RunningAverage, Scores, _abs, _check_decay, per_unit_mean, unit_reduce
from ._observe import Observation, normalise

#: the state of `Utility` (a running average with per-unit ages)
UtilityState = RunningAverage


def contribution(anatomy: Anatomy, observation: Observation) -> dict[str, jax.Array]:
    """Each observed unit's instantaneous contribution E_x|h_i(x)| · Σ_k |w_out,ki| (the
    activation magnitude alone for output units, which have no outgoing weights)."""
    weights = [jnp.abs(w) for w in jax.tree_util.tree_leaves(observation.params)]
    out = {}
    for name, act in per_unit_mean(_abs(observation.activations)).items():
        g = anatomy[name]
        fan_out = unit_reduce(g, g.outgoing, weights, "sum") if g.outgoing else 1.0
        out[name] = act * fan_out
    return out


@register_metric("utility")
@dataclasses.dataclass(frozen=True)
class Utility:
    """Contribution utility of continual backprop (Dohare et al. 2024, Eq. 1).

    A running average (decay η) of |h_i| · Σ_k |w_out,ki| (activation times the total magnitude
    of the unit's outgoing weights), divided by `1 − η^age` (its bias correction: the average
    starts at zero), over the layer mean. Each call is one update of the average; the state
    keeps every unit's age, which [`CBP`][neurosurgery.CBP] sets back to zero for the units it
    replaces. Output units have no outgoing weights; their utility is the activation magnitude.
    """

    decay: float = 0.99
    eps: float = 0.0

    def __post_init__(self) -> None:
        _check_decay("Utility", self.decay)

    @property
    def name(self) -> str:
        return "utility"

    def init(self, anatomy: Anatomy) -> RunningAverage:
        return RunningAverage.zeros(anatomy)

    def on_reset(self, state: RunningAverage, replaced: dict[str, Array]) -> RunningAverage:
        """Replaced units start afresh: their averages and ages go back to zero."""
        return state.restart(replaced)

    def score(
        self, anatomy: Anatomy, observation: Observation, state: RunningAverage
    ) -> tuple[Scores, RunningAverage]:
        state = state.advance(contribution(anatomy, observation), self.decay)
        return {k: normalise(v, self.eps) for k, v in state.corrected(self.decay).items()}, state
