"""Continual regression: how neuron activity metrics and resets behave when the task keeps changing.

A plain ReLU MLP and a LayerNorm residual network (BroNet) are trained with Adam on a sequence of
synthetic regression tasks. Each task has a new random teacher network, and its inputs are drawn
at a larger scale than the last task's (the targets stay of unit scale). Every network is trained
three ways: no resets, ReDo (τ-dormant units reset) and ReGraMa (GraMa pre-activation), resets every
`reset_every` updates. Every `measure_every` updates the loss on a fixed batch of the current task
and the inactive ratio of every metric (GraMa pre-activation / activation / weight, τ-dormant) at
several thresholds are recorded.

All strategies and seeds of one network run in a single compiled program: `lax.scan` over the
updates of a task, `vmap` over strategies and seeds. Strategies of one seed start from the same
weights and see the same data.

    python -m agents.experiments.continual [--out runs/continual] [--quick] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neurosurgery as ns
from agents.networks import BroNet

STRATEGIES = ("none", "redo", "regrama")
# (metric, τ): the reference settings (ReDo τ 0.02 and 0, ReGraMa τ 0.01 and 0) for every metric.
METRICS = (ns.GraMa("preactivation"), ns.GraMa("activation"), ns.GraMa("weight"), ns.Dormant())
TAUS = (0.0, 0.01, 0.02)
LABELS = {
    "grama": "GraMa, pre-activation",
    "grama_activation": "GraMa, activation",
    "grama_weight": "GraMa, weight",
    "dormant": "τ-dormant",
}


@dataclasses.dataclass(frozen=True)
class Config:
    tasks: int = 10
    updates_per_task: int = 1000
    measure_every: int = 250
    reset_every: int = 500
    batch: int = 128
    eval_batch: int = 256
    lr: float = 1e-3
    in_size: int = 16
    teacher_width: int = 32
    scale_growth: float = 1.0  # input scale of task t: 1 + scale_growth * t
    mlp_width: int = 128
    mlp_depth: int = 3
    bro_width: int = 128
    bro_blocks: int = 2
    redo_tau: float = 0.02
    grama_tau: float = 0.01
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.updates_per_task % self.measure_every or self.reset_every % self.measure_every:
            raise ValueError(
                f"measure_every={self.measure_every} must divide updates_per_task="
                f"{self.updates_per_task} and reset_every={self.reset_every}: units are scored "
                "and reset at measurement points"
            )


QUICK = Config(
    tasks=3,
    updates_per_task=200,
    measure_every=100,
    reset_every=100,
    mlp_width=32,
    mlp_depth=2,
    bro_width=32,
    bro_blocks=1,
)


def networks(cfg: Config) -> dict[str, tuple[Callable[[jax.Array], Any], ns.Initializer]]:
    """The two networks: constructor and the initializer their hidden layers are drawn from
    (reset units are re-drawn from it), keyed by the name used in files and tables."""
    return {
        "mlp": (
            lambda k: eqx.nn.MLP(cfg.in_size, 1, cfg.mlp_width, cfg.mlp_depth, key=k),
            ns.uniform_fan_in(),
        ),
        "bronet": (
            lambda k: BroNet(cfg.in_size, 1, cfg.bro_width, cfg.bro_blocks, key=k),
            ns.orthogonal(math.sqrt(2)),
        ),
    }


def column(metric: str, tau: float) -> str:
    return f"{metric}@{tau:g}"


def teacher(key: jax.Array, cfg: Config) -> Callable[[jax.Array], jax.Array]:
    """A random one-hidden-layer tanh network of unit output scale, read at `x / scale`."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (cfg.in_size, cfg.teacher_width)) / np.sqrt(cfg.in_size)
    b1 = 0.5 * jax.random.normal(k2, (cfg.teacher_width,))
    w2 = jax.random.normal(k3, (cfg.teacher_width, 1)) / np.sqrt(cfg.teacher_width)
    return lambda x: jnp.tanh(x @ w1 + b1) @ w2


def sample(key: jax.Array, n: int, scale: jax.Array, target: Callable, cfg: Config):
    z = jax.random.normal(key, (n, cfg.in_size))
    return scale * z, target(z)


def mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((pred - y) ** 2)


def build(make: Callable[[jax.Array], Any], redraw: ns.Initializer, cfg: Config):
    """The anatomy and the compiled task runner of one network: `(anatomy, init, run_task)`."""
    example = make(jax.random.key(0))
    anat = ns.anatomy(example, jnp.zeros(cfg.in_size))
    static = eqx.partition(example, eqx.is_array)[1]
    opt = optax.adam(cfg.lr)
    every = ns.Schedule(cfg.reset_every)
    resetters = (
        ns.Resetter(ns.Dormant(), ns.Selection("threshold", cfg.redo_tau), every),
        ns.Resetter(ns.GraMa("preactivation"), ns.Selection("threshold", cfg.grama_tau), every),
    )
    hidden = [g.name for g in anat.hidden]
    resettable = {g.name: g.n_units for g in anat.resettable}

    def init(key: jax.Array):
        params = eqx.filter(make(key), eqx.is_array)
        with jax.numpy_dtype_promotion("standard"):
            return params, opt.init(params)

    def run_one(params, opt_state, step, strategy, key, task_key, scale):
        target = teacher(jax.random.fold_in(task_key, 0), cfg)
        x_eval, y_eval = sample(jax.random.fold_in(task_key, 1), cfg.eval_batch, scale, target, cfg)

        def update(carry, k):
            params, opt_state = carry
            x, y = sample(k, cfg.batch, scale, target, cfg)
            loss, grads = eqx.filter_value_and_grad(
                lambda p: mse(jax.vmap(eqx.combine(p, static))(x), y)
            )(params)
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def chunk(carry, i):
            params, opt_state, step = carry
            keys = jax.random.split(jax.random.fold_in(task_key, 2 + i), cfg.measure_every)
            (params, opt_state), losses = jax.lax.scan(update, (params, opt_state), keys)
            step = step + cfg.measure_every
            model = eqx.combine(params, static)
            value, obs = ns.observe(anat, model, lambda out: mse(out, y_eval), x_eval)
            scores = ns.score_all(anat, METRICS, obs)
            record = {"train_loss": jnp.mean(losses), "eval_loss": value}
            for name, per_group in scores.items():
                flat = jnp.concatenate([per_group[g].reshape(-1) for g in hidden])
                for tau in TAUS:
                    record[column(name, tau)] = jnp.mean((flat <= tau).astype(jnp.float32))
            # ReDo and ReGraMa flag units from the scores just recorded (their metrics are among
            # METRICS); one reset applies the flags of this run's strategy when its schedule is due
            masks = {}
            for g in anat.names:
                flags = [jnp.zeros(anat[g].unit_shape, bool)]
                flags += [
                    r.select(scores[r.metric.name])[g] & r.schedule.due(step) for r in resetters
                ]
                masks[g] = jnp.stack(flags)[strategy]
            k_reset = jax.random.fold_in(key, step)
            result = ns.reset(
                anat, model, masks, k_reset, init=redraw, optimizer=opt, opt_state=opt_state
            )
            model, opt_state = result.model, result.opt_state
            params = eqx.filter(model, eqx.is_array)
            reset = jnp.asarray(sum(jnp.sum(masks[g]) for g in resettable))
            record["reset_fraction"] = reset.astype(jnp.float32) / sum(resettable.values())
            return (params, opt_state, step), record

        n_chunks = cfg.updates_per_task // cfg.measure_every
        (params, opt_state, step), records = jax.lax.scan(
            chunk, (params, opt_state, step), jnp.arange(n_chunks)
        )
        return params, opt_state, step, records

    # seeds (outer) × strategies (inner); task data depends on the seed only
    per_strategy = jax.vmap(run_one, in_axes=(0, 0, 0, 0, 0, None, None))
    run_task = jax.jit(jax.vmap(per_strategy, in_axes=(0, 0, 0, None, 0, 0, None)))
    return anat, init, run_task


def train(
    name: str, network: tuple[Callable, ns.Initializer], cfg: Config
) -> tuple[list[dict[str, Any]], ns.Anatomy]:
    """Train one network with every strategy and seed; one row per measurement."""
    anat, init, run_task = build(*network, cfg)
    n_seeds, n_strat = len(cfg.seeds), len(STRATEGIES)
    seed_keys = [jax.random.key(s) for s in cfg.seeds]
    # every strategy of a seed starts from the same weights (built once, outside any jit: a
    # compiled initialisation would cost more than it saves)
    per_seed = [init(jax.random.fold_in(k, 0)) for k in seed_keys]
    params, opt_state = jax.tree.map(
        lambda *a: jnp.stack([jnp.stack([x] * n_strat) for x in a]), *per_seed
    )
    steps = jnp.zeros((n_seeds, n_strat), jnp.int32)
    strategy = jnp.arange(n_strat)
    reset_keys = jnp.stack([jax.random.split(jax.random.fold_in(k, 1), n_strat) for k in seed_keys])
    rows = []
    for t in range(cfg.tasks):
        task_keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(k, 2), t) for k in seed_keys])
        scale = jnp.float32(1.0 + cfg.scale_growth * t)
        params, opt_state, steps, records = run_task(
            params, opt_state, steps, strategy, reset_keys, task_keys, scale
        )
        records = jax.device_get(records)  # name -> (seeds, strategies, chunks)
        n_chunks = cfg.updates_per_task // cfg.measure_every
        for si, seed in enumerate(cfg.seeds):
            for ki, strat in enumerate(STRATEGIES):
                for c in range(n_chunks):
                    row = {
                        "network": name,
                        "strategy": strat,
                        "seed": seed,
                        "task": t,
                        "update": t * cfg.updates_per_task + (c + 1) * cfg.measure_every,
                    }
                    row.update({k: float(v[si, ki, c]) for k, v in records.items()})
                    rows.append(row)
    return rows, anat


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _series(rows, network, strategy, key):
    """Mean over seeds of `key` at each update."""
    sel = [r for r in rows if r["network"] == network and r["strategy"] == strategy]
    updates = sorted({r["update"] for r in sel})
    values = [np.mean([r[key] for r in sel if r["update"] == u]) for u in updates]
    return np.asarray(updates), np.asarray(values)


def plot(rows: list[dict[str, Any]], cfg: Config, out: Path) -> list[Path]:
    """Loss curves and every metric's inactive ratio over time, one panel per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["network"] for r in rows))
    boundaries = [t * cfg.updates_per_task for t in range(1, cfg.tasks)]
    figures = {"loss": [("eval_loss", "loss on the current task")]}
    for m in METRICS:
        figures[f"inactive_{m.name}"] = [
            (column(m.name, tau), f"{m.name} inactive % (score ≤ {tau:g})") for tau in TAUS
        ]
    paths = []
    for fname, panels in figures.items():
        fig, axes = plt.subplots(
            len(panels), len(nets), figsize=(5 * len(nets), 2.8 * len(panels)), squeeze=False
        )
        for row, (key, title) in zip(axes, panels, strict=True):
            for ax, net in zip(row, nets, strict=True):
                for strat in STRATEGIES:
                    x, y = _series(rows, net, strat, key)
                    ax.plot(x, y if key == "eval_loss" else 100 * y, label=strat, lw=1.4)
                for b in boundaries:
                    ax.axvline(b, color="0.85", lw=0.8, zorder=0)
                ax.set_title(f"{net}: {title}", fontsize=9)
                if key == "eval_loss":
                    ax.set_yscale("log")
                ax.legend(fontsize=7)
            row[0].set_xlabel("update")
        fig.subplots_adjust(
            left=0.08,
            right=0.98,
            bottom=0.45 / fig.get_figheight(),
            top=1 - 0.3 / fig.get_figheight(),
            hspace=0.45,
            wspace=0.22,
        )
        path = out / f"{fname}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    paths.append(plot_metrics(rows, out, nets, boundaries))
    return paths


def plot_metrics(rows, out: Path, nets: list[str], boundaries: list[int]) -> Path:
    """`metrics.png`: the runs without resets seen by every metric at the reference thresholds
    (τ-dormant ≤ 0.02, each GraMa source ≤ 0.01, both recorded), one panel per network."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 3.4), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        for m in METRICS:
            tau = 0.02 if isinstance(m, ns.Dormant) else 0.01
            x, y = _series(rows, net, "none", column(m.name, tau))
            label = LABELS.get(m.name, m.name)
            ax.plot(x, 100 * y, label=f"{label} ≤ {tau:g}", lw=1.4)
        for b in boundaries:
            ax.axvline(b, color="0.85", lw=0.8, zorder=0)
        ax.set_title(f"{net}, no resets: inactive % by metric", fontsize=9)
        ax.set_xlabel("update (grey lines: a new task)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("% of hidden units")
    fig.tight_layout()
    path = out / "metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summary(rows: list[dict[str, Any]], cfg: Config) -> str:
    """Final-task loss, mean end-of-task loss, resets, and inactive % at the last measurement."""
    shown = [
        column("dormant", 0.0),
        column("dormant", 0.02),
        column("grama", 0.0),
        column("grama", 0.01),
        column("grama_activation", 0.01),
        column("grama_weight", 0.01),
    ]
    head = [
        "network",
        "strategy",
        "final-task loss",
        "mean end-of-task loss",
        "units reset, sum %",
        *[f"{c} %" for c in shown],
    ]
    table = [head]
    last_update = cfg.tasks * cfg.updates_per_task
    for net in dict.fromkeys(r["network"] for r in rows):
        for strat in STRATEGIES:
            sel = [r for r in rows if r["network"] == net and r["strategy"] == strat]
            ends = [r for r in sel if r["update"] % cfg.updates_per_task == 0]
            final = [r for r in sel if r["update"] == last_update]
            task_end = [
                np.mean([r["eval_loss"] for r in ends if r["task"] == t]) for t in range(cfg.tasks)
            ]
            table.append(
                [
                    net,
                    strat,
                    f"{np.mean([r['eval_loss'] for r in final]):.4f}",
                    f"{np.mean(task_end):.4f}",
                    f"{100 * np.sum([r['reset_fraction'] for r in sel]) / len(cfg.seeds):.1f}",
                    *[f"{100 * np.mean([r[c] for r in final]):.1f}" for c in shown],
                ]
            )
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/continual"))
    parser.add_argument("--quick", action="store_true", help="a small version (< 30 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"continual regression: {cfg.tasks} tasks × {cfg.updates_per_task} updates, batch "
        f"{cfg.batch}, Adam {cfg.lr:g}; resets every {cfg.reset_every} updates (ReDo τ = "
        f"{cfg.redo_tau:g}, ReGraMa pre-activation τ = {cfg.grama_tau:g}); seeds "
        f"{list(cfg.seeds)}; measured every {cfg.measure_every} updates on "
        f"{cfg.eval_batch} samples of the current task"
    )
    start = time.perf_counter()

    def timed(item):
        name, network = item
        t0 = time.perf_counter()
        return *train(name, network, cfg), time.perf_counter() - t0

    # the networks train in two threads: one compiles while the other traces or runs
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(timed, networks(cfg).items()))
    rows = []
    for name, (net_rows, anat, seconds) in zip(networks(cfg), results, strict=True):
        rows += net_rows
        print(
            f"  {name}: {len(anat.hidden)} hidden groups, "
            f"{sum(g.n_units for g in anat.hidden)} hidden units "
            f"({sum(g.n_units for g in anat.resettable)} resettable), "
            f"compiled and trained in {seconds:.1f} s"
        )
    write_csv(rows, args.out / "metrics.csv")
    pngs = plot(rows, cfg, args.out)
    table = summary(rows, cfg)
    (args.out / "summary.txt").write_text(table + "\n")
    print(table)
    print(
        f"wrote {args.out / 'metrics.csv'}, {len(pngs)} plots and summary.txt to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return args.out


if __name__ == "__main__":
    main()
