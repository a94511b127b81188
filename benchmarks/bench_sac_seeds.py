"""Wall time of SAC training with 8 vmapped seeds vs 1 seed (target: ≤ 2.5× the 1-seed time).

Times the compiled training segments after compilation (compile time reported apart), with the
paper's SAC networks (256×2) and batch 256, one update per env step. The 1-seed and the 8-seed
trainer alternate segment by segment, so both see the same machine load.

    python benchmarks/bench_sac_seeds.py [--env test/point-mass] [--steps 4000] [--seeds 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
from _timing import SegmentTimer

from agents import SACConfig, TrainConfig, Trainer


def summary(timer: SegmentTimer, seeds: int) -> dict[str, float]:
    wall, segments = sum(timer.times), len(timer.times)
    steps = segments * timer.env_steps_per_segment
    return {
        "seeds": seeds,
        "compile_s": timer.compile_s,
        "first_segment_s": timer.first_s,
        "wall_s": wall,
        "env_steps_per_seed": steps,
        "env_steps_per_s_all_seeds": steps * seeds / wall,
        "updates_per_s_all_seeds": segments * timer.updates_per_segment * seeds / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="test/point-mass")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per seed")
    parser.add_argument("--segment", type=int, default=500, help="env steps per compiled call")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    net = dataclasses.replace(SACConfig().critic, width=args.width)
    base = TrainConfig(
        env=args.env,
        num_envs=args.num_envs,
        steps=10**9,
        learning_starts=args.segment,
        log_every=args.segment,
        buffer_size=100_000,
        episode_length=1000 if not args.env.startswith("test/") else 50,
        progress=False,
        sinks=(),
        sac=SACConfig(actor=net, critic=net),
    )
    segments = max(1, args.steps // args.segment)
    timers = {
        1: SegmentTimer(Trainer(dataclasses.replace(base, seeds=(0,)))),
        args.seeds: SegmentTimer(
            Trainer(dataclasses.replace(base, seeds=tuple(range(args.seeds))))
        ),
    }
    for _ in range(segments):  # alternate: both see the same load
        for timer in timers.values():
            timer.times.append(timer.step())
    one, many = (summary(t, n) for n, t in timers.items())
    ratio = many["wall_s"] / one["wall_s"]
    print(
        json.dumps(
            {
                "device": str(jax.devices()[0]),
                "env": args.env,
                "one": one,
                "many": many,
                "wall_ratio": ratio,
            },
            indent=2,
        )
    )
    print(f"{args.seeds} seeds / 1 seed wall time: {ratio:.2f}× (target ≤ 2.5×)")


if __name__ == "__main__":
    main()
