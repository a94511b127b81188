"""When a strategy acts: every `every` updates inside a window, or at listed update counts."""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Update counts at which a strategy acts.

    `Schedule(every=1000, start=0, end=None)`: at `start + k·every` for k ≥ 1, before `end`
    (exclusive; `None`: no end). `Schedule.at(15_000, 50_000)`: at the listed counts only.

    [`due`][neurosurgery.Schedule.due] answers for one count or for a span of counts (a training
    loop that advances several updates at a time asks for the span it just did), with array
    operations, so it works inside `jax.jit`.
    """

    every: int | None = 1000
    start: int = 0
    end: int | None = None
    points: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.points:
            if self.every is not None or self.start or self.end is not None:
                raise ValueError(
                    "Schedule: give either explicit points (Schedule.at(...)) or every/start/end, "
                    "not both"
                )
            if any(int(p) != p or p < 1 for p in self.points) or len(set(self.points)) != len(
                self.points
            ):
                raise ValueError(
                    f"Schedule.at{self.points}: the points must be distinct update counts >= 1"
                )
            object.__setattr__(self, "points", tuple(sorted(int(p) for p in self.points)))
            return
        if self.every is None:
            raise ValueError("Schedule: give every (updates between actions) or points")
        if self.every < 1 or self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(
                f"Schedule(every={self.every}, start={self.start}, end={self.end}) is empty or "
                "invalid: every must be >= 1, start >= 0 and end > start."
            )

    @classmethod
    def at(cls, *points: int) -> Schedule:
        """Act exactly at these update counts."""
        if not points:
            raise ValueError("Schedule.at() needs at least one update count")
        return cls(every=None, points=tuple(points))

    def due(
        self, step: Int[Array, ""] | int, since: Int[Array, ""] | int | None = None
    ) -> Bool[Array, ""]:
        """Whether an action point lies in `(since, step]` (`since` defaults to `step - 1`:
        exactly at `step`). Pass the counts unbatched under `vmap` so that a branch on the
        answer stays a branch."""
        step = jnp.asarray(step)
        since = step - 1 if since is None else jnp.asarray(since)
        if self.points:
            p = jnp.asarray(np.asarray(self.points), step.dtype)
            return jnp.any((p > since) & (p <= step))
        assert self.every is not None
        if self.end is not None:  # points from `end` on do not count
            step = jnp.minimum(step, self.end - 1)
        # the last point at or before `step`: start + k·every with k >= 1
        k = (step - self.start) // self.every
        return (k >= 1) & (self.start + k * self.every > since)


@runtime_checkable
class When(Protocol):
    """What a strategy's `schedule` provides: `due(step, since)`, as
    [`Schedule.due`][neurosurgery.Schedule.due]."""

    def due(
        self, step: Int[Array, ""] | int, since: Int[Array, ""] | int | None = None
    ) -> Bool[Array, ""]: ...


@dataclasses.dataclass(frozen=True)
class AnyDue:
    """Due when any of `schedules` is (the schedule of a [`Chain`][neurosurgery.Chain])."""

    schedules: tuple[When, ...]

    def due(
        self, step: Int[Array, ""] | int, since: Int[Array, ""] | int | None = None
    ) -> Bool[Array, ""]:
        return jnp.any(jnp.stack([s.due(step, since) for s in self.schedules]))
