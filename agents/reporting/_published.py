"""Published learning curves, shipped as data: per-seed evaluation returns of released agents,
read from the files their authors published (provenance: `published/SOURCES.md`).

The table is long: `source, algorithm, task, seed, env_step, return`, one row per seed and
evaluation. Tasks carry this project's environment names (`dmc/cheetah-run`). Points are those
published, at the env steps they were published at: nothing here interpolates.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import itertools
from collections import defaultdict
from importlib import resources

import numpy as np

COLUMNS = ("source", "algorithm", "task", "seed", "env_step", "return")
_FILE = "curves.csv.gz"


@dataclasses.dataclass(frozen=True)
class Curve:
    """One published algorithm on one task: `returns[i, j]` is seed `seeds[i]`'s evaluation
    return at `steps[j]` (NaN where that seed has no evaluation at that step)."""

    algorithm: str
    task: str
    source: str
    seeds: tuple[int, ...]
    steps: tuple[int, ...]
    returns: np.ndarray

    def at(self, step: int) -> np.ndarray:
        """The seeds' returns at `step`, a published evaluation step.

        Raises:
            KeyError: `step` is not one of `steps` (no value is made up between two points).
        """
        if step not in self.steps:
            raise KeyError(
                f"{self.algorithm} on {self.task} has no published point at env step {step}; "
                f"it has points {self.span()}"
            )
        x = self.returns[:, self.steps.index(step)]
        return x[~np.isnan(x)]

    def span(self) -> str:
        """Where the published points are, in words ("every 25,000 env steps from 25,000 to
        1,000,000")."""
        steps = self.steps
        if len(steps) > 2 and len({b - a for a, b in itertools.pairwise(steps)}) == 1:
            return f"every {steps[1] - steps[0]:,} env steps from {steps[0]:,} to {steps[-1]:,}"
        return "at env steps " + ", ".join(f"{s:,}" for s in steps)


@functools.cache
def _table() -> dict[tuple[str, str], Curve]:
    raw = resources.files("agents.reporting").joinpath("published", _FILE).read_bytes()
    reader = csv.reader(io.StringIO(gzip.decompress(raw).decode()))
    if tuple(next(reader)) != COLUMNS:
        raise ValueError(f"published/{_FILE}: its columns are not {COLUMNS}")
    points: dict[tuple[str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    sources: dict[tuple[str, str], str] = {}
    for source, algorithm, task, seed, step, value in reader:
        points[(algorithm, task)][(int(seed), int(step))] = float(value)
        sources[(algorithm, task)] = source
    out = {}
    for key, by in points.items():
        seeds = tuple(sorted({s for s, _ in by}))
        steps = tuple(sorted({t for _, t in by}))
        returns = np.full((len(seeds), len(steps)), np.nan)
        for (s, t), v in by.items():
            returns[seeds.index(s), steps.index(t)] = v
        out[key] = Curve(key[0], key[1], sources[key], seeds, steps, returns)
    return out


def published_algorithms() -> tuple[str, ...]:
    """The algorithms with published curves (`BRO`, `BRO_fast`, `SAC`)."""
    return tuple(sorted({a for a, _ in _table()}))


def published_tasks(algorithm: str) -> tuple[str, ...]:
    """The tasks `algorithm` has published curves on."""
    check_published(algorithm)
    return tuple(sorted(t for a, t in _table() if a == algorithm))


def check_published(algorithm: str, task: str | None = None) -> None:
    """Raise ValueError unless `algorithm` has a published curve (on `task`, if given), naming
    what there is."""
    algorithms = published_algorithms()
    if algorithm not in algorithms:
        raise ValueError(
            f"no published curves of {algorithm!r}; those shipped: {', '.join(algorithms)} "
            "(agents/reporting/published/SOURCES.md says where each comes from)"
        )
    if task is not None and (algorithm, task) not in _table():
        tasks = sorted(t for a, t in _table() if a == algorithm)
        raise ValueError(
            f"{algorithm} has no published curve on {task}; its tasks: {', '.join(tasks)}. "
            "Compare on one of them, or leave `published` unset for this run"
        )


def published_curve(algorithm: str, task: str) -> Curve:
    """The published curve of `algorithm` on `task`.

    Raises:
        ValueError: there is none (the message names the algorithms and tasks there are).
    """
    check_published(algorithm, task)
    return _table()[(algorithm, task)]


def mean_band(
    curve: Curve, *, reps: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds at each published step and its `level` percentile bootstrap interval
    (seeds resampled with replacement): `(mean, low, high)`, each `(len(curve.steps),)`."""
    rng = np.random.default_rng(seed)
    mean, low, high = [], [], []
    alpha = (1 - level) / 2
    for j in range(len(curve.steps)):
        x = curve.returns[:, j]
        x = x[~np.isnan(x)]
        reps_mean = x[rng.integers(0, len(x), size=(reps, len(x)))].mean(axis=1)
        lo, hi = np.quantile(reps_mean, [alpha, 1 - alpha])
        mean.append(x.mean())
        low.append(lo)
        high.append(hi)
    return np.array(mean), np.array(low), np.array(high)
