"""Aggregate statistics of RL results, after Agarwal et al. (2021), "Deep Reinforcement Learning
at the Edge of the Statistical Precipice" (NeurIPS): the interquartile mean over runs and tasks,
with 95 % confidence intervals from a bootstrap stratified by task, and scores normalised to a
baseline method.

Scores come as an array `(runs, tasks)`: one final (or last-k) evaluation return per seed and
task. Every function is plain numpy; the bootstrap is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
from jaxtyping import Float

#: fewer seeds than this make bootstrap intervals too narrow to trust (Agarwal et al., Sec. 4)
MIN_SEEDS = 5


class FewSeedsWarning(UserWarning):
    """A cell of a table rests on fewer than `MIN_SEEDS` seeds."""


def iqm(scores: Float[np.ndarray, "..."]) -> float:
    """Interquartile mean of all `scores`: the mean of the values left after cutting
    `floor(n / 4)` from each end of the sorted values (as `scipy.stats.trim_mean(x, 0.25)`)."""
    x = np.sort(np.asarray(scores, np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("iqm of no scores: give at least one run of one task")
    cut = int(0.25 * x.size)
    return float(np.mean(x[cut : x.size - cut]))


def mean(scores: Float[np.ndarray, "..."]) -> float:
    return float(np.mean(np.asarray(scores, np.float64)))


def median(scores: Float[np.ndarray, "..."]) -> float:
    return float(np.median(np.asarray(scores, np.float64)))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its `level` confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def stratified_bootstrap(
    scores: Float[np.ndarray, "runs tasks"],
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """`statistic` of `scores` with a percentile confidence interval from a bootstrap that
    resamples runs with replacement within each task (every replicate keeps `runs` runs of
    every task).

    Raises:
        ValueError: `scores` is not 2-D `(runs, tasks)`, is empty, holds NaNs, or `level` is
            not in (0, 1).
    """
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(
            f"scores must be an array (runs, tasks) with at least one of each, got shape {x.shape}"
        )
    if np.isnan(x).any():
        raise ValueError(
            "scores hold NaN: a run without a final evaluation; leave it out (it is still "
            "running, or it failed) rather than bootstrapping over it"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if x.shape[0] < MIN_SEEDS:
        warnings.warn(
            f"{x.shape[0]} runs per task: bootstrap intervals with fewer than {MIN_SEEDS} runs "
            "are too narrow to trust",
            FewSeedsWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    runs, tasks = x.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    replicates = np.array([statistic(np.take_along_axis(x, i, axis=0)) for i in idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return Estimate(statistic(x), float(low), float(high), level)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A method's score over a baseline's, as mean ± standard deviation over seeds."""

    mean: float
    std: float
    seeds: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


def normalised(
    method: Float[np.ndarray, "runs tasks"], baseline: Float[np.ndarray, "base_runs tasks"]
) -> Ratio:
    """The method's score relative to the baseline's, in the format of the paper's Table 8
    ("ReGraMa / vanilla = 1.21 ± 0.03"): each seed's score on each task divided by the
    baseline's mean score on that task over its seeds, averaged over tasks; the mean and the
    (population) standard deviation of that over the method's seeds.

    Raises:
        ValueError: the two arrays cover different numbers of tasks, or the baseline's mean
            on a task is zero (a ratio to it means nothing).
    """
    m, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    if m.ndim != 2 or b.ndim != 2 or m.shape[1] != b.shape[1] or 0 in m.shape or 0 in b.shape:
        raise ValueError(
            f"method {m.shape} and baseline {b.shape} must be (runs, tasks) arrays over the "
            "same tasks"
        )
    ref = b.mean(axis=0)
    if (ref == 0).any():
        raise ValueError(
            f"the baseline's mean score is 0 on task(s) {np.nonzero(ref == 0)[0].tolist()}: "
            "normalise by another method, or leave those tasks out"
        )
    per_seed = (m / ref).mean(axis=1)
    return Ratio(float(per_seed.mean()), float(per_seed.std()), int(m.shape[0]))
