"""Fisher proxy: a running average of each unit's squared per-sample gradient."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import RunningAverage, Scores, _check_decay
from ._observe import SITES, Observation, normalise


@register_metric("fisher", fisher_activation={"site": "activation"})
@dataclasses.dataclass(frozen=True)
class Fisher:
    """Diagonal empirical Fisher information of each unit, as a running average.

    Per sample x, g_i(x) = Σ_p ∂L(x)/∂z_i,p: the gradient of the sample's loss with respect to
    a shift added to the unit's value at every position p (its bias direction; one position for a
    dense layer), read at `site` (`"preactivation"` by default, or `"activation"`). The score is
    a running average over updates (decay η, bias-corrected as in
    [`RunningAverage`][neurosurgery.RunningAverage]) of E_x g_i(x)², over the layer mean. A unit
    whose squared gradient is small on every sample is one the loss is flat in: the Fisher
    proxy of elastic weight consolidation (Kirkpatrick et al. 2017), per unit.

    Per-sample gradients of a mean loss carry a factor 1/batch, squared here; the layer-mean
    normalisation removes it.
    """

    site: str = "preactivation"
    decay: float = 0.99
    eps: float = 0.0

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"Fisher site {self.site!r} is unknown; use one of {list(SITES)}.")
        _check_decay("Fisher", self.decay)

    @property
    def name(self) -> str:
        return "fisher" if self.site == "preactivation" else "fisher_activation"

    def init(self, anatomy: Anatomy) -> RunningAverage:
        return RunningAverage.zeros(anatomy)

    def on_reset(self, state: RunningAverage, replaced: dict[str, Array]) -> RunningAverage:
        """Replaced units start afresh: their averages and ages go back to zero."""
        return state.restart(replaced)

    def score(
        self, anatomy: Anatomy, observation: Observation, state: RunningAverage
    ) -> tuple[Scores, RunningAverage]:
        squared = {
            k: jnp.mean(jnp.sum(g, axis=1) ** 2, axis=0)
            for k, g in observation.grads(self.site).items()
        }
        state = state.advance(squared, self.decay)
        return {k: normalise(v, self.eps) for k, v in state.corrected(self.decay).items()}, state
