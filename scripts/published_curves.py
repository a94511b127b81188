"""Rebuild `agents/reporting/published/curves.csv.gz` from the published files it is read from.

    python scripts/published_curves.py --bro BRO_CHECKOUT --tdmpc2 TDMPC2_CHECKOUT

BRO_CHECKOUT: a clone of github.com/naumix/BiggerRegularizedOptimistic (the curves are in its
`trainingdata.zip`); TDMPC2_CHECKOUT: a clone of github.com/nicklashansen/tdmpc2 (its
`results/sac/*.csv`). Only numbers are read; the layout of each file, and how it becomes rows of
`source, algorithm, task, seed, env_step, return`, is written in
`agents/reporting/published/SOURCES.md`. The script prints the commits it read.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "agents" / "reporting" / "published" / "curves.csv.gz"
#: the DMC tasks both sources cover, by the names the two repositories give them, and ours
TASKS = {
    "acrobot-swingup": "dmc/acrobot-swingup",
    "cheetah-run": "dmc/cheetah-run",
    "dog-run": "dmc/dog-run",
    "dog-stand": "dmc/dog-stand",
    "dog-trot": "dmc/dog-trot",
    "dog-walk": "dmc/dog-walk",
    "fish-swim": "dmc/fish-swim",
    "hopper-hop": "dmc/hopper-hop",
    "humanoid-run": "dmc/humanoid-run",
    "humanoid-stand": "dmc/humanoid-stand",
    "humanoid-walk": "dmc/humanoid-walk",
    "pendulum-swingup": "dmc/pendulum-swingup",
    "quadruped-run": "dmc/quadruped-run",
    "walker-run": "dmc/walker-run",
}
#: BRO evaluates every 25,000 env steps (train_parallel.py: eval_interval) up to 1M
BRO_EVERY = 25_000
#: the budget kept from the longer SAC curves
MAX_STEP = 1_000_000


def _commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def bro_rows(repo: Path) -> list[tuple]:
    commit = _commit(repo)
    data = subprocess.run(
        ["git", "-C", str(repo), "show", "HEAD:trainingdata.zip"], capture_output=True, check=True
    ).stdout
    rows = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for algorithm in ("BRO", "BRO_fast"):
            for name, task in TASKS.items():
                member = f"trainingdata/{algorithm}/{name}.npy"
                table = np.load(io.BytesIO(z.read(member)))
                if table.shape != (40, 10):
                    raise ValueError(f"{member}: expected 40 evaluations x 10 seeds, {table.shape}")
                source = f"bro@{commit[:7]}"
                for i, row in enumerate(table):
                    for seed, value in enumerate(row):
                        rows.append(
                            (source, algorithm, task, seed, BRO_EVERY * (i + 1), float(value))
                        )
    return rows


def sac_rows(repo: Path) -> list[tuple]:
    commit = _commit(repo)
    rows = []
    for name, task in TASKS.items():
        path = f"results/sac/{name}.csv"
        text = subprocess.run(
            ["git", "-C", str(repo), "show", f"HEAD:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = f"tdmpc2@{commit[:7]}"
        for r in csv.DictReader(io.StringIO(text)):
            step = int(float(r["step"]))
            if step <= MAX_STEP:
                rows.append((source, "SAC", task, int(r["seed"]), step, float(r["reward"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the published curves shipped as data.")
    parser.add_argument("--bro", type=Path, required=True, help="BRO repository checkout")
    parser.add_argument("--tdmpc2", type=Path, required=True, help="TD-MPC2 repository checkout")
    args = parser.parse_args()
    rows = bro_rows(args.bro) + sac_rows(args.tdmpc2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same numbers give the same bytes
    with gzip.GzipFile(OUT, "wb", mtime=0) as raw, io.TextIOWrapper(raw, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("source", "algorithm", "task", "seed", "env_step", "return"))
        for source, algorithm, task, seed, step, value in rows:
            w.writerow((source, algorithm, task, seed, step, f"{value:.2f}"))
    print(f"{len(rows)} rows -> {OUT}")
    print(f"BRO commit {_commit(args.bro)}; TD-MPC2 commit {_commit(args.tdmpc2)}")


if __name__ == "__main__":
    main()
