"""Metric sinks attached to the trainer's callback, and plots of a run's metrics.

A record is `(env_steps, {name: per-seed values})` with flat slash-keyed names. On resume, file
sinks drop rows newer than the checkpoint so the files read as if the run had never stopped.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._files import named_oserror, replace_file

Record = dict[str, np.ndarray]
#: name → seed → [(env_steps, value), ...]
Curves = dict[str, dict[int, list[tuple[int, float]]]]


class Sink(Protocol):
    def write(self, env_steps: int, metrics: Record) -> None: ...
    def close(self) -> None: ...


def _rows(env_steps: int, seeds: Sequence[int], metrics: Record):
    for i, seed in enumerate(seeds):
        values = {k: float(v[i]) for k, v in metrics.items() if math.isfinite(float(v[i]))}
        if values:
            yield seed, values


def _csv_record(line: str) -> tuple[int, list[str]]:
    row = next(csv.reader([line]))
    if len(row) != 4:
        raise ValueError(f"{len(row)} fields instead of 4")
    return int(row[0]), row


def _jsonl_record(line: str) -> tuple[int, str]:
    return int(json.loads(line)["env_steps"]), line


def _kept(path: Path, keep_until: int, parse, header: bool = False) -> list:
    """The records of a metric file up to env step `keep_until`, for a resumed run.

    Every complete record ends with a newline: a last line without one is what a run stopped
    while writing leaves behind, and is dropped whatever it holds. A complete record that
    cannot be read is an error that names the file and line, and leaves the file as it is.
    """
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last piece: "" or a torn record
    kept = []
    for number, line in enumerate(lines[int(header) :], start=1 + int(header)):
        if not line.strip():
            continue
        try:
            step, record = parse(line)
        except (ValueError, KeyError, TypeError, csv.Error) as err:
            raise ValueError(
                f"{path}: line {number} cannot be read ({type(err).__name__}: {err}); "
                "repair or delete the file, then resume again"
            ) from err
        if step <= keep_until:
            kept.append(record)
    return kept


class _FileSink:
    """A metric file of records, one per line. On resume (`keep_until`) the records up to that
    env step are kept: pass them as `kept` (from `read_kept`) or let the sink read them. The
    file is rewritten through `replace_file`, then appended to."""

    newline: str | None = None  # as for `open`
    header = False  # whether the first line is a header, not a record

    def __init__(
        self,
        path: Path,
        seeds: Sequence[int],
        keep_until: int | None = None,
        kept: list | None = None,
    ):
        self.seeds = list(seeds)
        if kept is None:
            kept = [] if keep_until is None else self.read_kept(path, keep_until)
        records = kept
        replace_file(path, lambda f: self._rewrite(f, records), newline=self.newline)
        self.file = open(path, "a", newline=self.newline)  # noqa: SIM115

    @staticmethod
    def _parse(line: str) -> tuple[int, Any]:
        """(env step, the record as `_rewrite` writes it back) of one line."""
        raise NotImplementedError

    def _rewrite(self, f: Any, records: list) -> None:
        raise NotImplementedError

    @classmethod
    def read_kept(cls, path: Path, keep_until: int) -> list:
        return _kept(path, keep_until, cls._parse, header=cls.header)

    def close(self) -> None:
        self.file.close()


class CSVSink(_FileSink):
    """Long format: env_steps, seed, name, value."""

    newline, header = "", True
    _parse = staticmethod(_csv_record)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.writer = csv.writer(self.file)

    def _rewrite(self, f: Any, records: list) -> None:
        csv.writer(f).writerows([["env_steps", "seed", "name", "value"], *records])

    def write(self, env_steps: int, metrics: Record) -> None:
        try:
            for seed, values in _rows(env_steps, self.seeds, metrics):
                for name, value in sorted(values.items()):
                    self.writer.writerow([env_steps, seed, name, repr(value)])
            self.file.flush()
        except OSError as err:  # a torn last line is dropped on resume
            raise named_oserror(err, Path(self.file.name)) from err


class JSONLSink(_FileSink):
    """One JSON object per seed and record: {"env_steps", "seed", name: value, ...}."""

    _parse = staticmethod(_jsonl_record)

    def _rewrite(self, f: Any, records: list) -> None:
        f.writelines(line + "\n" for line in records)

    def write(self, env_steps: int, metrics: Record) -> None:
        try:
            for seed, values in _rows(env_steps, self.seeds, metrics):
                line = json.dumps({"env_steps": env_steps, "seed": seed, **values})
                self.file.write(line + "\n")
            self.file.flush()
        except OSError as err:  # a torn last line is dropped on resume
            raise named_oserror(err, Path(self.file.name)) from err


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


class WandbSink:
    """One Weights & Biases run per seed, in the run's group (the `wandb` extra).

    Project, group and names come from the run's configuration (`TrainConfig.wandb`); each
    seed's run is named `<group>-seed<s>` and gets the whole configuration and its seed. The
    runs' ids are kept in the run folder (`wandb.json`), so a resumed run continues the same W&B
    runs; W&B's files go to `<run folder>/wandb` (with `WANDB_MODE=offline`, nothing leaves the
    machine: `wandb sync` uploads them later). Records are logged at their env step; after a
    resume W&B keeps what it had and ignores records at steps it has already seen.
    """

    def __init__(
        self,
        run_dir: Path,
        seeds: Sequence[int],
        project: str,
        group: str,
        entity: str | None,
        config: dict[str, Any],
    ):
        try:
            import wandb
        except ImportError as err:  # checked at validation; here for direct use
            raise ValueError(WANDB_MISSING) from err
        ids_path = run_dir / "wandb.json"
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        self.runs = {}
        try:
            for seed in seeds:
                name = f"{group}-seed{seed}"
                run = wandb.init(
                    project=project,
                    entity=entity,
                    group=group,
                    name=name,
                    dir=str(run_dir),
                    config={**config, "seed": seed},
                    id=ids.get(str(seed)),
                    resume="allow",
                    reinit="create_new",
                )
                ids[str(seed)] = run.id
                self.runs[seed] = run
        except BaseException:
            self.close()
            raise
        replace_file(ids_path, lambda f: f.write(json.dumps(ids, indent=2)))
        self.seeds = list(seeds)

    def write(self, env_steps: int, metrics: Record) -> None:
        for seed, values in _rows(env_steps, self.seeds, metrics):
            self.runs[seed].log(values, step=env_steps)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()
        self.runs = {}


WANDB_MISSING = (
    "--sinks wandb needs Weights & Biases: install the wandb extra (pip install -e '.[wandb]')"
)


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


class History:
    """Every finite value of a run's records, in memory, as curves (name → seed → points).

    The run's summary and plots are built from it. A resumed run starts from the records kept
    in its metric file (`curves`), so they cover the whole run.
    """

    def __init__(self, seeds: Sequence[int], curves: Curves | None = None):
        self.seeds = list(seeds)
        self.curves: Curves = curves if curves is not None else {}

    def write(self, env_steps: int, metrics: Record) -> None:
        for seed, values in _rows(env_steps, self.seeds, metrics):
            for name, value in values.items():
                self.curves.setdefault(name, {}).setdefault(seed, []).append((env_steps, value))

    def close(self) -> None:
        pass

    @classmethod
    def resumed(cls, seeds: Sequence[int], run_dir: Path, keep_until: int) -> History:
        """The history of a run folder up to `keep_until`, from metrics.csv or metrics.jsonl
        (whichever it has; none: an empty history)."""
        curves: Curves = {}
        if (run_dir / "metrics.csv").exists():
            for row in CSVSink.read_kept(run_dir / "metrics.csv", keep_until):
                _add(curves, row[2], int(row[1]), int(row[0]), float(row[3]))
        elif (run_dir / "metrics.jsonl").exists():
            for line in JSONLSink.read_kept(run_dir / "metrics.jsonl", keep_until):
                record = json.loads(line)
                step, seed = record.pop("env_steps"), record.pop("seed")
                for name, value in record.items():
                    _add(curves, name, seed, step, float(value))
        return cls(seeds, curves)


def _add(curves: Curves, name: str, seed: int, step: int, value: float) -> None:
    curves.setdefault(name, {}).setdefault(seed, []).append((step, value))


def read_metrics(path: Path) -> Curves:
    """metrics.csv → {name: {seed: [(env_steps, value), ...]}}."""
    curves: Curves = {}
    with open(path, newline="") as f:
        for row in list(csv.reader(f))[1:]:
            _add(curves, row[2], int(row[1]), int(row[0]), float(row[3]))
    return curves


def plot_curves(
    curves: Curves, out_path: Path, prefixes: tuple[str, ...], title: str, depth: int | None = None
) -> bool:
    """One PNG with every curve whose name starts with one of `prefixes`, per seed and mean.

    `depth`: keep only names with that many slash-separated parts (e.g. 3 for the network-level
    `surgery/critic/grama`, leaving out the per-layer `surgery/critic/grama/<layer>`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {
        k: v
        for k, v in curves.items()
        if k.startswith(prefixes) and (depth is None or k.count("/") + 1 == depth)
    }
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
