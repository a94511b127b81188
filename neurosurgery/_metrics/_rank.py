"""The rank of a layer's features: srank and effective rank per layer, leverage per unit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._anatomy._anatomy import Anatomy
from .._registry import register_metric
from ._base import EmptyState, Scores
from ._observe import Observation


def _singular(features: Float[Array, "samples width"]) -> tuple[Array, Array]:
    """Singular values (descending) and right singular vectors (rows) of a feature matrix."""
    _, s, vt = jnp.linalg.svd(features.astype(jnp.float32), full_matrices=False)
    return s, vt


def _srank_of(s: Array, delta: float) -> Array:
    total = jnp.sum(s)
    kept = jnp.cumsum(s)
    # the smallest k with Σ_{i≤k} σ_i ≥ (1 − δ) Σ σ: one more than the number of prefixes short of it
    k = 1 + jnp.sum(kept < (1.0 - delta) * total)
    return jnp.where(total > 0, k, 0).astype(jnp.int32)


def srank(features: Float[Array, "samples width"], delta: float = 0.01) -> Array:
    """srank_δ (Kumar et al. 2021, "Implicit under-parameterization"): the number of singular
    values of the feature matrix needed to hold `1 − δ` of their sum (0 for a zero matrix)."""
    return _srank_of(_singular(features)[0], delta)


def effective_rank(features: Float[Array, "samples width"]) -> Array:
    """Effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular
    values p_i = σ_i / Σ σ; between 1 and the width, 0 for a zero matrix."""
    s = _singular(features)[0]
    total = jnp.sum(s)
    p = s / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


@register_metric("feature_rank")
@dataclasses.dataclass(frozen=True)
class FeatureRank:
    """The rank of each layer's features, and each unit's share of it.

    Φ is the layer's activations, samples (and positions) by units, per ensemble member, not
    centred (as Kumar et al. 2021 use it). Its srank_δ is a figure of the whole layer, not of a
    unit, so it is reported as a figure ([`figures`][neurosurgery.FeatureRank.figures]:
    `srank/<group>` and `effective_rank/<group>`, the mean over members), and the per-unit
    score is what the rank says about each unit: its **leverage** on the layer's top-k right
    singular vectors (k = srank_δ), ℓ_i = Σ_{r<k} V_ir², divided by the layer mean k/width. The
    leverages sum to k; a unit with leverage 0 lies outside the span that holds `1 − δ` of the
    features (a silent unit, or a small copy of others), and two exact clones share one unit's
    leverage. Not a running average: one batch.
    """

    delta: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"FeatureRank: delta={self.delta!r} must lie in [0, 1)")

    @property
    def name(self) -> str:
        return "feature_rank"

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def _per_member(self, a: Array):
        """Φ per member, `(*members, samples, width)` flattened to `(m, samples, width)`."""
        features = a.reshape(-1, *a.shape[2:])  # (samples, *members, width)
        members = features.shape[1:-1]
        flat = features.reshape(features.shape[0], -1, features.shape[-1])
        return jnp.moveaxis(flat, 1, 0), members

    def score(
        self, anatomy: Anatomy, observation: Observation, state: EmptyState
    ) -> tuple[Scores, EmptyState]:
        out = {}
        for name, a in observation.activations.items():
            phi, members = self._per_member(a)

            def leverage(phi: Array) -> Array:
                s, vt = _singular(phi)
                k = _srank_of(s, self.delta)
                top = (jnp.arange(vt.shape[0]) < k)[:, None]
                lev = jnp.sum(jnp.where(top, vt**2, 0.0), axis=0)
                mean = k.astype(jnp.float32) / phi.shape[-1]
                return jnp.where(k > 0, lev / jnp.where(k > 0, mean, 1.0), jnp.zeros_like(lev))

            out[name] = jax.vmap(leverage)(phi).reshape(*members, phi.shape[-1])
        return out, state

    def figures(self, anatomy: Anatomy, observation: Observation) -> dict[str, Array]:
        """`srank/<group>` and `effective_rank/<group>` of every observed group (the mean over
        ensemble members)."""
        out = {}
        for name, a in observation.activations.items():
            phi, _ = self._per_member(a)
            ranks = jax.vmap(lambda p: srank(p, self.delta))(phi).astype(jnp.float32)
            out[f"srank/{name}"] = jnp.mean(ranks)
            out[f"effective_rank/{name}"] = jnp.mean(jax.vmap(effective_rank)(phi))
        return out
