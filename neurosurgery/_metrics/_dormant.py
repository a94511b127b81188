"""τ-dormant (ReDo, Sokar et al. 2023): mean activation magnitude per unit."""

from __future__ import annotations

import dataclasses

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores, _abs, _normalised, per_unit_mean
from ._observe import Observation


@register_metric("dormant")
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
