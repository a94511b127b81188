"""Studies: a grid of training runs read from one file (TOML, or YAML where PyYAML is installed),
expanded into one `TrainConfig` per run, checked before any work, and the study folder's
manifest that ties the folder to its study."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import AGENTS, TrainConfig, _decode, config_to_dict

#: the study folder's manifest: the study's name and every run's configuration
MANIFEST = "study.json"
#: the study folder's own bookkeeping (run states, job logs), next to the run folders
SWEEP_DIR = ".sweep"
#: the grid axis whose values are tables of run options set together
RUN_AXIS = "run"
#: options that may differ between a study's runs on disk and the study file: they change how a
#: run is shown, not what it computes
RUNTIME = ("run_dir", "progress", "env_workers")
LAUNCHERS = ("local", "slurm")


class StudyError(ValueError):
    """A study file, study folder or launcher that cannot be used; nothing was changed."""


@dataclass(frozen=True)
class LauncherConfig:
    """Where the runs of a study train."""

    kind: str = "local"
    """local (processes on this machine) or slurm (a job array through submitit)."""
    parallel: int | None = None
    """Runs training at once. Default: local, the machine's cores // cpus_per_run; slurm, all."""
    cpus_per_run: int = 1
    """CPU cores per run (slurm: --cpus-per-task; local: sizes the default of parallel)."""
    gpus_per_run: int = 0
    """GPUs per run (slurm: --gpus-per-node)."""
    time_min: int = 24 * 60
    """slurm: time limit of one job in minutes; a job that reaches it is requeued and resumes."""
    partition: str | None = None
    """slurm: partition (default: the cluster's default)."""
    mem_gb: float | None = None
    """slurm: memory per job in GB (default: the cluster's default)."""
    max_requeues: int = 10
    """slurm: times one job may be requeued after a preemption or its time limit."""


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: an option (dotted path) and the values it takes."""

    option: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Study:
    """A study: the options shared by its runs, the grid over the others, where it runs."""

    name: str
    base: TrainConfig
    grid: tuple[Axis, ...] = ()
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    seeds_per_run: int | None = None
    """Seeds of one run (vmapped together). Default: all the seeds of a grid point in one run."""
    out: str | None = None
    """The study folder, if the file names one (--out replaces it)."""
    given: tuple[str, ...] = ()
    """The run options the study file sets in [base] (dotted), to check them against agents."""


@dataclass(frozen=True)
class Run:
    """One run of a study: its folder name and configuration (run_dir inside the study)."""

    name: str
    config: TrainConfig
    options: tuple[str, ...] = ()
    """The run options set by the study for this run (dotted), base and grid together."""


# ---- reading ------------------------------------------------------------------------------
_TOP = ("name", "out", "base", "grid", "launcher", "seeds_per_run")


def _closest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(valid)})"


def _unknown(where: str, key: str, valid: Sequence[str]) -> StudyError:
    return StudyError(f"{where}: unknown key {key!r}{_closest(key, valid)}")


def read_study_file(path: str | Path) -> dict[str, Any]:
    """The study file as a dict (TOML; YAML where PyYAML is installed)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} not found; give the path of a .toml file")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as err:
            raise StudyError(
                f"{path} is YAML, which needs PyYAML (pip install pyyaml); or write it as TOML"
            ) from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise StudyError(f"{path} is not valid YAML: {err}") from err
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise StudyError(f"{path} is not valid TOML: {err}") from err
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a table of keys ({', '.join(_TOP)})")
    return data


def read_study(path: str | Path) -> Study:
    """The study of a study file (its name: the file's, unless it sets one)."""
    data = dict(read_study_file(path))
    data.setdefault("name", Path(path).stem)
    return study_from_dict(data, str(path))


def study_from_dict(data: Mapping[str, Any], where: str = "study") -> Study:
    """A `Study` from a study file's content; every key and value checked, by name."""
    for key in data:
        if key not in _TOP:
            raise _unknown(where, key, _TOP)
    name = data.get("name", "study")
    if not isinstance(name, str) or not name:
        raise StudyError(f"{where}: name must be a non-empty string, got {name!r}")
    base_table = _nest(_table(data.get("base", {}), f"{where} [base]"), f"{where} [base]")
    base = _build(TrainConfig, base_table, "base", TrainConfig())
    given = tuple(_flat_keys(base_table))
    grid_table = _table(data.get("grid", {}), f"{where} [grid]")
    grid = tuple(_axis(option, values) for option, values in grid_table.items())
    launcher = _build(
        LauncherConfig, _table(data.get("launcher", {}), f"{where} [launcher]"), "launcher"
    )
    seeds_per_run = data.get("seeds_per_run")
    if seeds_per_run is not None and (
        isinstance(seeds_per_run, bool) or not isinstance(seeds_per_run, int) or seeds_per_run < 1
    ):
        raise StudyError(f"{where}: seeds_per_run must be a whole number >= 1, got {seeds_per_run}")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise StudyError(f"{where}: out must be a folder path, got {out!r}")
    return Study(name, base, grid, launcher, seeds_per_run, out, given)


def study_to_dict(study: Study) -> dict[str, Any]:
    """The study as a study file holds it (base options differing from the defaults)."""
    return {
        "name": study.name,
        "base": _diff(config_to_dict(study.base), config_to_dict(TrainConfig())),
        "grid": {a.option: list(a.values) for a in study.grid},
        "launcher": dataclasses.asdict(study.launcher),
        "seeds_per_run": study.seeds_per_run,
    }


def _diff(d: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and isinstance(default.get(k), dict):
            sub = _diff(v, default[k])
            if sub:
                out[k] = sub
        elif v != default.get(k):
            out[k] = v
    return out


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a table of options, got {value!r}")
    return value


def _nest(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`table` with its quoted dotted keys ("sac.critic.width" = 32, as [grid] takes them) as
    nested tables; an option given twice (dotted and in a table) is refused by name."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        *parents, leaf = key.split(".")
        node, path = out, []
        for part in parents:
            path.append(part)
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StudyError(f"{where}: {'.'.join(path)} is an option, not a table of options")
        _merge(node, leaf, _nest(value, where) if isinstance(value, dict) else value, key, where)
    return out


def _merge(node: dict[str, Any], key: str, value: Any, name: str, where: str) -> None:
    if key not in node:
        node[key] = value
    elif isinstance(node[key], dict) and isinstance(value, dict):
        for k, v in value.items():
            _merge(node[key], k, v, f"{name}.{k}", where)
    else:
        raise StudyError(f"{where}: {name} is given twice; give it once")


def _flat_keys(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in table.items():
        if isinstance(v, dict):
            out += _flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _build(cls: type, table: Mapping[str, Any], where: str, start: Any = None) -> Any:
    """`start` (or `cls()`) with the options of `table`, nested tables into nested configs;
    unknown keys are refused with the closest valid name, values of the wrong type by option."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    changes = {}
    current = start if start is not None else cls()
    for key, value in table.items():
        if key not in names:
            raise _unknown(where, key, names)
        option = f"{where}.{key}"
        sub = _nested_class(hints[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise StudyError(f"{option} is a table of options, got {value!r}")
            changes[key] = _build(sub, value, option, getattr(current, key))
        else:
            changes[key] = _coerce(hints[key], value, option)
    try:
        return dataclasses.replace(current, **changes)
    except (TypeError, ValueError) as err:
        raise StudyError(f"{where}: {err}") from err


def _nested_class(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


_TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _coerce(hint: Any, value: Any, option: str) -> Any:
    """`value` (as TOML or YAML reads it) as the option's type, or a StudyError naming it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _coerce(args[0], value, option)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, option)
            except StudyError as err:
                errors.append(err)
        raise errors[0] if errors else StudyError(f"{option}: unexpected {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise StudyError(f"{option} is a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{option}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in _TYPE_NAMES:
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        raise StudyError(f"{option} must be {_TYPE_NAMES[hint]}, got {value!r}")
    if value is None:
        raise StudyError(f"{option} cannot be empty (null)")
    if isinstance(value, dict) and ("__object__" in value or "__function__" in value):
        return _decode(value)  # an object as a manifest holds it
    return value  # metric and strategy objects given from Python


def _option_hint(option: str) -> tuple[Any, type | None]:
    """The type hint of a dotted option of TrainConfig and, for a table of options, its class;
    unknown parts are refused with the closest valid name."""
    cls: Any = TrainConfig
    hint: Any = TrainConfig
    parts = option.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise StudyError(f"[grid] {option!r}: {'.'.join(parts[:i])} has no options")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            valid = names + ([RUN_AXIS] if i == 0 else [])
            raise _unknown(f"[grid] {option!r}", part, valid)
        hint = _hints(cls)[part]
        cls = hint
    return hint, _nested_class(hint)


def _axis(option: str, values: Any) -> Axis:
    if not isinstance(values, list):
        raise StudyError(
            f"[grid] {option!r}: an axis is a list of values, got {values!r}; a single value "
            "belongs in [base]"
        )
    if not values:
        raise StudyError(
            f"[grid] {option!r} has no values: the grid would be empty; give it at least one "
            "value or remove it"
        )
    if option == RUN_AXIS:
        for i, v in enumerate(values):
            if not isinstance(v, dict):
                raise StudyError(f"[grid] run[{i}] is a table of run options, got {v!r}")
            _build(TrainConfig, v, f"grid.run[{i}]", TrainConfig())
        return Axis(option, tuple(values))
    hint, cls = _option_hint(option)
    checked = []
    for i, v in enumerate(values):
        where = f"grid.{option}[{i}]"
        if cls is not None:
            if not isinstance(v, dict):
                raise StudyError(f"{where}: {option} is a table of options, got {v!r}")
            _build(cls, v, where, cls())
            checked.append(v)
        elif option == "seeds":
            seeds = v if isinstance(v, list) else [v]
            checked.append(_coerce(hint, seeds, where))
        else:
            checked.append(_coerce(hint, v, where))
    return Axis(option, tuple(checked))


# ---- expansion ----------------------------------------------------------------------------
def _apply(config: TrainConfig, option: str, value: Any) -> TrainConfig:
    if option == RUN_AXIS:
        return _build(TrainConfig, value, "grid.run", config)
    parts = option.split(".")
    table: Any = value
    for part in reversed(parts):
        table = {part: table}
    return _build(TrainConfig, table, "grid", config)


def _label(option: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "+".join(f"{k}={v}" for k, v in _flat_items(value))
        return inner if option == RUN_AXIS else f"{option}={inner}"
    if isinstance(value, list | tuple):
        value = "-".join(map(str, value))
    return f"{option}={value}"


def _flat_items(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in table.items():
        if isinstance(v, dict):
            out += _flat_items(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._=+,-]", "-", name).strip(".")
    if len(name) > 150:
        name = name[:140] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name or "run"


def _options_of(axis: Axis, value: Any) -> list[str]:
    if axis.option == RUN_AXIS:
        return [k for k, _ in _flat_items(value)]
    if isinstance(value, dict):
        return [f"{axis.option}.{k}" for k, _ in _flat_items(value)]
    return [axis.option]


def expand(study: Study, root: str | Path) -> list[Run]:
    """The study's runs, each with its folder under `root`; points of the grid that differ
    only in their seeds are one run with those seeds (vmapped). Raises StudyError for a run
    that cannot train, before any work."""
    axes = [a for a in study.grid if a.option != "seeds"]
    seed_axis = [a for a in study.grid if a.option == "seeds"]
    seed_values = seed_axis[0].values if seed_axis else ()
    groups: dict[str, tuple[TrainConfig, list[int], list[str]]] = {}
    for point in itertools.product(*(a.values for a in axes)):
        config = study.base
        options = list(study.given)
        for axis, value in zip(axes, point, strict=True):
            config = _apply(config, axis.option, value)
            options += _options_of(axis, value)
        labels = [_label(a.option, v) for a, v in zip(axes, point, strict=True)]
        name = _safe(",".join(labels)) if labels else "run"
        key = json.dumps(config_to_dict(dataclasses.replace(config, seeds=())), sort_keys=True)
        if key in groups:
            raise StudyError(
                f"grid points {groups[key][2][0]!r} and {name!r} give the same run; remove the "
                "duplicate value"
            )
        if seed_axis and "seeds" in options[len(study.given) :]:
            raise StudyError(
                f"grid point {name!r} sets seeds in a table while [grid] has a seeds axis; "
                "give the seeds in one place"
            )
        seeds: list[int] = [s for v in seed_values for s in v] if seed_axis else list(config.seeds)
        if len(set(seeds)) != len(seeds):
            raise StudyError(f"seeds: each seed once, got {seeds}")
        groups[key] = (config, seeds, [name, *options])
    runs: list[Run] = []
    size = study.seeds_per_run
    for config, seeds, (name, *options) in groups.values():
        chunks = (
            [seeds] if size is None else [seeds[i : i + size] for i in range(0, len(seeds), size)]
        )
        for chunk in chunks:
            run_name = (
                name
                if size is None or len(chunks) == 1
                else _safe(f"{name},seeds={'-'.join(map(str, chunk))}")
            )
            run_dir = str(Path(root) / run_name)
            cfg = dataclasses.replace(config, seeds=tuple(chunk), run_dir=run_dir, progress=False)
            runs.append(Run(run_name, cfg, tuple(dict.fromkeys(options))))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise StudyError(
            "two runs would share one folder name: "
            + ", ".join(sorted({n for n in names if names.count(n) > 1}))
            + "; make the grid's values distinct"
        )
    if not runs:
        raise StudyError("the grid is empty: no run to train; give each [grid] axis values")
    for run in runs:
        check_run(run)
    return runs


def check_run(run: Run) -> None:
    """Raise StudyError if the run cannot train: a bad option, an unknown environment, or an
    option of another agent than the run's (which the run would silently ignore)."""
    c = run.config
    for option in run.options:
        head = option.split(".")[0]
        if head in AGENTS and head != c.agent:
            raise StudyError(
                f"run {run.name}: option {option} is for agent {head}, but this run trains "
                f"{c.agent}, which has no such option; set {head}.* options only for runs of "
                f"agent {head} (e.g. in [[grid.run]] tables with agent = {head!r})"
            )
    try:
        c.validate()
        _check_env(c.env)
    except ValueError as err:
        raise StudyError(f"run {run.name}: {err}") from err


def _check_env(name: str) -> None:
    import envs
    from envs._core import unknown_name_error
    from envs._registry import _names_of

    prefix = name.partition("/")[0]
    if prefix not in ("brax", "playground", "dmc", "test") or name not in _names_of(prefix):
        raise unknown_name_error(name, envs.names())


# ---- the study folder ---------------------------------------------------------------------
def _comparable(config: TrainConfig) -> dict[str, Any]:
    d = config_to_dict(config)
    for k in RUNTIME:
        d.pop(k)
    return json.loads(json.dumps(d))


def manifest(study: Study, runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "format": 1,
        "study": study.name,
        "definition": study_to_dict(study),
        "runs": {r.name: _comparable(r.config) for r in runs},
    }


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"study", "runs"} <= set(data):
            raise ValueError("not a study manifest")
    except ValueError as err:
        raise StudyError(
            f"{path} cannot be read as a study manifest ({err}); restore it or use another --out"
        ) from err
    return data


def check_folder(root: Path, study: Study, runs: Sequence[Run]) -> bool:
    """Whether `root` already holds this study (True) or is new (False); a folder that holds
    something else, or another study (other runs or other options), is refused."""
    saved = read_manifest(root)
    if saved is None:
        if root.exists() and not root.is_dir():
            raise StudyError(f"--out {root} is a file; give a folder for the study")
        if root.exists() and any(root.iterdir()):
            found = ", ".join(sorted(p.name for p in root.iterdir())[:5])
            raise StudyError(
                f"{root} is not empty ({found}) and holds no study ({MANIFEST}): a study "
                "would mix its runs with what is there; give a new or empty --out"
            )
        return False
    mine = manifest(study, runs)["runs"]
    problems = []
    if saved["study"] != study.name:
        problems.append(f"it is study {saved['study']!r}, not {study.name!r}")
    gone, new = sorted(set(saved["runs"]) - set(mine)), sorted(set(mine) - set(saved["runs"]))
    if gone:
        problems.append(f"runs not in this study: {', '.join(gone[:3])}")
    if new:
        problems.append(f"runs it does not hold: {', '.join(new[:3])}")
    for name in sorted(set(saved["runs"]) & set(mine)):
        from ._run import _differences

        diff = _differences(saved["runs"][name], mine[name], None)
        if diff:
            problems.append(f"run {name} has other options ({'; '.join(diff[:3])})")
    if problems:
        raise StudyError(
            f"{root} holds another study: {'; '.join(problems[:4])}. Continue it with its own "
            f"study file (or `neurosurgery sweep --out {root}` alone), or give a new --out"
        )
    return True
