"""Control flow: units followed through every iteration of a scan, to a fixed point through a
while loop, and through every branch of a cond.

A scan body is traced once per iteration, with the carry's labels of the previous iteration and
that iteration's slice of the scanned inputs, so a stack of layers sliced by the scan (each
iteration reads other weight entries) and a recurrent cell (the carry's units feed the same
weight again) are both followed exactly. Once an iteration starts from what the previous one
started from, every later one repeats it and is not traced again. Each body value keeps its
labels per iteration, so that a probe inside the body can be laid out iteration by iteration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import AnatomyError
from ._graph import Body, Op
from ._labels import lift
from ._trace_core import Value
from ._trace_struct import StructOps


def signature(values: list[Value]) -> tuple:
    """What the tracer's result depends on, for comparing the inputs of two iterations."""
    out: list[Any] = []
    for v in values:
        units = tuple(sorted((f.shape, f.tobytes()) for f in v.units))
        params = tuple((p.leaf, tuple((m.shape, m.tobytes()) for m in p.maps)) for p in v.params)
        const = None
        if v.const is not None:
            c = np.asarray(v.const) if not hasattr(v.const, "dtype") else v.const
            try:
                const = (np.shape(c), np.asarray(c).tobytes())
            except (TypeError, ValueError):
                const = id(v.const)
        out.append((units, params, v.dep_input, v.dep_param, const, v.pstats))
    return tuple(out)


def _take(a: np.ndarray, i: int) -> np.ndarray:
    return a[i] if a.shape[0] > 1 else a[0]


class FlowOps(StructOps):
    """scan, while, cond."""

    def control(self, op: Op, ins: list[Value]) -> None:
        if op.name == "scan":
            return self.scan(op, ins)
        if op.name == "while":
            return self.while_loop(op, ins)
        return self.cond(op, ins)

    # ---- scan --------------------------------------------------------------------------------
    def iteration(self, v: Value, i: int) -> Value:
        """The slice that iteration `i` of a scan reads from a scanned input."""
        const = None
        if v.const is not None:
            const = v.const[i]
        params = []
        for p in v.params:
            maps = tuple(_take(lift(m, 1), i) for m in p.maps)
            params.append(p.moved(maps, {a: a - 1 for a in range(1, 64)}))
        return Value(
            units=[_take(f, i) for f in v.units],
            params=params,
            dep_input=v.dep_input,
            dep_param=v.dep_param,
            const=const,
            pstats=v.pstats,
        )

    def carried(self, v: Value, state: bool = False) -> Value:
        """A value entering a body (no longer a layer's fresh output). A floating-point loop
        state counts as computed from the input even where it starts as a constant (a zero
        hidden state): what the body does to it is what it does at every later iteration."""
        out = Value(v.units, v.params, v.dep_input, v.dep_param, v.const, v.pstats)
        if state and v.const is not None and np.issubdtype(np.asarray(v.const).dtype, np.inexact):
            out.const, out.dep_input = None, True
        return out

    def stacked(self, per_iter: list[Value], ndim: int) -> Value:
        """Per-iteration outputs stacked along a new leading axis."""
        first = per_iter[0]
        same = all(signature([v]) == signature([first]) for v in per_iter[1:])
        if same:
            units = [f[None] for f in first.units]
        else:
            units = []
            for i, v in enumerate(per_iter):
                for f in v.units:
                    f = lift(f, ndim - 1)
                    row = np.full((len(per_iter), *f.shape), -1, np.int32)
                    row[i] = f
                    units.append(row)
        consts = [v.const for v in per_iter]
        const = (
            np.stack([np.asarray(c) for c in consts])
            if all(c is not None for c in consts)
            else None
        )
        params = []
        if same:
            shift = {a: a + 1 for a in range(64)}
            params = [p.moved(tuple(m[None] for m in p.maps), shift) for p in first.params]
        pstats = frozenset().union(*(v.pstats for v in per_iter))
        if not same and any(v.params for v in per_iter):
            pstats |= frozenset(p.leaf for v in per_iter for p in v.params if p.leaf >= 0)
        return Value(
            units=self.normal(units, ndim),
            params=params,
            dep_input=any(v.dep_input for v in per_iter),
            dep_param=any(v.dep_param for v in per_iter),
            const=const,
            pstats=pstats,
            kind="pass",
        )

    def body_values(self, body: Body) -> list[int]:
        out = list(body.inputs)
        for op in body.ops:
            out += op.outputs
            for b in op.bodies:
                out += self.body_values(b)
        return out

    def repeat(self, body: Body, src: tuple[int, ...], dst: tuple[int, ...]) -> None:
        """Give iteration `dst` the labels traced for iteration `src`."""
        n = len(src)
        for vid in self.body_values(body):
            snaps = self.snaps.get(vid, {})
            for index, v in list(snaps.items()):
                if index[:n] == src:
                    snaps[dst + index[n:]] = v

    def scan(self, op: Op, ins: list[Value]) -> None:
        p = op.params
        length, n_consts, n_carry = int(p["length"]), p["num_consts"], p["num_carry"]
        body = op.bodies[0]
        consts = ins[:n_consts]
        carry = [self.carried(v, state=True) for v in ins[n_consts : n_consts + n_carry]]
        xs = ins[n_consts + n_carry :]
        steady = all(
            all(f.shape[0] == 1 for f in x.units)
            and all(m.shape[0] == 1 for pf in x.params for m in pf.maps)
            and x.const is None
            for x in xs
        )
        order = list(range(length - 1, -1, -1)) if p["reverse"] else list(range(length))
        ys: list[list[Value] | None] = [None] * length
        outer = self.loop_index
        prev, last = None, None
        for step, i in enumerate(order):
            x_i = [self.iteration(x, i) for x in xs]
            sig = signature(carry + x_i)
            if steady and sig == prev and last is not None:
                for j in order[step:]:
                    ys[j] = ys[last]
                    self.repeat(body, (*outer, last), (*outer, j))
                break
            self.loop_index = (*outer, i)
            inputs = [*(self.carried(c) for c in consts), *carry, *x_i]
            for vid, v in zip(body.inputs, inputs, strict=True):
                self.set(vid, v)
            self.run_ops(body.ops)
            outs = [self.value(a) for a in body.outputs]
            carry = [self.carried(v, state=True) for v in outs[:n_carry]]
            ys[i] = outs[n_carry:]
            prev, last = sig, i
        self.loop_index = outer
        for vid, v in zip(op.outputs[:n_carry], carry, strict=True):
            self.set(vid, v)
        for k, vid in enumerate(op.outputs[n_carry:]):
            per_iter = [y[k] for y in ys if y is not None]
            self.set(vid, self.stacked(per_iter, len(self.graph.shapes[vid])))

    # ---- while and cond ---------------------------------------------------------------------
    def join(self, values: list[Value], ndim: int, op: Op) -> Value:
        """A value that may be any of `values` (a loop's carry, a cond's branches)."""
        units = [lift(f, ndim) for v in values for f in v.units]
        for i, a in enumerate(values):
            for b in values[i + 1 :]:
                for fa in a.units:
                    for fb in b.units:
                        self.meet("either", lift(fa, ndim), lift(fb, ndim), op)
        first = values[0]
        same = all(signature([v])[0][1] == signature([first])[0][1] for v in values)
        consts_same = all(signature([v])[0][4] == signature([first])[0][4] for v in values)
        dep_input = any(v.dep_input for v in values)
        return Value(
            units=self.normal(units, ndim),
            params=first.params if same and not dep_input else [],
            dep_input=dep_input,
            dep_param=any(v.dep_param for v in values) and not dep_input,
            const=first.const if consts_same else None,
            pstats=frozenset().union(*(v.pstats for v in values)),
            kind="pass",
        )

    def while_loop(self, op: Op, ins: list[Value]) -> None:
        p = op.params
        n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
        body = op.bodies[1]
        body_consts, init = ins[n_cond : n_cond + n_body], ins[n_cond + n_body :]
        shapes = [self.graph.shapes[v] for v in op.outputs]
        carry = [self.carried(v, state=True) for v in init]
        for _ in range(64):
            inputs = [*(self.carried(c) for c in body_consts), *carry]
            for vid, v in zip(body.inputs, inputs, strict=True):
                self.set(vid, v)
            self.run_ops(body.ops)
            outs = [self.value(a) for a in body.outputs]
            new = [
                self.carried(self.join([a, b], len(s), op), state=True)
                for a, b, s in zip(init, outs, shapes, strict=True)
            ]
            if signature(new) == signature(carry):
                break
            carry = new
        else:  # pragma: no cover - labels are finite, so the loop settles
            raise AnatomyError(f"The units of {self.where(op)} do not settle.")
        for vid, v in zip(op.outputs, carry, strict=True):
            self.set(vid, v)

    def cond(self, op: Op, ins: list[Value]) -> None:
        index, operands = ins[0], ins[1:]
        if index.units:
            raise self.cannot_follow(op, index.units, "chooses a branch from their values")
        branches = range(len(op.bodies))
        if index.const is not None:
            k = int(np.clip(int(np.asarray(index.const).reshape(-1)[0]), 0, len(op.bodies) - 1))
            branches = [k]
        results = []
        for k in branches:
            body = op.bodies[k]
            for vid, v in zip(body.inputs, operands, strict=True):
                self.set(vid, self.carried(v))
            self.run_ops(body.ops)
            results.append([self.value(a) for a in body.outputs])
        for j, vid in enumerate(op.outputs):
            self.set(vid, self.join([r[j] for r in results], len(self.graph.shapes[vid]), op))
