"""Selection of flagged units from per-unit scores.

Scores are normalised per layer along the last axis (higher = more active); any leading axes are
ensemble members (or seeds), each selected on its own. Every rule takes one layer's scores or a
dict of them (group name → scores, as a metric's `score` returns) and returns boolean masks of the
same form, `True` where a unit is flagged. All of them are jittable and vmappable: the number of
units to flag is computed with array operations, never by branching on values in Python.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree, Real, ScalarLike

__all__ = [
    "Selection",
    "bottom_fraction",
    "capped_threshold",
    "inactive_ratio",
    "network_inactive_ratio",
    "threshold",
]

Scores = Float[Array | np.ndarray, "*members n"]
Mask = Bool[Array, "*members n"]
ScoresOrDict = Scores | Mapping[str, Scores]
MaskOrDict = Mask | dict[str, Mask]

# Relative slack when turning `fraction * n` into a count, so that a fraction written as a decimal
# (0.29 of 100 units: 28.999999999999996 in floating point) still flags floor(29) = 29 units.
_COUNT_SLACK = 1e-6


def _concrete(value: ScalarLike) -> float | None:
    """Return `value` as a Python float, or `None` when it is traced (and so cannot be checked)."""
    try:
        array = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    if array.shape != ():
        raise ValueError(f"expected a scalar, got an array of shape {array.shape}")
    return float(array)


def _check_tau(tau: ScalarLike) -> None:
    value = _concrete(tau)
    if value is not None and not value >= 0.0:  # also rejects NaN
        raise ValueError(
            f"tau={value!r} is invalid: scores are non-negative and a unit is flagged when its "
            "score is <= tau, so tau must be a number >= 0 (use tau=0.0 to flag only fully "
            "inactive units)"
        )


def _check_fraction(name: str, fraction: ScalarLike) -> None:
    value = _concrete(fraction)
    if value is not None and not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(
            f"{name}={value!r} is invalid: it is a fraction of each layer's units, so it must lie "
            f"in [0, 1] (for a percentage p, pass {name}=p / 100)"
        )


def _ranks(scores: Scores) -> Array:
    """Rank of each unit within its layer, lowest score first; equal scores ranked by index."""
    order = jnp.argsort(scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def _count(fraction: ScalarLike, n: int) -> Array:
    """`floor(fraction * n)` as an int32 array, with slack for decimal round-off."""
    exact = jnp.asarray(fraction, dtype=jnp.float32) * jnp.float32(n)
    return jnp.floor(exact * jnp.float32(1.0 + _COUNT_SLACK)).astype(jnp.int32)


def _per_layer(rule: Callable[..., Any]) -> Callable[..., Any]:
    """Apply a one-layer rule to each entry of a dict of scores, and refuse a `(scores, state)`
    pair with the fix."""

    @functools.wraps(rule)
    def apply(scores: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(scores, tuple):
            raise TypeError(
                f"{rule.__name__} got a tuple where scores were expected; a metric's `score` "
                "returns `(scores, state)`: unpack it first, `scores, state = "
                "metric.score(anatomy, observation, state)`."
            )
        if isinstance(scores, Mapping):
            return {name: rule(value, *args, **kwargs) for name, value in scores.items()}
        return rule(scores, *args, **kwargs)

    return apply


@_per_layer
def threshold(scores: ScoresOrDict, tau: Real[ScalarLike, ""]) -> MaskOrDict:
    """Flag the units whose score is at most `tau` (ReDo's and GraMa's rule, `s_i <= tau`).

    `tau = 0` is allowed and flags exactly the units with a zero score. NaN scores are never
    flagged.

    Args:
        scores: Per-unit scores, normalised per layer along the last axis (or a dict of them).
        tau: Threshold, `>= 0`. Checked when given as a Python or NumPy number; a traced value
            (inside `jit`/`vmap`) cannot be checked and is used as is.

    Returns:
        Boolean mask of the scores' shape, `True` for flagged units.

    Raises:
        ValueError: If `tau` is negative or NaN.
    """
    _check_tau(tau)
    scores = jnp.asarray(scores)
    return scores <= jnp.asarray(tau, dtype=scores.dtype)


@_per_layer
def bottom_fraction(scores: ScoresOrDict, fraction: Real[ScalarLike, ""]) -> MaskOrDict:
    """Flag the `floor(fraction * n)` lowest-scoring units of each layer (per member row).

    Equal scores are broken by index (the lower index is flagged first), so the result is
    deterministic. NaN scores sort last, so they are flagged only when every other unit is.

    Args:
        scores: Per-unit scores, normalised per layer along the last axis (`n` units), or a
            dict of them.
        fraction: Fraction of each layer's units to flag, in `[0, 1]`. Checked when given as a
            Python or NumPy number; a traced value is used as is.

    Returns:
        Boolean mask of the scores' shape with exactly `floor(fraction * n)` `True` entries per row.

    Raises:
        ValueError: If `fraction` is outside `[0, 1]`.
    """
    _check_fraction("fraction", fraction)
    scores = jnp.asarray(scores)
    return _ranks(scores) < _count(fraction, scores.shape[-1])


@_per_layer
def capped_threshold(
    scores: ScoresOrDict, tau: Real[ScalarLike, ""], max_fraction: Real[ScalarLike, ""]
) -> MaskOrDict:
    """Flag units with score `<= tau`, keeping at most `floor(max_fraction * n)` per layer.

    This is the released GraMa code's "hybrid" mode (the paper caps SAC-Humanoid resets at 5%):
    when more units pass the threshold than the cap allows, the lowest scores are kept, ties broken
    by index.

    Args:
        scores: Per-unit scores, normalised per layer along the last axis (`n` units), or a
            dict of them.
        tau: Threshold, `>= 0`.
        max_fraction: Largest fraction of each layer's units that may be flagged, in `[0, 1]`.

    Returns:
        Boolean mask of the scores' shape, `True` for flagged units.

    Raises:
        ValueError: If `tau` is negative or `max_fraction` is outside `[0, 1]` (checked for
            Python/NumPy values).
    """
    _check_fraction("max_fraction", max_fraction)
    below = threshold(scores, tau)
    scores = jnp.asarray(scores)
    # Units below the threshold are a prefix of the sorted order, so capping them is the same as
    # intersecting them with the bottom `cap` units.
    return below & (_ranks(scores) < _count(max_fraction, scores.shape[-1]))


def inactive_ratio(mask: Bool[Array, "*members n"]) -> Float[Array, "*members"]:
    """Fraction of flagged units in a layer, per member row."""
    return jnp.mean(mask.astype(jnp.float32), axis=-1)


def network_inactive_ratio(
    masks: Sequence[Bool[Array, "..."]] | Mapping[str, Bool[Array, "..."]] | PyTree,
) -> Float[Array, "*members"]:
    """Fraction of flagged units over the whole network, each layer weighted by its unit count.

    Args:
        masks: Per-layer masks `(*members, n_layer)` in any container (list, dict, pytree). The
            leading member axes must agree across layers; unit counts may differ.

    Returns:
        `sum_l flagged_l / sum_l n_l`, per member row.

    Raises:
        ValueError: If there are no masks.
    """
    leaves = jax.tree.leaves(masks)
    if not leaves:
        raise ValueError(
            "network_inactive_ratio got no masks: pass at least one per-layer boolean mask"
        )
    flagged = sum(jnp.sum(jnp.asarray(m).astype(jnp.float32), axis=-1) for m in leaves)
    units = sum(jnp.shape(m)[-1] for m in leaves)
    return jnp.asarray(flagged / jnp.float32(units))


@dataclasses.dataclass(frozen=True)
class Selection:
    """A selection rule as a value: which units a score flags.

    `"threshold"` (score ≤ τ), `"fraction"` (the lowest `fraction` of each layer) or `"capped"`
    (score ≤ τ, at most `max_fraction` of each layer). Calling it applies the rule to a dict of
    scores (or one layer's). Any callable from scores to masks can stand in for it, e.g.
    `lambda scores: ns.bottom_fraction(scores, 0.05)`.
    """

    mode: str = "threshold"
    tau: float = 0.0
    fraction: float = 0.0
    max_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("threshold", "fraction", "capped"):
            raise ValueError(
                f"selection mode {self.mode!r} is unknown; use threshold, fraction or capped"
            )
        _check_tau(self.tau)
        _check_fraction("fraction", self.fraction)
        _check_fraction("max_fraction", self.max_fraction)

    def __call__(self, scores: Any) -> Any:
        if self.mode == "threshold":
            return threshold(scores, self.tau)
        if self.mode == "fraction":
            return bottom_fraction(scores, self.fraction)
        return capped_threshold(scores, self.tau, self.max_fraction)
