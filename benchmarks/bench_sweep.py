"""Wall time of a study run by `neurosurgery sweep` against the sum of its runs done one after
another, and the cost of the sweep machinery itself per run.

The study: N runs of SAC on test/point-mass (a grid over the critic's width, 2 vmapped seeds
each). Three ways, one after the other on this machine:

- run by run, in pairs: the run alone in a fresh process (`agents.train`, as `neurosurgery
  train` does), then the same run as a one-run study through the sweep (submitit's local
  executor). Both see the same machine load; the difference is the machinery's cost per run,
  split into the checks and manifest, submission to training (the job's process, submitit,
  imports) and the time until the sweep notices the end;
- the whole study as `neurosurgery sweep` runs it by default (local, runs at once = cores),
  against the sum of the runs done alone one after another.

    python benchmarks/bench_sweep.py [--runs 3] [--steps 2000] [--fast-compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import NetworkConfig, SACConfig, TrainConfig  # noqa: E402
from agents.training import LauncherConfig, Study, sweep  # noqa: E402
from agents.training._config import config_to_dict  # noqa: E402
from agents.training._study import Axis, expand  # noqa: E402
from agents.training._sweep import default_parallel, prepare, read_state  # noqa: E402
from agents.training._trainer import Trainer  # noqa: E402

ONE_RUN = """
import json, sys
from agents.training._config import config_from_dict
from agents.training._trainer import Trainer
from agents import train
Trainer.compiler_options = json.loads(sys.argv[2])
summary = train(config_from_dict(json.loads(sys.argv[1])))
print(json.dumps({"compile_s": summary["compile_s"]}))
"""


def base(steps: int) -> TrainConfig:
    net = NetworkConfig(width=32, depth=2)
    return TrainConfig(
        env="test/point-mass",
        seeds=(0, 1),
        steps=steps,
        num_envs=2,
        episode_length=50,
        learning_starts=400,
        buffer_size=steps,
        log_every=500,
        eval_every=steps,
        eval_episodes=2,
        checkpoint_every=steps,
        sinks=("csv",),
        progress=False,
        sac=SACConfig(batch_size=32, actor=net, critic=net),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--fast-compile",
        action="store_true",
        help="compile with xla_backend_optimization_level 0 (compiling dominates short runs)",
    )
    args = parser.parse_args()
    options = {"xla_backend_optimization_level": 0} if args.fast_compile else None
    Trainer.compiler_options = options
    widths = [32 + 8 * i for i in range(args.runs)]
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    def study(parallel: int | None) -> Study:
        """The study (`parallel`: runs at once, None: the default)."""
        return Study(
            "bench",
            base(args.steps),
            (Axis("sac.critic.width", tuple(widths)),),
            LauncherConfig(parallel=parallel),
        )

    # paired, run by run: the run alone in a fresh process, then the same run as a one-run
    # study through the sweep; the pair sees the same machine load, and its difference is the
    # sweep machinery's cost for one run
    pairs = []
    for width in widths:
        one = dataclasses.replace(
            study(1), name=f"bench-{width}", grid=(Axis("sac.critic.width", (width,)),)
        )
        (run,) = expand(one, root / f"alone-{width}")
        config = json.dumps(config_to_dict(run.config))
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", ONE_RUN, config, json.dumps(options)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        alone = time.perf_counter() - t0
        folder = root / f"study-{width}"
        t0 = time.perf_counter()
        prepare(one, folder)  # what the sweep does before it submits: expand, check, manifest
        prepare_s = time.perf_counter() - t0
        shutil.rmtree(folder)
        t0 = time.perf_counter()
        assert sweep(one, folder).code == 0
        end = time.time()
        swept = time.perf_counter() - t0
        (run,) = expand(one, folder)
        state = read_state(folder, run.name) or {}
        summary = json.loads(Path(run.config.run_dir, "summary.json").read_text())
        pairs.append(
            {
                "alone_s": alone,
                "sweep_s": swept,
                "prepare_s": prepare_s,
                "job_start_s": state["started"] - state["submitted"],
                "noticed_s": end - state["finished"],
                "compile_s": summary["compile_s"],
            }
        )
        print(json.dumps(pairs[-1]), flush=True)

    # the whole study as `neurosurgery sweep` runs it by default
    folder = root / "study"
    t0 = time.perf_counter()
    outcome = sweep(study(None), folder)
    wall = time.perf_counter() - t0
    assert outcome.code == 0, outcome.states

    n = args.runs
    mean = lambda key: sum(p[key] for p in pairs) / n
    total = sum(p["alone_s"] for p in pairs)
    print(
        f"\nstudy: {n} runs of SAC (2 vmapped seeds, {args.steps} env steps, test/point-mass); "
        f"compile {'fast (O0)' if args.fast_compile else 'XLA default'}; "
        f"{default_parallel(LauncherConfig())} runs at once by default"
    )
    print(f"runs one after another, each in its own process: {total:7.1f} s in all")
    print(f"the study, neurosurgery sweep (local, default):  {wall:7.1f} s ({wall / total:.2f}x)")
    print("\nsweep machinery per run (pairs: the run alone vs the run as a one-run study):")
    print(
        f"  the run alone                     {mean('alone_s'):6.1f} s (compile {mean('compile_s'):.1f} s)"
    )
    print(f"  the run through the sweep         {mean('sweep_s'):6.1f} s")
    print(f"  difference                        {mean('sweep_s') - mean('alone_s'):6.1f} s")
    print(f"  of which: checks and manifest     {mean('prepare_s'):6.2f} s")
    print(
        f"            submission to training  {mean('job_start_s'):6.1f} s (process, submitit, imports)"
    )
    print(f"            end of run to noticed   {mean('noticed_s'):6.2f} s")
    print(f"(folders in {root})")


if __name__ == "__main__":
    main()
