"""Learning check for BRO on the point-mass task (CPU, a few minutes): prints the return curve.

Random actions score about −55 per 50-step episode; heading straight for the target at full
speed scores about −5.3.

    python benchmarks/learn_bro.py [--steps 6000] [--replay-ratio 2] [--critic-width 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _learning import train

from agents import BRO, BROConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6_000)
    p.add_argument("--replay-ratio", type=int, default=2)
    p.add_argument("--critic-width", type=int, default=512)
    p.add_argument("--actor-width", type=int, default=256)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = BROConfig(critic_width=args.critic_width, actor_width=args.actor_width)
    agent = BRO(config, 4, 2, replay_ratio=args.replay_ratio, learning_starts=args.learning_starts)
    curve = train(
        agent,
        args.steps,
        updates_per_step=args.replay_ratio,
        learning_starts=args.learning_starts,
        seed=args.seed,
    )
    first, last = curve[0][1], max(r for _, r, _ in curve[-3:])
    print(f"BRO point-mass: eval return {first:.2f} -> {last:.2f} (best of the last three)")


if __name__ == "__main__":
    main()
