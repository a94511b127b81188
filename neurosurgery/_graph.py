"""The traced program of a model, flattened into one list of operations.

JAX nests programs: `jax.jit`-decorated functions (`jax.nn.relu`, `jax.nn.mish`, ...) and custom
derivative rules appear as call operations that hold a sub-program. The anatomy must see through
them, so this module inlines every call into one flat graph of numbered values, while remembering
where each value lives in the nested program so that probes can be placed back at the same spot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

# Call-like primitives whose sub-program is inlined. Control flow (cond, while, scan) is not a call:
# it stays one operation and the tracer decides whether it can follow it.
_CALL_JAXPR_PARAM = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}

#: Prefix of the name given to the call that wraps a module which declares its own neuron groups.
DECLARED_PREFIX = "__neurosurgery_declared_"


@dataclasses.dataclass(frozen=True)
class Const:
    """A literal or closed-over constant operand."""

    value: np.ndarray


@dataclasses.dataclass
class Op:
    """One primitive application in the flat graph."""

    primitive: jcore.Primitive
    params: dict[str, Any]
    inputs: list[int | Const]
    outputs: list[int]
    site: tuple[int, ...]
    source: str

    @property
    def name(self) -> str:
        return self.primitive.name


@dataclasses.dataclass
class Graph:
    """A flat program: values are numbered; `ops` are in execution order."""

    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int | Const]
    # (site, var) -> value id, for every variable of the nested program, to place probes.
    where: dict[tuple[tuple[int, ...], jcore.Var], int]
    closed: jcore.ClosedJaxpr
    out_tree: Any


def _call_jaxpr(eqn: jcore.JaxprEqn) -> jcore.ClosedJaxpr | jcore.Jaxpr | None:
    name = eqn.primitive.name
    key = _CALL_JAXPR_PARAM.get(name)
    if key is None or key not in eqn.params:
        return None
    if name in ("jit", "pjit") and str(eqn.params.get("name", "")).startswith(DECLARED_PREFIX):
        return None
    return eqn.params[key]


def _source(eqn: jcore.JaxprEqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - source info is best effort
        return "<unknown location>"


def build_graph(fn: Callable[..., Any], flat_args: Sequence[Any]) -> Graph:
    """Trace `fn(*flat_args)` and inline every call into one flat graph."""
    closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*flat_args)
    shapes: list[tuple[int, ...]] = []
    dtypes: list[np.dtype] = []
    ops: list[Op] = []
    where: dict[tuple[tuple[int, ...], jcore.Var], int] = {}

    def new_value(aval: Any) -> int:
        shapes.append(tuple(int(d) for d in aval.shape))
        dtypes.append(np.dtype(aval.dtype) if hasattr(aval, "dtype") else np.dtype("float32"))
        return len(shapes) - 1

    def read(env: dict, atom: Any) -> int | Const:
        if isinstance(atom, jcore.Literal):
            return Const(np.asarray(atom.val))
        return env[atom]

    def walk(jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: list[int | Const], site: tuple):
        env: dict[Any, int | Const] = {}
        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = Const(np.asarray(const))
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
            if isinstance(arg, int):
                where[(site, var)] = arg
        for index, eqn in enumerate(jaxpr.eqns):
            inner_site = (*site, index)
            inputs = [read(env, v) for v in eqn.invars]
            sub = _call_jaxpr(eqn)
            if sub is not None:
                if isinstance(sub, jcore.ClosedJaxpr):
                    outs = walk(sub.jaxpr, sub.consts, inputs, inner_site)
                else:
                    outs = walk(sub, (), inputs, inner_site)
            else:
                outs = [new_value(v.aval) for v in eqn.outvars]
                ops.append(
                    Op(eqn.primitive, dict(eqn.params), inputs, outs, inner_site, _source(eqn))
                )
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
                if isinstance(out, int):
                    where[(site, var)] = out
        return [read(env, v) for v in jaxpr.outvars]

    inputs = [new_value(v.aval) for v in closed.jaxpr.invars]
    outputs = walk(closed.jaxpr, closed.consts, list(inputs), ())
    out_tree = jax.tree_util.tree_structure(out_shapes)
    return Graph(shapes, dtypes, ops, inputs, outputs, where, closed, out_tree)


def evaluate(
    graph: Graph,
    flat_args: Sequence[Any],
    edit: Callable[[int, Any], Any],
    watched: frozenset[int],
) -> list[Any]:
    """Run the traced program again, letting `edit(value_id, value)` replace watched values.

    Calls whose sub-program holds no watched value run as they are (their custom derivative rules
    kept); the others are inlined so that the edit happens at the right place.
    """
    edited: set[int] = set()
    watched_sites = {site for (site, _), vid in graph.where.items() if vid in watched}

    def holds_watched(site: tuple[int, ...]) -> bool:
        n = len(site)
        return any(len(s) > n and s[:n] == site for s in watched_sites)

    def run(jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any], site: tuple):
        env: dict[Any, Any] = {}

        def write(var: Any, value: Any) -> None:
            if isinstance(var, jcore.Var) and not isinstance(var, jcore.Literal):
                vid = graph.where.get((site, var))
                # A value crossing a call boundary has several names; edit it once.
                if vid is not None and vid in watched and vid not in edited:
                    edited.add(vid)
                    value = edit(vid, value)
                env[var] = value

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, jcore.Literal) else env[atom]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = const
        for var, arg in zip(jaxpr.invars, args, strict=True):
            write(var, arg)
        for index, eqn in enumerate(jaxpr.eqns):
            inner_site = (*site, index)
            invals = [read(v) for v in eqn.invars]
            sub = _call_jaxpr(eqn)
            if sub is not None and holds_watched(inner_site):
                if isinstance(sub, jcore.ClosedJaxpr):
                    outvals = run(sub.jaxpr, sub.consts, invals, inner_site)
                else:
                    outvals = run(sub, (), invals, inner_site)
            else:
                subfuns, bind_params = eqn.primitive.get_bind_params(eqn.params)
                outvals = eqn.primitive.bind(*subfuns, *invals, **bind_params)
                if not eqn.primitive.multiple_results:
                    outvals = [outvals]
            for var, val in zip(eqn.outvars, outvals, strict=True):
                write(var, val)
        return [read(v) for v in jaxpr.outvars]

    closed = graph.closed
    return run(closed.jaxpr, closed.consts, list(flat_args), ())
