"""SAC training throughput on one task: env-steps/s, updates/s and compile time.

The setting of the side-by-side comparison with Brax's SAC trainer (`bench_sac_vs_brax.py`),
this side alone and without resets: paper networks (256×2), batch 256, `--num-envs`
environments, `--replay-ratio` updates per vectorised env step.

    MUJOCO_GL=disable python benchmarks/bench_sac_throughput.py \\
        [--env playground/CartpoleSwingup] [--num-envs 64] [--replay-ratio 1 8] [--segments 3]
"""

from __future__ import annotations

import argparse
import json

import jax
from _timing import SegmentTimer

from agents import TrainConfig, Trainer


def measure(env: str, num_envs: int, replay_ratio: float, segments: int, log_every: int) -> dict:
    config = TrainConfig(
        env=env,
        num_envs=num_envs,
        replay_ratio=replay_ratio,
        steps=10**9,
        learning_starts=log_every,
        log_every=log_every,
        buffer_size=200_000,
        progress=False,
        sinks=(),
    )
    timer = SegmentTimer(Trainer(config))
    wall = sum(timer.step() for _ in range(segments))
    updates = segments * timer.updates_per_segment
    return {
        "env": env,
        "num_envs": num_envs,
        "replay_ratio": replay_ratio,
        "segment_compile_s": timer.compile_s,
        "first_segment_run_s": timer.first_s,
        "env_steps_per_s": segments * timer.env_steps_per_segment / wall,
        "updates_per_s": updates / wall,
        "ms_per_update": 1000 * wall / updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="playground/CartpoleSwingup")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--replay-ratio", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=6400, help="env steps per segment")
    args = parser.parse_args()
    print("device:", jax.devices()[0])
    for rr in args.replay_ratio:
        result = measure(args.env, args.num_envs, rr, args.segments, args.log_every)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
