"""Saturation of smooth activations: how often a tanh or sigmoid unit sits in a flat tail."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores
from ._observe import Observation

#: per activation: its derivative as a function of its output a, the derivative's maximum, and
#: the range of its outputs
_ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], float, tuple[float, float]]] = {
    "tanh": (lambda a: 1.0 - a**2, 1.0, (-1.0, 1.0)),
    "sigmoid": (lambda a: a * (1.0 - a), 0.25, (0.0, 1.0)),
}

#: relative tolerance of the check that the gradients obey the activation's derivative
_RTOL = 1e-2


def saturated(activation: str, values: Array, tol: float) -> Array:
    """Where `values` (outputs of `activation`) lie in a flat tail: where the activation's
    derivative is at most `tol` times its maximum."""
    slope, top, _ = _ACTIVATIONS[activation]
    return slope(values) <= tol * top


@register_metric("saturation_tanh", saturation_sigmoid={"activation": "sigmoid"})
@dataclasses.dataclass(frozen=True)
class Saturation:
    """Share of samples on which a tanh or sigmoid unit is *not* saturated.

    A sample is in a flat tail (saturated) where the activation's derivative is at most `tol`
    times its largest: for tanh, 1 − a² ≤ tol (`tol = 0.05`: |a| ≥ 0.975, |z| ≥ 2.18); for
    sigmoid, 4a(1 − a) ≤ tol (`tol = 0.05`: a ≤ 0.0127 or a ≥ 0.9873, |z| ≥ 4.36), with a the
    unit's output. There the unit passes at most `tol` of the gradient it passes at its
    steepest. Positions of a convolution count as samples.

    The score of unit i is 1 − (its saturated share), in [0, 1]: a share, so it is **not**
    divided by the layer mean (τ = 0.05 flags units saturated on at least 95 % of the samples).
    Scored groups: `groups` (names), or every hidden observed group.

    Saturation only means something for these activations, so each scored group is checked on
    every call: its outputs must lie in the activation's range, and its per-sample gradients
    must obey the activation's derivative (∂L/∂z = ∂L/∂a · tanh′, read from the observation's
    two gradient sites). A group that fails (a ReLU layer, a linear one) stops the program with
    an error naming it; restrict `groups` to the layers with this activation.
    """

    activation: str = "tanh"
    tol: float = 0.05
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"Saturation: activation {self.activation!r} is unknown; use one of "
                f"{list(_ACTIVATIONS)} (saturation is defined for bounded smooth activations)"
            )
        if not 0.0 < self.tol < 1.0:
            raise ValueError(
                f"Saturation: tol={self.tol!r} is invalid: it is a fraction of the steepest "
                "slope, in (0, 1)"
            )

    @property
    def name(self) -> str:
        return f"saturation_{self.activation}"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def _scored(self, anatomy: Anatomy) -> tuple[str, ...]:
        if self.groups is None:
            return tuple(g.name for g in anatomy.observed if g.hidden)
        observed = {g.name for g in anatomy.observed}
        unknown = [g for g in self.groups if g not in observed]
        if unknown:
            raise ValueError(
                f"Saturation: groups {unknown} are not observed groups of this anatomy; choose "
                f"among {sorted(observed)}"
            )
        return tuple(self.groups)

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        slope, top, (low, high) = _ACTIVATIONS[self.activation]
        pre, post = observation.grads("preactivation"), observation.grads("activation")
        out = {}
        for name in self._scored(anatomy):
            a = observation.activations[name]
            outside = jnp.any((a < low - 1e-6) | (a > high + 1e-6))
            g_pre, g_post = pre[name], post[name]
            scale = jnp.max(jnp.abs(g_post))
            mismatch = jnp.abs(g_pre - g_post * slope(a)) > _RTOL * top * jnp.abs(g_post) + (
                1e-6 * top * scale
            )
            a = eqx.error_if(
                a,
                outside | jnp.any(mismatch),
                f"Saturation({self.activation!r}): group {name!r} is not a {self.activation} "
                "layer (its outputs leave the activation's range or its gradients do not follow "
                f"the {self.activation} derivative); pass groups=(...) naming only the "
                f"{self.activation} layers",
            )
            share = jnp.mean(saturated(self.activation, a, self.tol).astype(jnp.float32), (0, 1))
            out[name] = 1.0 - share
        return out, state
