"""Score one observation with several metrics and compare what they flag."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._anatomy._anatomy import Anatomy
from . import Metric, Scores, init_state
from ._observe import Observation


def checked_score(
    metric: Metric, anatomy: Anatomy, observation: Observation, state: Any
) -> tuple[Scores, Any]:
    """`metric.score(anatomy, observation, state)`, checked: a pair `(scores, state)` whose
    scores map groups of the anatomy to one value per unit (the group's `unit_shape`). Works
    under `jax.jit` (shapes are static), so a metric of one's own fails at its first call with
    what is wrong, not deep inside a training step.

    Raises:
        TypeError: `score` returned something else than a pair of a mapping and a state, or
            a group's scores are not an array.
        ValueError: a group the anatomy does not have, or scores of another shape.
    """
    name = getattr(metric, "name", type(metric).__name__)
    out = metric.score(anatomy, observation, state)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping)):
        raise TypeError(
            f"metric {name!r}: score(anatomy, observation, state) returned "
            f"{type(out).__name__}, not a pair (scores, state) with scores a dict group → "
            "one score per unit; return `(scores, state)` (stateless: `ns.EmptyState()`)"
        )
    scores, new = out
    for g, x in scores.items():
        if g not in anatomy.names:
            raise ValueError(
                f"metric {name!r} scored group {g!r}, which this anatomy does not have; its "
                f"groups: {list(anatomy.names)}"
            )
        if not hasattr(x, "shape"):
            raise TypeError(
                f"metric {name!r}: the scores of group {g!r} are {type(x).__name__}, not an "
                f"array of the group's unit shape {anatomy[g].unit_shape}"
            )
        if tuple(x.shape) != anatomy[g].unit_shape:
            raise ValueError(
                f"metric {name!r}: the scores of group {g!r} have shape {tuple(x.shape)}, the "
                f"group's units {anatomy[g].unit_shape}; return one score per unit (reduce "
                "over batch and positions, keep ensemble members)"
            )
    return scores, new


def score_all(
    anatomy: Anatomy,
    metrics: Sequence[Metric],
    observation: Observation,
    states: Mapping[str, Any] | None = None,
) -> dict[str, Scores]:
    """Scores of every metric for one observation, keyed by metric name.

    `states` maps metric names to their states (each metric's `init(anatomy)` where missing);
    use the metrics' own `score` to carry states forward.
    """
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics must have distinct names to be told apart, got {names}")
    out = {}
    for metric in metrics:
        state = (states or {}).get(metric.name)
        state = init_state(metric, anatomy, observation.params) if state is None else state
        out[metric.name] = checked_score(metric, anatomy, observation, state)[0]
    return out


def _top_quarter(x: np.ndarray) -> np.ndarray:
    """Units in the top 25 % of their layer (per member row), ties by index."""
    n = x.shape[-1]
    k = n - int(np.ceil(0.75 * n))
    ranks = np.argsort(np.argsort(-x, axis=-1, kind="stable"), axis=-1, kind="stable")
    return ranks < k


@dataclasses.dataclass
class Comparison:
    """Per-layer inactive ratios of several metrics and how much their flagged sets agree.

    Attributes:
        inactive: metric → group → fraction of units with score ≤ τ.
        network: metric → fraction over all compared groups (weighted by units).
        jaccard: (metric a, metric b) → group → |A ∩ B| / |A ∪ B| of the flagged sets
            (NaN when both are empty: there is nothing to agree on; `table` shows "–").
        quadrants: group → counts of units (high activation & high gradient, high activation &
            low gradient, low activation & high gradient, low & low), "high" meaning in the top
            25 % of the layer, for the activation and gradient metrics named in `quadrant_metrics`.
    """

    inactive: dict[str, dict[str, float]]
    network: dict[str, float]
    jaccard: dict[tuple[str, str], dict[str, float]]
    quadrants: dict[str, tuple[int, int, int, int]]
    quadrant_metrics: tuple[str, str] | None

    def table(self) -> str:
        """A readable table: one row per group, inactive % per metric, then agreement."""
        metrics = list(self.inactive)
        groups = list(next(iter(self.inactive.values())))
        head = ["group", *[f"{m} %" for m in metrics], *[f"J({a},{b})" for a, b in self.jaccard]]
        if self.quadrants:
            head.append("quadrants hh/hl/lh/ll")
        rows = [head]
        for g in groups:
            row = [g, *[f"{100 * self.inactive[m].get(g, float('nan')):.1f}" for m in metrics]]
            row += [_two(self.jaccard[p].get(g, float("nan"))) for p in self.jaccard]
            if self.quadrants:
                row.append("/".join(map(str, self.quadrants.get(g, ()))))
            rows.append(row)
        rows.append(["network", *[f"{100 * self.network[m]:.1f}" for m in metrics]])
        widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows
        )


def _two(x: float) -> str:
    return "–" if np.isnan(x) else f"{x:.2f}"


def _check(anatomy: Anatomy, scores: Mapping[str, Scores], tau: Any) -> dict[str, float]:
    """The threshold of each metric; every score array of the group's unit shape."""
    if isinstance(tau, Mapping):
        missing = sorted(set(scores) - set(tau))
        if missing:
            raise ValueError(
                f"tau has no threshold for {missing} (it has {sorted(tau)}); give one per "
                "metric compared, or one number for all"
            )
        taus = {m: tau[m] for m in scores}
    else:
        taus = {m: tau for m in scores}
    for m, by_group in scores.items():
        if not isinstance(by_group, Mapping):
            raise ValueError(
                f"scores[{m!r}] is a {type(by_group).__name__}, not a mapping group → scores; "
                "score with `ns.score_all(anatomy, metrics, observation)`"
            )
        for g, x in by_group.items():
            if g not in anatomy.names:
                raise ValueError(
                    f"scores[{m!r}] has group {g!r}, which this anatomy does not have; its "
                    f"groups: {list(anatomy.names)}"
                )
            shape = tuple(np.shape(x)) if x is not None else None
            if shape != anatomy[g].unit_shape:
                raise ValueError(
                    f"scores[{m!r}][{g!r}] has shape {shape}, the group's units "
                    f"{anatomy[g].unit_shape}: one score per unit (a metric's `score` must "
                    "return the unit shape of every group it scores)"
                )
    return taus


def compare(
    anatomy: Anatomy,
    scores: Mapping[str, Scores],
    tau: float | Mapping[str, float] = 0.0,
    *,
    hidden_only: bool = True,
    quadrant_metrics: tuple[str, str] | None = ("dormant", "grama"),
) -> Comparison:
    """Compare metrics on the same units: inactive ratios, Jaccard agreement and quadrants.

    Args:
        anatomy: the anatomy the scores belong to.
        scores: metric name → group → scores (see [`score_all`][neurosurgery.score_all]).
            Groups some metric does not score (declared groups for activation metrics) are left
            out.
        tau: the threshold, one for all metrics or one per metric name.
        hidden_only: leave output groups out.
        quadrant_metrics: (activation metric, gradient metric) for the quadrant counts, as in the
            paper's analysis; skipped when either is missing.

    Raises:
        ValueError: `tau` maps no threshold to a metric of `scores`; a score array is not of
            its group's unit shape; a group the anatomy does not have.
    """
    taus = _check(anatomy, scores, tau)
    keep = [g for g in anatomy.groups if not (hidden_only and g.output)]
    names = [g.name for g in keep if all(g.name in s for s in scores.values())]
    flagged = {m: {g: np.asarray(s[g]) <= taus[m] for g in names} for m, s in scores.items()}
    inactive = {m: {g: float(f[g].mean()) for g in names} for m, f in flagged.items()}
    total = sum(anatomy[g].n_units for g in names)
    network = {m: float(sum(f[g].sum() for g in names)) / max(total, 1) for m, f in flagged.items()}
    jaccard = {}
    for a, b in itertools.combinations(scores, 2):
        jaccard[(a, b)] = {}
        for g in names:
            union = np.logical_or(flagged[a][g], flagged[b][g]).sum()
            inter = np.logical_and(flagged[a][g], flagged[b][g]).sum()
            jaccard[(a, b)][g] = float(inter / union) if union else float("nan")
    quadrants = {}
    if quadrant_metrics and all(m in scores for m in quadrant_metrics):
        act_m, grad_m = quadrant_metrics
        for g in names:
            hi_a = _top_quarter(np.asarray(jnp.asarray(scores[act_m][g])))
            hi_g = _top_quarter(np.asarray(jnp.asarray(scores[grad_m][g])))
            quadrants[g] = (
                int((hi_a & hi_g).sum()),
                int((hi_a & ~hi_g).sum()),
                int((~hi_a & hi_g).sum()),
                int((~hi_a & ~hi_g).sum()),
            )
    return Comparison(
        inactive, network, jaccard, quadrants, quadrant_metrics if quadrants else None
    )
