"""Metric sinks attached to the trainer's callback, and plots of a run's metrics.

A record is `(env_steps, {name: per-seed values})` with flat slash-keyed names. On resume, file
sinks drop rows newer than the checkpoint so the files read as if the run had never stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

Record = dict[str, Sequence[float]]


class Sink(Protocol):
    def write(self, env_steps: int, metrics: Record) -> None: ...
    def close(self) -> None: ...


def _rows(env_steps: int, seeds: Sequence[int], metrics: Record):
    for i, seed in enumerate(seeds):
        values = {k: float(v[i]) for k, v in metrics.items() if math.isfinite(float(v[i]))}
        if values:
            yield seed, values


def _csv_step(row: list[str]) -> int:
    if len(row) != 4:
        raise ValueError(f"{len(row)} fields instead of 4")
    return int(row[0])


def _jsonl_step(line: str) -> int:
    return int(json.loads(line)["env_steps"])


def _parsed(path: Path, items: list, step_of, first_line: int = 1) -> list:
    """`items` (rows or lines of a metric file) that parse. A broken last one is what a run
    killed while writing leaves behind, and is dropped; a broken one elsewhere is an error that
    names the file and leaves it as it is."""
    good = []
    for i, item in enumerate(items):
        try:
            step_of(item)
        except (ValueError, KeyError, TypeError) as err:
            if i == len(items) - 1:
                continue
            raise ValueError(
                f"{path}: line {i + first_line} cannot be read ({type(err).__name__}: {err}); "
                "repair or delete the file, then resume again"
            ) from err
        good.append(item)
    return good


def _replace_file(path: Path, write, newline: str | None = None) -> None:
    """Write a file through a temporary file and a rename, so that an interrupted rewrite (on
    resume) leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline=newline) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CSVSink:
    """Long format: env_steps, seed, name, value."""

    def __init__(self, path: Path, seeds: Sequence[int], keep_until: int | None = None):
        self.seeds = list(seeds)
        kept: list[list[str]] = []
        if keep_until is not None and path.exists():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))[1:]
            kept = [
                r for r in _parsed(path, rows, _csv_step, first_line=2) if int(r[0]) <= keep_until
            ]
        header = [["env_steps", "seed", "name", "value"]]
        _replace_file(path, lambda f: csv.writer(f).writerows(header + kept), newline="")
        self.file = open(path, "a", newline="")  # noqa: SIM115
        self.writer = csv.writer(self.file)

    def write(self, env_steps: int, metrics: Record) -> None:
        for seed, values in _rows(env_steps, self.seeds, metrics):
            for name, value in sorted(values.items()):
                self.writer.writerow([env_steps, seed, name, repr(value)])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class JSONLSink:
    """One JSON object per seed and record: {"env_steps", "seed", name: value, ...}."""

    def __init__(self, path: Path, seeds: Sequence[int], keep_until: int | None = None):
        self.seeds = list(seeds)
        kept: list[str] = []
        if keep_until is not None and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in _parsed(path, lines, _jsonl_step) if _jsonl_step(ln) <= keep_until]
        _replace_file(path, lambda f: f.writelines(ln + "\n" for ln in kept))
        self.file = open(path, "a")  # noqa: SIM115

    def write(self, env_steps: int, metrics: Record) -> None:
        for seed, values in _rows(env_steps, self.seeds, metrics):
            self.file.write(json.dumps({"env_steps": env_steps, "seed": seed, **values}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """One event folder per seed (`tb/seed_<s>`), so seeds overlay under the same tags."""

    def __init__(self, folder: Path, seeds: Sequence[int], keep_until: int | None = None):
        from tensorboardX import SummaryWriter

        self.seeds = list(seeds)
        purge = None if keep_until is None else keep_until + 1
        self.writers = {
            s: SummaryWriter(str(folder / f"seed_{s}"), purge_step=purge) for s in self.seeds
        }

    def write(self, env_steps: int, metrics: Record) -> None:
        for seed, values in _rows(env_steps, self.seeds, metrics):
            for name, value in values.items():
                self.writers[seed].add_scalar(name, value, env_steps)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class ConsoleSink:
    """A line per record with seed means of the main metrics and of `extra_keys` (the trainer
    adds each network's inactive ratio)."""

    KEYS = ("train/episode_return", "eval/episode_return", "train/critic_loss", "train/alpha")

    def __init__(self, stream=None, extra_keys: tuple[str, ...] = ()):
        self.stream = stream
        self.extra_keys = tuple(extra_keys)

    def write(self, env_steps: int, metrics: Record) -> None:
        parts = [f"step {env_steps:>9d}"]
        for k in (*self.KEYS, *self.extra_keys, "perf/env_steps_per_s"):
            if k in metrics:
                v = np.asarray(metrics[k], np.float64)
                if np.isfinite(v).any():
                    parts.append(f"{k.replace('/episode_return', '_return')} {np.nanmean(v):.4g}")
        line = " | ".join(parts)
        from tqdm import tqdm

        tqdm.write(line, file=self.stream or sys.stdout)

    def close(self) -> None:
        pass


def read_metrics(path: Path) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """metrics.csv → {name: {seed: [(env_steps, value), ...]}}."""
    out: dict[str, dict[int, list[tuple[int, float]]]] = {}
    with open(path, newline="") as f:
        for row in list(csv.reader(f))[1:]:
            out.setdefault(row[2], {}).setdefault(int(row[1]), []).append(
                (int(row[0]), float(row[3]))
            )
    return out


def plot_curves(csv_path: Path, out_path: Path, prefixes: tuple[str, ...], title: str,
                depth: int | None = None) -> bool:  # fmt: skip
    """One PNG with every metric whose name starts with one of `prefixes`, per seed and mean.

    `depth`: keep only names with that many slash-separated parts (e.g. 3 for the network-level
    `surgery/critic/grama`, leaving out the per-layer `surgery/critic/grama/<layer>`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {k: v for k, v in read_metrics(csv_path).items()
            if k.startswith(prefixes) and (depth is None or k.count("/") + 1 == depth)}  # fmt: skip
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (name, by_seed) in enumerate(sorted(data.items())):
        color = f"C{i}"
        for pts in by_seed.values():
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=color, alpha=0.3, linewidth=0.8)
        steps = sorted(set.intersection(*[{s for s, _ in p} for p in by_seed.values()]))
        if steps:
            means = [np.mean([dict(p)[s] for p in by_seed.values()]) for s in steps]
            ax.plot(steps, means, color=color, linewidth=2, label=name)
    ax.set_xlabel("environment steps")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    fig.savefig(out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True
