"""Named metrics and strategies: the registry a command line or a config file reads.

`metric("grama")` and `strategy("regrama", tau=0.01, every=1000)` build the library's own; a
name of the form `"package.module:attribute"` imports the user's own (a metric instance or a
class or function that makes one with no arguments; a strategy instance, or a function that
makes one from the options given).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._methods._cbp import CBP
from ._methods._chain import Chain
from ._methods._cpr import CPR
from ._methods._injection import PlasticityInjection
from ._methods._reborn import ReBorn
from ._methods._schedule import Schedule
from ._methods._select import Selection
from ._methods._strategy import FullReset, Resetter, ShrinkPerturb, Strategy, check_step
from ._metrics import (
    GXD,
    Dormant,
    Duplicates,
    FeatureRank,
    Fisher,
    GradientActivity,
    GradientFlow,
    GraMa,
    Metric,
    Saturation,
    Utility,
    WeightMagnitude,
)

#: metrics by name (each one's `name` is its key)
METRICS: dict[str, Callable[[], Metric]] = {
    "grama": lambda: GraMa("preactivation"),
    "grama_activation": lambda: GraMa("activation"),
    "grama_weight": lambda: GraMa("weight"),
    "dormant": Dormant,
    "utility": Utility,
    "grad_activity": GradientActivity,
    "weight_norm": WeightMagnitude,
    "fisher": Fisher,
    "fisher_activation": lambda: Fisher(site="activation"),
    "grad_flow": GradientFlow,
    "grad_flow_preactivation": lambda: GradientFlow(site="preactivation"),
    "saturation_tanh": Saturation,
    "saturation_sigmoid": lambda: Saturation("sigmoid"),
    "duplicates": Duplicates,
    "duplicates_centered": lambda: Duplicates(centered=True),
    "feature_rank": FeatureRank,
    "gxd": GXD,
    "gxd_mean": lambda: GXD("mean"),
}


def import_here(module_name: str) -> Any:
    """`importlib.import_module`, also finding a module in the working directory (as `python -m`
    does; a console script such as `neurosurgery` does not put it on `sys.path`). The folder is
    appended to `sys.path`, so an installed module of the same name still comes first."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.split(".")[0]
        here = os.getcwd()
        found = Path(here, top).is_dir() or Path(here, f"{top}.py").is_file()
        if err.name != top or here in sys.path or not found:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def _import(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = import_here(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {spec!r}: module {module_name!r} cannot be imported ({err}); name an "
            "importable module (`package.module:attribute`)"
        ) from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}") from err


def metric(name: str) -> Metric:
    """The metric called `name` (see `METRICS`), or the one `"module:attribute"` names."""
    if ":" in name:
        found = _import(name, "metric")
        found = found() if isinstance(found, type) or not isinstance(found, Metric) else found
        if not isinstance(found, Metric):
            raise ValueError(f"metric {name!r} is not a metric (name, init, score): {found!r}")
        return found
    if name not in METRICS:
        raise ValueError(
            f"unknown metric {name!r}; known: {', '.join(METRICS)} (or `package.module:attribute`"
            " for your own)"
        )
    return METRICS[name]()


def _unit_reset(metric_: Metric, name: str) -> Callable[..., Strategy]:
    def make(
        tau: float = 0.0,
        every: int = 1000,
        start: int = 0,
        end: int | None = None,
        max_fraction: float | None = None,
        outgoing: str = "zero",
        outgoing_scale: float = 0.02,
        include_shared: bool = False,
        reset_count: bool = False,
    ) -> Strategy:
        select = (
            Selection("threshold", tau)
            if max_fraction is None
            else Selection("capped", tau, max_fraction=max_fraction)
        )
        return Resetter(
            metric_,
            select,
            Schedule(every, start, end),
            outgoing,
            outgoing_scale,
            include_shared,
            reset_count,
            label=name,
        )

    make.__name__ = name
    make.__doc__ = (
        f"{name}: reset units whose {metric_.name} score is <= tau every `every` updates "
        "(at most `max_fraction` of a layer at once)."
    )
    return make


def _shrink_perturb(
    shrink: float = 0.8,
    perturb: float = 0.2,
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
    reset_optimizer: bool = False,
) -> Strategy:
    """shrink_perturb: θ ← shrink·θ + perturb·θ_fresh every `every` updates."""
    return ShrinkPerturb(shrink, perturb, Schedule(every, start, end), reset_optimizer)


def _full_reset(
    every: int | None = None,
    at: tuple[int, ...] = (),
    start: int = 0,
    end: int | None = None,
    reset_optimizer: bool = True,
) -> Strategy:
    """full_reset: fresh initial weights every `every` updates or at the update counts `at`."""
    if (every is None) == (not at):
        raise ValueError("full_reset: give either every (updates between resets) or at (counts)")
    schedule = Schedule.at(*at) if at else Schedule(every, start, end)
    return FullReset(schedule, reset_optimizer)


def _cbp(
    replacement_rate: float = 1e-4,
    maturity: int = 100,
    decay: float = 0.99,
    bias_correction: bool = True,
    every: int = 1,
    start: int = 0,
    end: int | None = None,
    include_shared: bool = False,
    reset_count: bool = False,
) -> Strategy:
    """cbp: continual backprop, replacing `replacement_rate` of the units older than `maturity`
    updates per update, lowest utility first (replacements made every `every` updates)."""
    return CBP(
        replacement_rate,
        maturity,
        decay,
        bias_correction,
        Schedule(every, start, end),
        include_shared,
        reset_count,
    )


def _reborn(
    tau: float = 0.0,
    overactive: float = 1.0,
    share: float = 0.5,
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
) -> Strategy:
    """reborn: every `every` updates, units with τ-dormant score <= tau take over the incoming
    weights of units scoring above `overactive` and `share` of their outgoing weights."""
    return ReBorn(tau, overactive, share, schedule=Schedule(every, start, end))


def _cpr(
    replacement_rate: float = 0.012,
    sharpness: float = 16.0,
    threshold: float = 0.95,
    decay: float = 0.99,
    gate: str = "exp",
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
    include_shared: bool = False,
    optimizer_state: str = "keep",
) -> Strategy:
    """cpr: calibrated partial resets, every `every` updates each hidden unit moved towards
    fresh weights by ρ · min(1, exp(−sharpness · (s̄ − threshold))) (`gate="sigmoid"`:
    ρ · min(1, 2σ(−sharpness · (s̄ − threshold)))), s̄ its running GraMa (weight-gradient)
    score, and its outgoing weights decayed by the same fraction."""
    return CPR(
        replacement_rate,
        sharpness,
        threshold,
        decay,
        schedule=Schedule(every, start, end),
        include_shared=include_shared,
        optimizer_state=optimizer_state,
        gate=gate,
    )


def _injection(at: tuple[int, ...] = (100_000,), layers: int = 2) -> Strategy:
    """injection: plasticity injection at the update count `at` (one), into the last `layers`
    layers of each network built injectable."""
    if len(at) != 1:
        raise ValueError(
            f"injection: at={tuple(at)!r} is invalid: plasticity injection happens once, at one "
            "update count (e.g. --reset.at 50000)"
        )
    return PlasticityInjection(int(at[0]), layers)


#: strategy presets by name: each takes keyword options (see `strategy_options`)
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "redo": _unit_reset(Dormant(), "redo"),
    "regrama": _unit_reset(GraMa("preactivation"), "regrama"),
    "regrama_activation": _unit_reset(GraMa("activation"), "regrama_activation"),
    "regrama_weight": _unit_reset(GraMa("weight"), "regrama_weight"),
    "shrink_perturb": _shrink_perturb,
    "full_reset": _full_reset,
    "cbp": _cbp,
    "reborn": _reborn,
    "cpr": _cpr,
    "injection": _injection,
}


def strategy_options(name: str) -> dict[str, Any]:
    """The options a named strategy takes, with their defaults (for a composition `a+b`, every
    option a member takes, with the first member's default)."""
    if "+" in name:
        merged: dict[str, Any] = {}
        for member in _members(name):
            for k, v in strategy_options(member).items():
                merged.setdefault(k, v)
        return merged
    factory = _strategy_factory(name)
    if _is_instance(factory):
        return {}
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _is_instance(found: Any) -> bool:
    """A ready strategy (not a class or a function that makes one)."""
    return isinstance(found, Strategy) and not isinstance(found, type)


def _strategy_factory(name: str) -> Any:
    if ":" in name:
        return _import(name, "strategy")
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown reset strategy {name!r}; known: {', '.join(STRATEGIES)} (or "
            "`package.module:attribute` for your own)"
        )
    return STRATEGIES[name]


def _members(name: str) -> list[str]:
    members = [m.strip() for m in name.split("+")]
    if any(not m for m in members):
        raise ValueError(
            f"reset strategy {name!r} has an empty member; compose named strategies with '+', "
            "e.g. 'regrama+shrink_perturb'"
        )
    return members


def strategy(name: str, **options: Any) -> Strategy:
    """The strategy preset `name` with `options` (each must be one the preset takes).

    `"a+b"` composes presets into a [`Chain`][neurosurgery.Chain] acting in that order; each
    option goes to every member that takes it (`every` to all that have a schedule), and an
    option no member takes is refused."""
    if "+" in name:
        members = _members(name)
        takes = {m: strategy_options(m) for m in members}
        unknown = sorted(k for k in options if not any(k in t for t in takes.values()))
        if unknown:
            listed = "; ".join(f"{m}: {', '.join(t) or 'none'}" for m, t in takes.items())
            raise ValueError(
                f"option(s) {', '.join(unknown)} apply to no member of {name}; their options "
                f"are {listed}"
            )
        return Chain(
            tuple(
                strategy(m, **{k: v for k, v in options.items() if k in takes[m]}) for m in members
            ),
        )
    factory = _strategy_factory(name)
    if _is_instance(factory):
        if options:
            raise ValueError(
                f"strategy {name!r} is a ready strategy; it takes no options "
                f"({', '.join(sorted(options))} given)"
            )
        check_step(factory, f"strategy {name!r}")
        return factory
    known = strategy_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to the {name} strategy; its options "
            f"are {', '.join(known) or 'none'}"
        )
    made = factory(**options)
    if not isinstance(made, Strategy):
        raise ValueError(f"strategy {name!r} made {made!r}, which is not a strategy")
    check_step(made, f"strategy {name!r}")
    return made
