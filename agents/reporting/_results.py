"""Run folders as one tidy table: `exp_name, env_name, seed, metric, env_step, value`.

The columns are those SimbaV2 ships its baselines in (`results/baseline/*.csv`), so published
baselines for the same tasks sit beside our runs (`--baseline FILE`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..training import TrainConfig
from ..training._run import load_run_config
from ..training._sinks import History

COLUMNS = ("exp_name", "env_name", "seed", "metric", "env_step", "value")
RETURN = "eval/episode_return"


@dataclasses.dataclass(frozen=True)
class Row:
    exp_name: str
    env_name: str
    seed: int
    metric: str
    env_step: int
    value: float


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder: its configuration, whether it finished, and its method's name."""

    path: Path
    config: TrainConfig
    finished: bool
    exp_name: str

    @property
    def env_name(self) -> str:
        return self.config.env

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.config.seeds)


def exp_name(config: TrainConfig, name_by: Sequence[str] = ()) -> str:
    """`agent` (`sac`, `bro`, `dacer`), `+method` where a reset strategy runs, then
    `option=value` for every option of `name_by` (dotted paths, e.g. `sac.critic_width`)."""
    name = config.agent
    method = config.reset.method
    if not isinstance(method, str):
        method = type(method).__name__
    if method != "none":
        name += f"+{method}"
    for key in name_by:
        name += f" {key.rsplit('.', 1)[-1]}={option(config, key, '--name-by')}"
    return name


def option(config: TrainConfig, key: str, flag: str = "option") -> object:
    """The value of a dotted option path (`sac.critic.width`, `reset.tau`) of a run's config."""
    value: object = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(value) or not hasattr(value, part):
            options = [f.name for f in dataclasses.fields(config)]
            raise ValueError(
                f"{flag} {key!r}: the run configuration has no option {part!r}; use a "
                f"dotted option path, e.g. one of {options}"
            )
        value = getattr(value, part)
    return value


def find_runs(folders: Iterable[Path], name_by: Sequence[str] = ()) -> list[Run]:
    """Every run folder (a folder holding `config.json`) in or under `folders`.

    Raises:
        FileNotFoundError: a folder does not exist or holds no run.
    """
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; give a run folder or a study")
        found = sorted(p.parent for p in folder.rglob("config.json"))
        if not found:
            raise FileNotFoundError(
                f"{folder} holds no run (no config.json in it or below); give the folder of a "
                "run (`neurosurgery train --run-dir`) or of a study of runs"
            )
        for path in found:
            config = load_run_config(path)
            runs.append(Run(path, config, _finished(path, config), exp_name(config, name_by)))
    return runs


def _finished(path: Path, config: TrainConfig) -> bool:
    summary = path / "summary.json"
    if not summary.exists():
        return False
    return json.loads(summary.read_text()).get("env_steps", -1) >= config.steps


def rows_of(run: Run) -> list[Row]:
    """Every record of a run (all seeds, all metrics)."""
    history = History.resumed(run.seeds, run.path, keep_until=2**62)
    return [
        Row(run.exp_name, run.env_name, seed, metric, step, value)
        for metric, by_seed in sorted(history.curves.items())
        for seed, points in sorted(by_seed.items())
        for step, value in points
    ]


def write_rows(rows: Iterable[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.exp_name, r.env_name, r.seed, r.metric, r.env_step, repr(r.value)])


def read_rows(path: Path) -> list[Row]:
    """A tidy results file (ours or a published baseline in the same format).

    Raises:
        ValueError: the file's columns are not `COLUMNS` (both named), or a value does not parse.
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise ValueError(
                f"{path}: its columns are {header}, a results file has the columns "
                f"{list(COLUMNS)} (one row per exp_name, env_name, seed, metric and env_step)"
            )
        out = []
        for number, row in enumerate(reader, start=2):
            try:
                e, env, seed, metric, step, value = row
                out.append(Row(e, env, int(seed), metric, int(float(step)), float(value)))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {row} is not a results row ({err})") from err
    return out
