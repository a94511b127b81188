"""Learning check: SAC (paper defaults) on a small dm_control task within a fixed budget.

    MUJOCO_GL=disable python benchmarks/bench_sac_learning.py \\
        [--env dmc/cartpole-balance] [--steps 20000] [--seeds 0] [--run-dir runs/bench_learning]

Prints the final and best evaluation return per seed and the wall time; the run folder keeps
metrics, plots and the summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import agents
from agents import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc/cartpole-balance")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--learning-starts", type=int, default=2_000)
    parser.add_argument("--run-dir", default="runs/bench_learning")
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    config = TrainConfig(
        env=args.env,
        seeds=tuple(args.seeds),
        steps=args.steps,
        learning_starts=args.learning_starts,
        log_every=1000,
        eval_every=5000,
        eval_episodes=5,
        checkpoint_every=args.steps,
        buffer_size=100_000,
        run_dir=args.run_dir,
        sinks=("csv", "jsonl", "tensorboard", "console"),
        progress=False,
    )
    t0 = time.perf_counter()
    summary = agents.train(config)
    summary["wall_s"] = time.perf_counter() - t0
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
