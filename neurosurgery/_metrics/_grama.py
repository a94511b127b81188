"""GraMa (Liu et al. 2025, "Measure gradients, not activations!"): gradient magnitude per unit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores, _abs, _normalised, per_unit_mean, unit_reduce
from ._observe import Observation, normalise

#: what each GraMa source is called in scores and logs
GRAMA_NAMES = {"preactivation": "grama", "activation": "grama_activation", "weight": "grama_weight"}


@register_metric(
    "grama", grama_activation={"source": "activation"}, grama_weight={"source": "weight"}
)
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
