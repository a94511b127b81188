"""Timing of a trainer's compiled learning segments, shared by the SAC benchmarks."""

from __future__ import annotations

import time
from typing import Any

import jax

from agents import Trainer


class SegmentTimer:
    """A trainer, warmed up and compiled, whose learning segments are timed one call at a time.

    Construction runs the random warm-up segment and one learning segment (which compiles);
    `compile_s` is the trainer's ahead-of-time compile time of that segment, `first_s` the rest
    of that first call. Each `step()` runs one more segment and returns its wall time.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.updates_per_segment = trainer.bodies * trainer.loop.updates_per_body
        self.env_steps_per_segment = trainer.segment_env_steps
        self.ts: Any = trainer.initial_state()
        self.ts, _, _ = trainer.segment(self.ts, 0, False)  # warm-up fills the buffer
        jax.block_until_ready(self.ts)
        self.updates = 0
        before = trainer.compile_s
        first = self.step()
        self.compile_s = trainer.compile_s - before
        self.first_s = first - self.compile_s
        self.times: list[float] = []

    def step(self) -> float:
        """One learning segment; returns its wall time (s)."""
        t0 = time.perf_counter()
        self.ts, _, metrics = self.trainer.segment(self.ts, self.updates, True)
        jax.block_until_ready((self.ts, metrics))
        wall = time.perf_counter() - t0
        self.updates += self.updates_per_segment
        return wall
