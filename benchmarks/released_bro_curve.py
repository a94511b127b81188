"""The released BRO's learning curve at a width of one's choice, as a tidy file for the report.

The released BRO (Nauman et al. 2024, github naumix/BiggerRegularizedOptimistic, JAX + Flax) fixes
its network widths in code (critics 512, both actors 256), and its published curves
(`neurosurgery report --published BRO_fast`) are at those widths. To tell whether this project's
BRO at another width (64 in docs/results.md's fidelity runs) falls short of the published curve
because of the width or because of a defect, this script trains the released code itself at that
width, from its own checkout and in its own environment (whose paths it takes as arguments;
nothing of it is copied here), and writes its evaluation returns as a tidy file
(exp_name, env_name, seed, metric, env_step, value) that `neurosurgery report --baseline FILE`
draws and tabulates beside our runs.

The run is the released entry point `train_parallel.py` (all seeds in one process) with its
default configuration (`configs/bro_default.py`: BRO with quantile critics) and these flags:
`--benchmark dmc --env_name TASK --num_seeds N --batch_size B --updates_per_step RR
--start_training L --max_steps STEPS --eval_interval E --eval_episodes K --distributional
--config.n_quantiles Q`. One run-time patch (its files are never changed): `hidden_dims` =
`--width` bound into `critic_net.DoubleCritic`, `policies.NormalTanhPolicy` and
`policies.DualTanhPolicy` with `functools.partial` before `main` runs, as
`bench_bro_vs_released.py` does. Its evaluation (deterministic actions, K episodes per seed,
every E env steps) is written by the released code to `results/<task>_RR<RR>/<seed>.txt`
under `--out`; this script converts those files.

    MUJOCO_GL=disable python benchmarks/released_bro_curve.py \\
        --released ../BiggerRegularizedOptimistic \\
        --released-python ../BiggerRegularizedOptimistic/.venv/bin/python \\
        --task walker-run --seeds 5 --width 64 --steps 100000 --out runs/released-bro-w64

`--convert-only` converts the result files of a run that was started before (or is still
going) without training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

#: runs in the released checkout's own interpreter: argv[1] is a JSON spec (checkout, width,
#: flags for train_parallel.py)
LAUNCHER = r"""
import functools, json, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["checkout"])
sys.argv = ["train_parallel.py", *spec["flags"]]
from absl import app
import train_parallel
from jaxrl.networks import critic_net, policies

width = spec["width"]  # fixed in the released code (critic 512, actors 256)
critic_net.DoubleCritic = functools.partial(critic_net.DoubleCritic, hidden_dims=width)
policies.NormalTanhPolicy = functools.partial(policies.NormalTanhPolicy, hidden_dims=width)
policies.DualTanhPolicy = functools.partial(policies.DualTanhPolicy, hidden_dims=width)
app.run(train_parallel.main)
"""


def released_flags(args: argparse.Namespace) -> list[str]:
    """The flags of the released `train_parallel.py` for this run."""
    return [
        "--benchmark=dmc",
        f"--env_name={args.task}",
        "--seed=0",
        f"--num_seeds={args.seeds}",
        f"--batch_size={args.batch}",
        f"--updates_per_step={args.replay_ratio}",
        f"--start_training={args.learning_starts}",
        f"--replay_buffer_size={args.buffer_size}",
        f"--max_steps={args.steps}",
        f"--eval_interval={args.eval_every}",
        f"--eval_episodes={args.eval_episodes}",
        "--notqdm",
        "--distributional",
        f"--config={Path(args.released, 'configs', 'bro_default.py')}",
        f"--config.n_quantiles={args.quantiles}",
    ]


def tidy_rows(results: Path, task: str, name: str) -> list[dict[str, object]]:
    """The released result files (`<seed>.txt`: env step and return per line) as tidy rows."""
    rows: list[dict[str, object]] = []
    files = sorted(results.glob("*.txt"), key=lambda p: int(p.stem))
    if not files:
        raise SystemExit(f"no result files (<seed>.txt) in {results}: has the run evaluated yet?")
    for path in files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            step, value = line.split()
            rows.append(
                {
                    "exp_name": name,
                    "env_name": f"dmc/{task}",
                    "seed": int(path.stem),
                    "metric": "eval/episode_return",
                    "env_step": int(float(step)),
                    "value": float(value),
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--released", required=True, help="the released BRO's checkout")
    p.add_argument("--released-python", required=True, help="its environment's interpreter")
    p.add_argument("--task", default="walker-run")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--replay-ratio", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--quantiles", type=int, default=100)
    p.add_argument("--learning-starts", type=int, default=2500)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--eval-every", type=int, default=25_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--out", type=Path, required=True, help="folder of the run and its tidy file")
    p.add_argument("--name", default=None, help="exp_name in the tidy file")
    p.add_argument("--convert-only", action="store_true")
    args = p.parse_args()
    name = args.name or f"bro-released-w{args.width}"
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results" / f"{args.task}_RR{args.replay_ratio}"
    if not args.convert_only:
        spec = {
            "checkout": str(Path(args.released).resolve()),
            "width": args.width,
            "flags": released_flags(args),
        }
        (args.out / "spec.json").write_text(json.dumps(spec, indent=1))
        env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
        with open(args.out / "stderr.txt", "w") as err:
            code = subprocess.call(
                [args.released_python, "-c", LAUNCHER, json.dumps(spec)],
                cwd=args.out,
                env=env,
                stderr=err,
            )
        if code != 0:
            sys.exit(f"the released BRO exited with {code}; see {args.out / 'stderr.txt'}")
    rows = tidy_rows(results, args.task, name)
    target = args.out / f"{name}.csv"
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} evaluations of {len({r['seed'] for r in rows})} seeds: {target}")


if __name__ == "__main__":
    main()
