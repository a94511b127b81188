"""Training speed against replay capacity: a large buffer must not slow the training loop.

Every compiled call that returns the next training state takes the old state's buffers
(donation), so inserting a transition writes into the replay buffer in place. Without that, each
call copies the whole buffer: once per vectorised env step in the host loop (dm_control), where a
million-transition buffer made training several times slower than a small one.

Two trainers that differ only in `buffer_size` (default 10,000 and 1,000,000, the CLI default)
alternate segment by segment, so both see the same machine load; printed: env-steps/s of each
and their ratio (≈ 1.0 when capacity costs nothing per step).

    MUJOCO_GL=disable python benchmarks/bench_replay_capacity.py \\
        [--env dmc/cartpole-balance] [--capacity 10000 1000000] [--segments 4] [--width 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "disable")

import jax
from _timing import SegmentTimer

from agents import NetworkConfig, SACConfig, TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc/cartpole-balance")
    parser.add_argument("--capacity", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--segment", type=int, default=500, help="env steps per segment")
    parser.add_argument("--segments", type=int, default=4, help="timed segments per trainer")
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    net = NetworkConfig(width=args.width)
    base = TrainConfig(
        env=args.env,
        seeds=tuple(range(args.seeds)),
        steps=10**9,
        learning_starts=args.segment,
        log_every=args.segment,
        progress=False,
        sinks=(),
        sac=SACConfig(actor=net, critic=net),
    )
    print(f"device: {jax.devices()[0]}; {args.env}, {args.seeds} seeds, SAC {args.width}×2")
    trainers = [Trainer(dataclasses.replace(base, buffer_size=n)) for n in args.capacity]
    try:
        timers = [SegmentTimer(t) for t in trainers]
        for _ in range(args.segments):  # alternate: both see the same load
            for timer in timers:
                timer.times.append(timer.step())
        rates = []
        for n, timer in zip(args.capacity, timers, strict=True):
            rate = len(timer.times) * timer.env_steps_per_segment / sum(timer.times)
            rates.append(rate)
            per_segment = ", ".join(f"{timer.env_steps_per_segment / t:.0f}" for t in timer.times)
            print(f"capacity {n:>9,}: {rate:7.1f} env-steps/s per seed (segments: {per_segment})")
        print(f"capacity {args.capacity[1]:,} / {args.capacity[0]:,}: {rates[1] / rates[0]:.2f}×")
    finally:
        for t in trainers:
            t.close()


if __name__ == "__main__":
    main()
