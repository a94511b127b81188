"""The names metrics and reset methods answer to, declared where each is defined.

A metric class registers itself with [`register_metric`][neurosurgery.register_metric] (its
name, and the names of variants built with other options); a reset method registers the
function that builds it from keyword options with
[`register_method`][neurosurgery.register_method]. `ns.metric(name)`, `ns.strategy(name)`,
the command line's `--surgery.metrics` and `--reset.method`, the options `--reset.*` and their
help, and the docs' tables all read these two registries.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

#: metrics by name: each makes the metric with that `name`
METRICS: dict[str, Callable[[], Any]] = {}
#: reset methods by name: each makes the strategy from keyword options
METHODS: dict[str, Callable[..., Any]] = {}

_WHERE: dict[tuple[str, str], str] = {}

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Option(NamedTuple):
    """One keyword option of a registered method: its default, type and help."""

    default: Any
    annotation: Any
    help: str


def _where(thing: Any) -> str:
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', repr(thing))}"


def _claim(kind: str, name: str, thing: Any) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            f"{kind} name {name!r} ({_where(thing)}) is not a lower-case identifier; names are "
            "what the command line and study files write, e.g. 'my_metric'"
        )
    where = _where(thing)
    before = _WHERE.get((kind, name))
    if before is not None and before != where:
        raise ValueError(
            f"{kind} name {name!r} is registered twice: by {before} and by {where}; choose "
            "another name for one of them"
        )
    _WHERE[(kind, name)] = where


def register_metric(name: str, /, **variants: dict[str, Any]) -> Callable[[T], T]:
    """Class decorator: the metric class answers to `name` (built with its defaults) and to
    each variant's name (built with that variant's options), e.g.

    ```python
    @ns.register_metric("grama", grama_activation={"source": "activation"})
    @dataclasses.dataclass(frozen=True)
    class GraMa: ...
    ```

    Each built metric's `name` must be the name it is registered under (scores and logs are
    keyed by it); a name already taken by another class is refused."""

    def add(cls: T) -> T:
        for key, options in {name: {}, **variants}.items():
            _claim("metric", key, cls)
            made = cls(**options)  # type: ignore[operator]
            if getattr(made, "name", None) != key:
                raise ValueError(
                    f"metric {key!r}: {_where(cls)}(**{options!r}) is named "
                    f"{getattr(made, 'name', None)!r}; a registered metric's `name` is the name "
                    "it is registered under"
                )
            METRICS[key] = functools.partial(cls, **options)  # type: ignore[arg-type]
        return cls

    return add


def register_method(name: str, /) -> Callable[[F], F]:
    """Decorator of the function that builds a reset method from keyword options: the method
    answers to `name` in `ns.strategy(name, ...)` and `--reset.method name`, and its options
    are the function's keyword parameters, each documented in the docstring's `Args:` section
    (that text is the option's help on the command line). An option without help, or a name
    already taken, is refused."""

    def add(factory: F) -> F:
        _claim("method", name, factory)
        method_options(factory, name)
        METHODS[name] = factory
        return factory

    return add


def _args_section(doc: str) -> dict[str, str]:
    """`name: text` entries of a Google-style docstring's `Args:` section."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Args:")
    except StopIteration:
        return {}
    found: dict[str, str] = {}
    current = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or (depth == 0 and line.rstrip().endswith(":")):
            break
        match = re.match(r"\s*(\w+)(?: \([^)]*\))?:\s*(.*)", line)
        if depth == indent and match:
            current = match.group(1)
            found[current] = match.group(2).strip()
        elif current is not None:
            found[current] = f"{found[current]} {line.strip()}".strip()
    return found


def method_options(factory: Callable[..., Any], name: str | None = None) -> dict[str, Option]:
    """The keyword options of a method-building function, with their defaults, types and help
    (from its docstring's `Args:` section). With `name` (registration), an option without help
    is refused."""
    helps = _args_section(factory.__doc__ or "")
    found: dict[str, Option] = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        if name is not None and p.name not in helps:
            raise ValueError(
                f"method {name!r} ({_where(factory)}): option {p.name!r} has no help; document "
                "it in the docstring's `Args:` section (`name: what it does`)"
            )
        found[p.name] = Option(p.default, p.annotation, helps.get(p.name, ""))
    return found
