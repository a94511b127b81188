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
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _methods, _metrics
from ._methods._chain import Chain
from ._methods._strategy import Strategy, check_step
from ._metrics import Metric
from ._registry import METHODS
from ._registry import METRICS as _METRICS


def _import_every_module(package: Any) -> None:
    """Import each module of a package, so that every metric and method defined there has
    registered itself: adding one is adding its file."""
    for found in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{found.name}")


_import_every_module(_metrics)
_import_every_module(_methods)

#: metrics by name (each one's `name` is its key); each metric registers itself where it is
#: defined (`register_metric`)
METRICS: dict[str, Callable[[], Metric]] = _METRICS


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


#: strategy presets by name: each takes keyword options (see `strategy_options`); each method
#: registers itself where it is defined (`register_method`)
STRATEGIES: dict[str, Callable[..., Strategy]] = METHODS


def strategy_options(name: str) -> dict[str, Any]:
    """The options a named strategy takes, with their defaults (for a composition `a+b`, every
    option a member takes, with the first member's default)."""
    if "+" in name:
        merged: dict[str, Any] = {}
        for member in _members(name):
            for k, v in strategy_options(member).items():
                merged.setdefault(k, v)
        return merged
    factory = strategy_factory(name)
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


def strategy_factory(name: str) -> Any:
    """What the single (not `+`-composed) strategy name names: a registered method's
    function, or the attribute `"package.module:attribute"` imports."""
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
    factory = strategy_factory(name)
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
