"""The main job: SAC with and without ReGraMa on a CPU-friendly task, side by side.

`python -m agents.experiments.main_job [--out runs/main] [--steps N] [--seeds 0 1] [--env NAME]`

Trains the same SAC configuration twice — no resets, then ReGraMa on the critics — with the seeds
vmapped in one process, writes one run folder per method, a comparison plot of evaluation returns
and inactive ratios, and prints a comparison table. It reports what it measured, whatever that
shows: a short CPU run is a smoke test of the pipeline, not evidence for or against resets.

The same two runs as a study: `neurosurgery sweep --preset main` (tested to
give these configurations option for option).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..algorithms import SACConfig
from ..networks import NetworkConfig
from ..training import History, ResetConfig, SurgeryConfig, TrainConfig, train

#: the compared methods: no resets, and ReGraMa on the critics (τ = 0)
METHODS = {"none": "none", "regrama": "regrama"}


def _config(args: argparse.Namespace, method: str) -> TrainConfig:
    net = NetworkConfig(width=args.width, depth=2)
    reset = (
        ResetConfig()
        if method == "none"
        else ResetConfig(method=METHODS[method], tau=0.0, every=args.reset_period)
    )
    return TrainConfig(
        env=args.env,
        seeds=tuple(args.seeds),
        steps=args.steps,
        num_envs=1,
        learning_starts=args.learning_starts,
        buffer_size=args.steps,
        log_every=args.log_every,
        eval_every=args.log_every,
        eval_episodes=2,
        checkpoint_every=args.steps,
        run_dir=str(Path(args.out) / method),
        sinks=("csv", "jsonl", "tensorboard"),
        progress=True,
        surgery=SurgeryConfig(every=args.reset_period),
        reset=reset,
        sac=SACConfig(actor=net, critic=net),
    )


def _plot(out: Path, curves: dict[str, dict[str, dict[int, list[tuple[int, float]]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        ("eval/episode_return", "evaluation return"),
        ("surgery/critic/grama", "critic units GraMa-inactive (fraction)"),
    )
    for ax, (name, title) in zip(axes, panels, strict=True):
        for i, (method, data) in enumerate(curves.items()):
            for seed, pts in sorted(data.get(name, {}).items()):
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, color=f"C{i}", alpha=0.8, label=f"{method} (seed {seed})")
        ax.set_title(title)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(out / "comparison.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--out", default="runs/main")
    parser.add_argument("--env", default="dmc/cartpole-balance")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=1000)
    parser.add_argument("--reset-period", type=int, default=1000)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for method in METHODS:
        config = _config(args, method)
        run_dir = Path(config.run_dir)
        if run_dir.exists():  # a fresh comparison each time; other folders are left alone
            import shutil

            shutil.rmtree(run_dir)
        start = time.perf_counter()
        history = History(config.seeds)
        summary = train(config, callbacks=[history.write])
        wall = time.perf_counter() - start
        curves[method] = history.curves
        final = np.asarray(summary["eval/episode_return"]["final"], float)
        inactive = curves[method].get("surgery/critic/grama", {})
        last_inactive = [pts[-1][1] for _, pts in sorted(inactive.items())] or [float("nan")]
        resets = curves[method].get("surgery/critic/reset", {})
        total_reset = [sum(v for _, v in pts) for _, pts in sorted(resets.items())] or [0.0]
        rows.append(
            (method, final, float(np.mean(last_inactive)), float(np.mean(total_reset)), wall)
        )
    _plot(out, curves)
    lines = [
        f"SAC on {args.env}, {args.steps} env steps, seeds {args.seeds}, width {args.width}",
        f"{'method':10s} {'final eval return per seed':>30s} {'mean':>8s} "
        f"{'critic GraMa-inactive %':>24s} {'units reset, sum %':>19s} {'wall s':>7s}",
    ]
    for method, final, inactive, reset, wall in rows:
        per_seed = " ".join(f"{v:7.1f}" for v in final)
        lines.append(
            f"{method:10s} {per_seed:>30s} {final.mean():8.1f} {100 * inactive:24.1f} "
            f"{100 * reset:19.1f} {wall:7.0f}"
        )
    table = "\n".join(lines)
    print("\n" + table)
    (out / "comparison.txt").write_text(table + "\n")
    (out / "comparison.json").write_text(
        json.dumps(
            {
                m: {
                    "final_eval_return": f.tolist(),
                    "critic_grama_inactive": i,
                    "reset_sum": r,
                    "wall_s": w,
                }
                for m, f, i, r, w in rows
            },
            indent=2,
        )
    )
    print(
        f"\nrun folders: {', '.join(str(out / m) for m in METHODS)}; plot: {out / 'comparison.png'}"
    )


if __name__ == "__main__":
    main()
