"""`neurosurgery inspect RUN_DIR`: every metric on a run's checkpoint, scored on its own replay
data — per-layer inactive ratios, how far the metrics agree, the paper's activation × gradient
quadrants (its Fig. 3), which flagged units stay flagged between two checkpoints (Fig. 6b), and
what pruning the flagged units costs the loss (Fig. 7)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import neurosurgery as ns

from ..training._checkpoint import load_checkpoint
from ..training._replay import replay_sample
from ..training._run import load_run_config
from ..training._surgery import _anatomy
from ..training._trainer import CHECKPOINT, Trainer

#: the scores the quadrants are drawn from (the paper's Fig. 3: activation vs gradient)
ACTIVATION, GRADIENT = "dormant", "grama"


@dataclasses.dataclass
class Inspection:
    """What `inspect` found, per network: `{network: {...}}` tables, and the files written."""

    run_dir: Path
    env_steps: int
    seed: int
    inactive: dict[str, dict[str, dict[str, float]]]  # network → metric → layer → ratio
    jaccard: dict[str, dict[str, float]]  # network → "a & b" → overlap
    quadrants: dict[str, dict[str, int]]  # network → quadrant → units
    pruned: dict[str, dict[str, float]]  # network → metric → loss change
    persist: dict[str, dict[str, float]] | None  # network → metric → still flagged
    markdown: str
    files: list[Path]


def _flags(scores: dict[str, Any], hidden: set[str], tau: float) -> dict[str, np.ndarray]:
    picked = {g: s for g, s in scores.items() if g in hidden}
    return {g: np.asarray(m) for g, m in ns.threshold(picked, tau).items()}


def _flat(flags: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([f.reshape(-1) for _, f in sorted(flags.items())])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| of two boolean masks; NaN when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def quadrants(activation: np.ndarray, gradient: np.ndarray, top: float = 0.25) -> dict[str, int]:
    """Units in the top `top` fraction by activation score × by gradient score (ties at the
    cut-off count as top)."""
    hi_a = activation >= np.quantile(activation, 1 - top)
    hi_g = gradient >= np.quantile(gradient, 1 - top)
    return {
        "high activation, high gradient": int((hi_a & hi_g).sum()),
        "high activation, low gradient": int((hi_a & ~hi_g).sum()),
        "low activation, high gradient": int((~hi_a & hi_g).sum()),
        "low activation, low gradient": int((~hi_a & ~hi_g).sum()),
    }


def _load(run_dir: Path, checkpoint: Path, trainer: Trainer) -> tuple[Any, int]:
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"{checkpoint} does not exist; a run folder holds its checkpoint once training has "
            f"written one (`neurosurgery train --run-dir {run_dir}`, every --checkpoint-every)"
        )
    ts, header = load_checkpoint(checkpoint, trainer.state_shapes())
    return ts, int(header.get("env_steps", 0))


#: named metrics that apply only to layers with one activation (tanh, sigmoid): scored only when
#: asked for by name, since on other layers they refuse (see `ns.Saturation`)
ACTIVATION_SPECIFIC = ("saturation_tanh", "saturation_sigmoid")

#: what `inspect` scores by default: every named metric that applies to any layer
DEFAULT_METRICS = tuple(n for n in ns.METRICS if n not in ACTIVATION_SPECIFIC)


def _scores_of(trainer, ts, seed_index, metrics, networks, batch_size, key):
    one = jax.tree.map(lambda x: x[seed_index], ts)
    k_batch, k_obj = jax.random.split(key)
    batch = replay_sample(one.replay, k_batch, batch_size)
    objectives = trainer.agent.objectives(one.agent, batch, k_obj)
    out = {}
    for name in networks:
        if name not in objectives:
            raise ValueError(
                f"network {name!r} is not one of this agent's networks {sorted(objectives)}"
            )
        objective = objectives[name]
        anatomy = _anatomy(objective)
        _, observation = ns.observe(
            anatomy,
            objective.model,
            objective.loss_of_outputs,
            *objective.inputs,
            has_aux=objective.has_aux,
        )
        scores = {
            m.name: m.score(anatomy, observation, ns.init_state(m, anatomy, observation.params))[0]
            for m in metrics
        }
        out[name] = (anatomy, objective, scores)
    return out


def inspect(
    run_dir: Path,
    out: Path | None = None,
    *,
    against: Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    networks: Sequence[str] | None = None,
    tau: float = 0.0,
    batch_size: int = 256,
    seed_index: int = 0,
    key: int = 0,
) -> Inspection:
    """Score every metric of `metrics` (default: every named metric but the activation-specific
    ones, `ACTIVATION_SPECIFIC`, which score tanh or sigmoid layers only) on the run's checkpoint (seed `seed_index` of the run),
    on a batch of its replay buffer, and write `inspect.md`, `inspect.json` and
    `quadrants.png` to `out` (default: `run_dir/inspect`).

    `against`: a second checkpoint file of the same run (a copy kept at another step): the
    fraction of units flagged in the run's checkpoint that are still flagged in it.

    Raises:
        FileNotFoundError: no checkpoint in `run_dir` (or at `against`).
        ValueError: an unknown metric or network, a seed index out of range, or an empty
            replay buffer.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if not 0 <= seed_index < len(config.seeds):
        raise ValueError(f"seed_index {seed_index}: the run has seeds {list(config.seeds)}")
    built = [ns.metric(m) for m in metrics]
    names = [m.name for m in built]
    trainer = Trainer(dataclasses.replace(config, sinks=(), progress=False))
    try:
        ts, env_steps = _load(run_dir, run_dir / CHECKPOINT, trainer)
        size = int(np.asarray(ts.replay.size)[seed_index])
        if size == 0:
            raise ValueError(f"{run_dir}: the checkpoint's replay buffer is empty")
        nets = list(networks or config.surgery.networks)
        rng = jax.random.key(key)
        now = _scores_of(trainer, ts, seed_index, built, nets, batch_size, rng)
        later = None
        if against is not None:
            ts2, _ = _load(run_dir, Path(against), trainer)
            later = _scores_of(trainer, ts2, seed_index, built, nets, batch_size, rng)
    finally:
        trainer.close()
    inactive, overlap, quads, pruned, persist = {}, {}, {}, {}, {} if later else None
    for net, (anatomy, objective, scores) in now.items():
        hidden = {g.name for g in anatomy.hidden}
        flags = {m: _flags(scores[m], hidden, tau) for m in names}
        inactive[net] = {
            m: {g: float(f.mean()) for g, f in sorted(flags[m].items())}
            | {"network": float(_flat(flags[m]).mean())}
            for m in names
        }
        overlap[net] = {
            f"{a} & {b}": jaccard(_flat(flags[a]), _flat(flags[b]))
            for a, b in itertools.combinations(names, 2)
        }
        if ACTIVATION in names and GRADIENT in names:
            act = _flat({g: np.asarray(s) for g, s in scores[ACTIVATION].items() if g in hidden})
            grad = _flat({g: np.asarray(s) for g, s in scores[GRADIENT].items() if g in hidden})
            quads[net] = quadrants(act, grad)
        base = float(objective_loss(objective, objective.model))
        pruned[net] = {}
        for m in names:
            masks = {g: jnp.asarray(f) for g, f in flags[m].items()}
            cut = ns.reset(
                anatomy, objective.model, masks, jax.random.key(0), init=_itself(objective)
            )
            pruned[net][m] = float(objective_loss(objective, cut.model)) - base
        if later is not None and persist is not None:
            _, _, scores2 = later[net]
            persist[net] = {}
            for m in names:
                a, b = _flat(flags[m]), _flat(_flags(scores2[m], hidden, tau))
                persist[net][m] = float((a & b).sum() / a.sum()) if a.sum() else float("nan")
    out = Path(out) if out is not None else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    result = Inspection(
        run_dir,
        env_steps,
        config.seeds[seed_index],
        inactive,
        overlap,
        quads,
        pruned,
        persist,
        "",
        [],
    )
    result.markdown = _markdown(result, tau, against)
    (out / "inspect.md").write_text(result.markdown)
    data = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("markdown", "files")}
    data["run_dir"] = str(run_dir)
    (out / "inspect.json").write_text(json.dumps(data, indent=2))
    result.files = [out / "inspect.md", out / "inspect.json"]
    if quads:
        result.files.append(_scatter(now, out / "quadrants.png"))
    return result


def objective_loss(objective, model) -> jax.Array:
    value = objective.batch_loss(model)
    return value[0] if objective.has_aux else value


def _itself(objective):
    """Re-draw from the model itself: only the flagged units' outgoing weights change (zeroed),
    which removes them from the network — a pruning."""
    return lambda key: objective.model


def _scatter(now, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(now)
    fig, axes = plt.subplots(1, len(nets), figsize=(4.5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        anatomy, _, scores = now[net]
        hidden = {g.name for g in anatomy.hidden}
        act = _flat({g: np.asarray(s) for g, s in scores[ACTIVATION].items() if g in hidden})
        grad = _flat({g: np.asarray(s) for g, s in scores[GRADIENT].items() if g in hidden})
        ax.scatter(act, grad, s=4, alpha=0.5)
        ax.axvline(np.quantile(act, 0.75), color="k", lw=0.8, ls="--")
        ax.axhline(np.quantile(grad, 0.75), color="k", lw=0.8, ls="--")
        ax.set(title=net, xlabel="activation score (τ-dormant)", ylabel="gradient score (GraMa)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(r: Inspection, tau: float, against: Path | None) -> str:
    md = [
        f"# {r.run_dir}: seed {r.seed} at {r.env_steps} env steps",
        "",
        f"Flagged: score ≤ τ = {tau}.",
    ]
    for net in r.inactive:
        metrics = list(r.inactive[net])
        layers = list(r.inactive[net][metrics[0]])
        md += ["", f"## {net}", "", "Inactive ratio per layer:", ""]
        md.append("| layer | " + " | ".join(metrics) + " |")
        md.append("|---|" + "---|" * len(metrics))
        for layer in layers:
            md.append(
                f"| {layer} | "
                + " | ".join(f"{r.inactive[net][m][layer]:.3f}" for m in metrics)
                + " |"
            )
        md += ["", "Jaccard overlap of the flagged units (NaN: neither flags any):", ""]
        md += ["| metrics | overlap |", "|---|---|"]
        md += [f"| {k} | {v:.3f} |" for k, v in r.jaccard[net].items()]
        if net in r.quadrants:
            md += ["", "Top 25 % by activation × top 25 % by gradient (units):", ""]
            md += ["| quadrant | units |", "|---|---|"]
            md += [f"| {k} | {v} |" for k, v in r.quadrants[net].items()]
        md += ["", "Loss change when the flagged units are pruned (outgoing weights zeroed):", ""]
        md += ["| metric | Δ loss |", "|---|---|"]
        md += [f"| {k} | {v:+.4g} |" for k, v in r.pruned[net].items()]
        if r.persist is not None:
            md += ["", f"Flagged here and still flagged in {against}:", ""]
            md += ["| metric | fraction |", "|---|---|"]
            md += [f"| {k} | {v:.3f} |" for k, v in r.persist[net].items()]
    return "\n".join(md) + "\n"
