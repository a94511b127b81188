"""Studies shipped with the package, by name (`neurosurgery sweep --preset bro-dmc`): the main
job and the GraMa paper's setups, each with a smoke variant that trains the same grid on a
seconds-long budget.

The preset files are `agents/experiments/presets/*.toml`, read through `importlib.resources`
so that they work from an installed wheel. `--smoke` changes budget-like options only (`SMOKE`,
`SMOKE_PER_AGENT`, `SMOKE_PERIODS`); a preset whose grid varies one of them, or that sets a
schedule the smoke budget cannot scale (`UNSCALED`), is refused rather than shrunk wrongly."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ._study import RUN_AXIS, Study, StudyError, read_study_file, study_from_dict

#: the package and folder holding the preset files
PRESET_PACKAGE, PRESET_FOLDER = "agents.experiments", "presets"
#: the options every smoke variant sets: a two-seed run of 400 env steps on the point-mass task
SMOKE: dict[str, Any] = {
    "env": "test/point-mass",
    "seeds": [0, 1],
    "steps": 400,
    "num_envs": 1,
    "episode_length": 20,
    "learning_starts": 100,
    "buffer_size": 400,
    "log_every": 100,
    "eval_every": 200,
    "eval_episodes": 2,
    "checkpoint_every": 400,
    "surgery.every": 50,
    "published": None,  # no published curve on the point-mass task
}
#: the smoke options of each agent the study trains: batch size and network widths
SMOKE_PER_AGENT: dict[str, dict[str, Any]] = {
    "sac": {"sac.batch_size": 16, "sac.actor.width": 16, "sac.critic.width": 16},
    "bro": {"bro.batch_size": 16, "bro.actor_width": 16, "bro.critic_width": 16},
    "dacer": {
        "dacer.batch_size": 16,
        "dacer.denoiser_width": 16,
        "dacer.critic.width": 16,
        "dacer.entropy_every": 100,
    },
}
#: periods in updates, replaced wherever the study sets them (base or grid) so that resets
#: happen within the smoke budget
SMOKE_PERIODS: dict[str, Any] = {"reset.every": 50}
#: step-counted schedules the smoke variant cannot scale: a preset setting one has no smoke
#: variant until this module learns how to shrink it
UNSCALED = ("reset.start", "reset.end", "reset.at", "bro.full_resets")
#: grid axes the smoke variant replaces by its single value (points then differ in the rest)
COLLAPSED = ("env", "seeds")


def preset_names() -> tuple[str, ...]:
    """The names of the presets shipped with the package, sorted."""
    folder = resources.files(PRESET_PACKAGE).joinpath(PRESET_FOLDER)
    return tuple(
        sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    )


def preset_data(name: str) -> dict[str, Any]:
    """The preset's study file as a dict (its name: the preset's, unless it sets one)."""
    names = preset_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise StudyError(
            f"unknown preset {name!r}{hint} Known presets: {', '.join(names)} "
            "(neurosurgery sweep --preset NAME), or give a study file of your own"
        )
    source = resources.files(PRESET_PACKAGE).joinpath(PRESET_FOLDER, f"{name}.toml")
    with resources.as_file(source) as path:
        data = dict(read_study_file(path))
    data.setdefault("name", name)
    return data


def read_preset(name: str, *, smoke: bool = False) -> Study:
    """The preset's study, or with `smoke` its smoke variant (`smoke_variant`)."""
    data = preset_data(name)
    where = f"preset {name}" + (" --smoke" if smoke else "")
    return study_from_dict(smoke_variant(data, where) if smoke else data, where)


def _agents(data: Mapping[str, Any]) -> list[str]:
    base, grid = data.get("base", {}), data.get("grid", {})
    found = [base.get("agent", "sac")]
    found += list(grid.get("agent", []))
    found += [t["agent"] for t in grid.get(RUN_AXIS, []) if isinstance(t, dict) and "agent" in t]
    return [a for a in dict.fromkeys(found) if a in SMOKE_PER_AGENT]


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *heads, last = key.split(".")
        table = out
        for head in heads:
            table = table.setdefault(head, {})
        table[last] = value
    return out


def _budget(
    flat: dict[str, Any], prefix: str, fixed: Mapping[str, Any], where: str, periods: bool = True
) -> None:
    """Replace the smoke periods in `flat` (options under `prefix`) if `periods`; refuse
    options that the smoke variant sets for every run (they would make grid points equal) and
    schedules it cannot scale."""
    for key in list(flat):
        option = prefix + key
        if option in SMOKE_PERIODS:
            flat[key] = SMOKE_PERIODS[option] if periods else flat[key]
        elif option in UNSCALED:
            raise StudyError(
                f"{where}: the study sets {option}, a schedule in steps that --smoke cannot "
                "scale to its budget; run the preset without --smoke, or copy it to a study file "
                "and shrink it there"
            )
        elif option in fixed and (prefix or option not in COLLAPSED):
            raise StudyError(
                f"{where}: [grid] varies {option}, which --smoke sets for every run "
                f"({fixed[option]!r}), so the smoke variant would not have the same grid; run "
                "the preset without --smoke"
            )


def _smoke_value(
    option: str, value: Any, fixed: Mapping[str, Any], where: str, periods: bool
) -> Any:
    """One value of a grid axis in the smoke variant."""
    if not isinstance(value, dict):
        scalar = {"": value}
        _budget(scalar, option, fixed, where, periods)
        return scalar[""]
    flat = _flat(value)
    if option == RUN_AXIS:
        for key in COLLAPSED:
            if key in flat:
                flat[key] = fixed[key]
    _budget(flat, "" if option == RUN_AXIS else f"{option}.", fixed, where, periods)
    return _nest(flat)


def _distinct(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        key = json.dumps(v, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def smoke_variant(data: Mapping[str, Any], where: str = "study") -> dict[str, Any]:
    """The study file's content with a seconds-long budget and the same grid: the options of
    `SMOKE` and of `SMOKE_PER_AGENT` (for the agents it trains) set in [base], its env and
    seeds axes replaced by those values, `SMOKE_PERIODS` replaced wherever set; named
    `<name>-smoke`, in `<out>-smoke`. Nothing else changes."""
    data = copy.deepcopy(dict(data))
    fixed = dict(SMOKE)
    for agent in _agents(data):
        fixed.update(SMOKE_PER_AGENT[agent])
    base = _flat(data.get("base", {}))
    _budget(base, "", {}, where)
    base.update(fixed)
    data["base"] = _nest(base)
    grid = dict(data.get("grid", {}))
    for option, values in grid.items():
        if not isinstance(values, list):
            continue  # study_from_dict names the problem
        if option in COLLAPSED:
            grid[option] = list(fixed[option]) if option == "seeds" else [fixed[option]]
            continue
        # points that differed only in env or seeds are one now; points that differed in a
        # period would become one too, which is not the same grid
        kept = _distinct([_smoke_value(option, v, fixed, where, False) for v in values])
        new = _distinct([_smoke_value(option, v, fixed, where, True) for v in values])
        if len(new) < len(kept):
            periods = ", ".join(SMOKE_PERIODS)
            raise StudyError(
                f"{where}: [grid] {option!r} varies a period that --smoke replaces ({periods}), "
                "so the smoke variant would not have the same grid; run the preset without "
                "--smoke"
            )
        grid[option] = new
    data["grid"] = grid
    data["name"] = f"{data.get('name', 'study')}-smoke"
    if isinstance(data.get("out"), str):
        data["out"] = f"{data['out']}-smoke"
    return data
