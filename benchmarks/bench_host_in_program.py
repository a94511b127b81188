"""A host environment's training step: stepped from inside the compiled program, or from Python.

For each agent, two trainers with the same settings (dm_control cheetah-run by default, 5 vmapped
seeds, replay ratio 2, batch 128, no evaluation, no surgery, compile excluded): one runs its
segments as compiled pieces that step the environments through a callback (the default,
`Trainer.host_in_program = True`), the other as a Python loop of one compiled call per env step.
Their learning segments alternate, round after round, and the script prints each round's ms per
vectorised env step and the ratio of the medians. It also times the callback itself (the Python
function that steps every seed's environments) inside the program, and the same function called
on its own from Python with the same actions.

    MUJOCO_GL=disable .venv/bin/python benchmarks/bench_host_in_program.py \\
        [--agents sac bro dacer] [--env dmc/cheetah-run] [--width 64] [--seeds 5] \\
        [--segment-steps 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import time

import numpy as np
from _timing import SegmentTimer
from bench_step_breakdown import train_config

from agents import Trainer
from agents.training import _host


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["sac", "bro", "dacer"])
    parser.add_argument("--env", default="dmc/cheetah-run")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--segment-steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    settings = argparse.Namespace(
        surgery=False,
        surgery_every=1000,
        seeds=args.seeds,
        num_envs=1,
        replay_ratio=2.0,
        learning_starts=500,
        buffer_size=100_000,
        segment_steps=args.segment_steps,
        eval_every=0,
        eval_episodes=1,
        batch=128,
    )
    print(f"{args.env}, width {args.width}, {args.seeds} seeds: ms per vectorised env step")
    for agent in args.agents:
        inside_calls: list[float] = []
        step = _host.HostEnvs._step

        def timed(self, actions, inside_calls=inside_calls, step=step):
            t0 = time.perf_counter()
            out = step(self, actions)
            inside_calls.append(time.perf_counter() - t0)
            return out

        _host.HostEnvs._step = timed
        timers = {}
        for in_program in (True, False):
            Trainer.host_in_program = in_program
            config = train_config(settings, agent, args.env, args.width)
            timers[in_program] = SegmentTimer(Trainer(config))
        times: dict[bool, list[float]] = {True: [], False: []}
        inside_calls.clear()  # the warm-up's and the first segment's calls
        try:
            for _ in range(args.rounds):
                for in_program, timer in timers.items():
                    times[in_program].append(timer.step() / timer.env_steps_per_segment * 1e3)
        finally:
            _host.HostEnvs._step = step
        host = timers[True].trainer.host
        assert host is not None
        actions = np.zeros((args.seeds, 1, host.action_size), np.float32)
        alone = []
        for _ in range(200):
            t0 = time.perf_counter()
            host._step(actions)
            alone.append(time.perf_counter() - t0)
        for timer in timers.values():
            timer.trainer.close()
        inside, loop = statistics.median(times[True]), statistics.median(times[False])
        rounds = lambda ts: " ".join(f"{t:.2f}" for t in ts)
        print(
            f"{agent}: in the program {inside:.2f} [{rounds(times[True])}], "
            f"Python loop {loop:.2f} [{rounds(times[False])}]: {loop / inside:.2f}x; "
            f"the callback {statistics.median(inside_calls) * 1e3:.2f} ms inside the program, "
            f"{statistics.median(alone) * 1e3:.2f} ms called alone"
        )


if __name__ == "__main__":
    main()
