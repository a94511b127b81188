"""Learning check for DACER on the point-mass task (CPU, a few minutes): prints the return curve.

Random actions score about −55 per 50-step episode; heading straight for the target at full
speed scores about −5.3.

    python benchmarks/learn_dacer.py [--steps 10000] [--sampler ddpm|ode] [--entropy-every 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _learning import train

from agents import DACER, DACERConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ode"))
    p.add_argument("--entropy-every", type=int, default=1000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = DACERConfig(
        sampler=args.sampler, entropy_every=args.entropy_every, denoiser_width=args.width
    )
    curve = train(
        DACER(config, 4, 2), args.steps, learning_starts=args.learning_starts, seed=args.seed
    )
    first, last = curve[0][1], max(r for _, r, _ in curve[-3:])
    print(f"DACER point-mass: eval return {first:.2f} -> {last:.2f} (best of the last three)")


if __name__ == "__main__":
    main()
