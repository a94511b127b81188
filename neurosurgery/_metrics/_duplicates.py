"""Duplicate units: pairs of units of a layer whose activations are near-collinear."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores
from ._observe import Observation


def cosines(features: Float[Array, "samples *members width"], centered: bool = False) -> Array:
    """|cos| between every pair of units' activation vectors across samples, per member:
    `(*members, width, width)`. A unit whose vector is zero has cosine 0 with every other."""
    x = features - jnp.mean(features, axis=0, keepdims=True) if centered else features
    x = jnp.moveaxis(x, 0, -1)  # (*members, width, samples)
    gram = jnp.einsum("...is,...js->...ij", x, x, precision=jax.lax.Precision.HIGHEST)
    norms = jnp.sqrt(jnp.diagonal(gram, axis1=-2, axis2=-1))
    outer = norms[..., :, None] * norms[..., None, :]
    safe = jnp.where(outer > 0, outer, jnp.ones_like(outer))
    return jnp.where(outer > 0, jnp.abs(gram) / safe, jnp.zeros_like(gram))


@register_metric("duplicates", duplicates_centered={"centered": True})
@dataclasses.dataclass(frozen=True)
class Duplicates:
    """Units that copy an earlier unit of their layer: 1 − max_{i<j} |cos(a_i, a_j)|.

    a_i is unit i's activation across the batch (samples and positions flattened into one
    vector); two units whose vectors are collinear (|cos| = 1) carry one feature between them,
    and cloned units lose plasticity as dead ones do (arXiv 2510.00304). Each unit is compared with the
    units before it, so of a pair the later unit scores low and the first scores 1: resetting
    the low scores keeps one unit of every clone set. `centered=True` compares centred vectors
    (Pearson correlation: units equal up to scale *and shift*). A unit silent on the whole
    batch has no direction and scores 1 (τ-dormant sees it).

    The score is a similarity, not a magnitude, so it is **not** divided by the layer mean:
    τ = 0.01 flags units whose activations are at least 0.99-collinear with an earlier unit's.
    """

    centered: bool = False

    @property
    def name(self) -> str:
        return "duplicates" if not self.centered else "duplicates_centered"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        out = {}
        for name, a in observation.activations.items():
            features = a.reshape(-1, *a.shape[2:]).astype(jnp.float32)
            cos = cosines(features, self.centered)
            width = cos.shape[-1]
            earlier = jnp.arange(width)[:, None] < jnp.arange(width)[None, :]  # i < j
            out[name] = 1.0 - jnp.max(jnp.where(earlier, cos, 0.0), axis=-2)
        return out, state
