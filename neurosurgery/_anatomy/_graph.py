"""The traced program of a model, flattened into one list of operations.

JAX nests programs: `jax.jit`-decorated functions (`jax.nn.relu`, `jax.nn.mish`, ...), custom
derivative rules and `jax.checkpoint` appear as call operations that hold a sub-program. The
anatomy must see through them, so this module inlines every call into one flat graph of numbered
values, while remembering where each value lives in the nested program so that probes can be
placed back at the same spot. Control flow (`scan`, `while`, `cond`) is not a call: it stays one
operation whose bodies are flat sub-graphs with values of their own, so that the tracer can follow
units through every iteration and the evaluator can probe inside a scan, iteration by iteration.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

# Call-like primitives whose sub-program is inlined.
_CALL_JAXPR_PARAM = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
#: control flow whose bodies become sub-graphs
CONTROL = ("scan", "while", "cond")

#: Prefix of the name given to the call that wraps a module which declares its own neuron groups.
DECLARED_PREFIX = "__neurosurgery_declared_"


@dataclasses.dataclass(frozen=True)
class Const:
    """A literal or closed-over constant operand (a jax array for PRNG keys)."""

    value: Any


@dataclasses.dataclass
class Body:
    """A sub-program of a control-flow operation: its own input values, outputs and operations."""

    inputs: list[int]
    outputs: list[int | Const]
    ops: list[Op]


@dataclasses.dataclass
class Op:
    """One primitive application in the flat graph."""

    primitive: jcore.Primitive
    params: dict[str, Any]
    inputs: list[int | Const]
    outputs: list[int]
    site: tuple[int, ...]
    source_info: Any
    bodies: list[Body] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.primitive.name

    @property
    def source(self) -> str:
        """Where the operation was written: the innermost frame outside JAX and, where that is
        inside a library (Equinox, diffrax, ...), the line of the user's own code that called
        it (the first frame outside those libraries and this package). Read only for messages."""
        return _source(self.source_info)


@dataclasses.dataclass
class Graph:
    """A flat program: values are numbered in program order; `ops` are the top-level operations.

    `loops[v]` holds the lengths of the scans around value `v` (outermost first); `hidden[v]` says
    why a value cannot be observed (it lives in a `while` body or a `cond` branch).
    """

    shapes: list[tuple[int, ...]]
    dtypes: list[Any]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int | Const]
    defs: dict[tuple[tuple[int, ...], jcore.Var], int]  # where each value is defined
    site_of: dict[int, tuple[int, ...]]
    loops: dict[int, tuple[int, ...]]
    hidden: dict[int, str]
    uses: list[int]
    closed: jcore.ClosedJaxpr
    out_tree: Any

    def all_ops(self) -> list[Op]:
        """Every operation, bodies included, in program order."""
        out: list[Op] = []

        def visit(ops: list[Op]) -> None:
            for op in ops:
                out.append(op)
                for body in op.bodies:
                    visit(body.ops)

        visit(self.ops)
        return out


#: library primitives with no rule of their own here, followed through the standard operations
#: their implementation runs (Equinox's loop buffers, which diffrax's solvers write to)
_INLINED = {"maybe_set", "select_if_vmap"}


def _inlined(eqn: jcore.JaxprEqn) -> jcore.ClosedJaxpr | None:
    if eqn.primitive.name not in _INLINED or getattr(eqn.primitive, "impl", None) is None:
        return None
    impl = functools.partial(eqn.primitive.impl, **eqn.params)
    multiple = eqn.primitive.multiple_results
    return jax.make_jaxpr(lambda *a: impl(*a) if multiple else [impl(*a)])(
        *[v.aval for v in eqn.invars]
    )


def _call_jaxpr(eqn: jcore.JaxprEqn) -> jcore.ClosedJaxpr | jcore.Jaxpr | None:
    name = eqn.primitive.name
    key = _CALL_JAXPR_PARAM.get(name)
    if key is None or key not in eqn.params:
        return None
    if name in ("jit", "pjit") and str(eqn.params.get("name", "")).startswith(DECLARED_PREFIX):
        return None
    return eqn.params[key]


def bind(primitive: jcore.Primitive, params: Mapping[str, Any], args: Sequence[Any]) -> Any:
    """Apply `primitive` with an equation's `params` to `args`, as `jax.core.eval_jaxpr` does.

    `Primitive.get_bind_params` returns `(subfuns, params)` up to JAX 0.9.1, and from 0.9.2 on
    the params alone, with any sub-functions among them (`subfuns`); both are handled here.
    """
    bound = primitive.get_bind_params(params)
    if isinstance(bound, tuple):
        subfuns, bound = bound
        return primitive.bind(*subfuns, *args, **bound)
    return primitive.bind(*args, **bound)


def _bodies(eqn: jcore.JaxprEqn) -> list[tuple[jcore.ClosedJaxpr, str]]:
    """The sub-programs of a control-flow operation, each with its kind."""
    name = eqn.primitive.name
    if name == "scan":
        return [(eqn.params["jaxpr"], "scan")]
    if name == "while":
        return [(eqn.params["cond_jaxpr"], "while"), (eqn.params["body_jaxpr"], "while")]
    if name == "cond":
        return [(b, "cond") for b in eqn.params["branches"]]
    return []


#: packages whose frames are not the user's code (JAX's own are left out by JAX)
_LIBRARIES = ("equinox", "diffrax", "lineax", "optimistix", "jaxtyping", "neurosurgery", "optax")


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    dirs = []
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.realpath(folder), ""))
    return tuple(dirs)


def _frame_text(frame: Any) -> str:
    return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"


def _source(source_info: Any) -> str:
    try:
        from jax._src import source_info_util

        frames = list(source_info_util.user_frames(source_info.traceback))
    except Exception:  # pragma: no cover - source info is best effort
        return "<unknown location>"
    if not frames:
        return "<unknown location>"
    libraries = _library_dirs()
    mine = next(
        (f for f in frames if not os.path.realpath(f.file_name).startswith(libraries)), None
    )
    if mine is None or mine is frames[0]:
        return _frame_text(frames[0])
    return f"{_frame_text(frames[0])}, called from {_frame_text(mine)}"


def _const(value: Any) -> Any:
    try:
        return np.asarray(value)
    except (TypeError, ValueError):  # PRNG key arrays stay jax arrays
        return value


def build_graph(fn: Callable[..., Any], flat_args: Sequence[Any]) -> Graph:
    """Trace `fn(*flat_args)` and inline every call into one flat graph."""
    closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*flat_args)
    shapes: list[tuple[int, ...]] = []
    dtypes: list[Any] = []
    defs: dict[tuple[tuple[int, ...], jcore.Var], int] = {}
    loops: dict[int, tuple[int, ...]] = {}
    hidden: dict[int, str] = {}

    def new_value(aval: Any, loop: tuple[int, ...], why: str) -> int:
        shapes.append(tuple(int(d) for d in getattr(aval, "shape", ())))
        dtypes.append(getattr(aval, "dtype", np.dtype("float32")))
        vid = len(shapes) - 1
        if loop:
            loops[vid] = loop
        if why:
            hidden[vid] = why
        return vid

    def read(env: dict, atom: Any) -> int | Const:
        if isinstance(atom, jcore.Literal):
            return Const(_const(atom.val))
        return env[atom]

    def walk(jaxpr, consts, args, site, ops, loop, why):
        env: dict[Any, int | Const] = {}
        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = Const(_const(const))
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        for index, eqn in enumerate(jaxpr.eqns):
            inner = (*site, index)
            inputs = [read(env, v) for v in eqn.invars]
            sub = _call_jaxpr(eqn) or _inlined(eqn)
            if sub is not None:
                if isinstance(sub, jcore.ClosedJaxpr):
                    outs = walk(sub.jaxpr, sub.consts, inputs, inner, ops, loop, why)
                else:
                    outs = walk(sub, (), inputs, inner, ops, loop, why)
            else:
                outs = [new_value(v.aval, loop, why) for v in eqn.outvars]
                bodies = []
                for k, (body, kind) in enumerate(_bodies(eqn)):
                    b_site = (*inner, -(k + 1))
                    b_loop = (*loop, int(eqn.params["length"])) if kind == "scan" else loop
                    b_why = why or ("" if kind == "scan" else kind)
                    b_in = [new_value(v.aval, b_loop, b_why) for v in body.jaxpr.invars]
                    for var, vid in zip(body.jaxpr.invars, b_in, strict=True):
                        defs[(b_site, var)] = vid
                    b_ops: list[Op] = []
                    b_out = walk(body.jaxpr, body.consts, b_in, b_site, b_ops, b_loop, b_why)
                    bodies.append(Body(b_in, b_out, b_ops))
                ops.append(
                    Op(
                        eqn.primitive,
                        dict(eqn.params),
                        inputs,
                        outs,
                        inner,
                        eqn.source_info,
                        bodies,
                    )
                )
                for var, out in zip(eqn.outvars, outs, strict=True):
                    defs[(site, var)] = out
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
        return [read(env, v) for v in jaxpr.outvars]

    inputs = [new_value(v.aval, (), "") for v in closed.jaxpr.invars]
    for var, vid in zip(closed.jaxpr.invars, inputs, strict=True):
        defs[((), var)] = vid
    top: list[Op] = []
    outputs = walk(closed.jaxpr, closed.consts, list(inputs), (), top, (), "")
    site_of = {vid: site for (site, _), vid in defs.items()}
    out_tree = jax.tree_util.tree_structure(out_shapes)
    graph = Graph(
        shapes, dtypes, top, inputs, outputs, defs, site_of, loops, hidden, [], closed, out_tree
    )
    uses = [0] * len(shapes)
    for op in graph.all_ops():
        for atom in op.inputs:
            if isinstance(atom, int):
                uses[atom] += 1
        for body in op.bodies:
            for atom in body.outputs:
                if isinstance(atom, int):
                    uses[atom] += 1
    for atom in outputs:
        if isinstance(atom, int):
            uses[atom] += 1
    graph.uses = uses
    return graph


def _inside(site: tuple[int, ...], prefix: tuple[int, ...]) -> bool:
    """Whether a value defined in the (sub-)program at `site` lies within `prefix`'s."""
    return len(site) >= len(prefix) and site[: len(prefix)] == prefix


def evaluate(
    graph: Graph,
    flat_args: Sequence[Any],
    perturb: Mapping[int, Any],
    record: Collection[int] = (),
) -> tuple[list[Any], dict[int, Any]]:
    """Run the traced program again, adding `perturb[v]` to value `v` and recording the values
    in `record` (after their perturbation).

    A value inside a scan body takes a perturbation with the scan's iterations as leading axes
    and is recorded the same way. Calls whose sub-program holds no watched value run as they are
    (their custom derivative rules kept); the others are inlined so that the edit happens at the
    right place.
    """
    record = frozenset(record)
    watched = set(perturb) | record
    watched_sites = {graph.site_of[v] for v in watched}

    def holds(site: tuple[int, ...]) -> bool:
        return any(_inside(s, site) for s in watched_sites)

    def run(jaxpr, consts, args, site, pert, acts):
        env: dict[Any, Any] = {}

        def write(var: Any, value: Any) -> None:
            vid = graph.defs.get((site, var))
            if vid is not None and vid in watched:
                if vid in pert:
                    value = value + pert[vid].astype(value.dtype)
                if vid in record:
                    acts[vid] = value
            env[var] = value

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, jcore.Literal) else env[atom]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = const
        for var, arg in zip(jaxpr.invars, args, strict=True):
            write(var, arg)
        for index, eqn in enumerate(jaxpr.eqns):
            inner = (*site, index)
            invals = [read(v) for v in eqn.invars]
            sub = _call_jaxpr(eqn)
            if sub is not None and holds(inner):
                if isinstance(sub, jcore.ClosedJaxpr):
                    outvals = run(sub.jaxpr, sub.consts, invals, inner, pert, acts)
                else:
                    outvals = run(sub, (), invals, inner, pert, acts)
                for var, val in zip(eqn.outvars, outvals, strict=True):
                    env[var] = val
                continue
            if eqn.primitive.name == "scan" and holds(inner):
                outvals = scan(eqn, invals, inner, pert, acts)
            else:
                outvals = bind(eqn.primitive, eqn.params, invals)
                if not eqn.primitive.multiple_results:
                    outvals = [outvals]
            for var, val in zip(eqn.outvars, outvals, strict=True):
                write(var, val)
        return [read(v) for v in jaxpr.outvars]

    def scan(eqn, invals, site, pert, acts):
        p = eqn.params
        body, n_consts, n_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
        consts = invals[:n_consts]
        init, xs = invals[n_consts : n_consts + n_carry], invals[n_consts + n_carry :]
        b_site = (*site, -1)
        inner_pert = {v: x for v, x in pert.items() if _inside(graph.site_of[v], b_site)}
        inner_rec = [v for v in record if _inside(graph.site_of[v], b_site)]

        def step(carry, x):
            x_slices, p_slices = x
            got: dict[int, Any] = {}
            outs = run(body.jaxpr, body.consts, [*consts, *carry, *x_slices], b_site, p_slices, got)
            return outs[:n_carry], (outs[n_carry:], {v: got[v] for v in inner_rec})

        carry, (ys, got) = jax.lax.scan(
            step,
            list(init),
            (list(xs), inner_pert),
            length=p["length"],
            reverse=p["reverse"],
            unroll=p["unroll"],
        )
        acts.update(got)
        return [*carry, *ys]

    closed = graph.closed
    acts: dict[int, Any] = {}
    outs = run(closed.jaxpr, closed.consts, list(flat_args), (), dict(perturb), acts)
    return outs, acts
