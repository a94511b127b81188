"""Structural operations: they move labels (units and parameter entries) without computing.

Reshapes, transposes, slices, concatenations, pads and constant gathers move each element's
labels with it. Indices computed from the input are followed where the labels they select among
are all the same (a token chosen from a sequence of positions); a parameter read at such indices
is a lookup table and creates units (`DenseOps.lookup`). Window reductions (pooling) and
operations along one axis (cumulative sums, sorting) are followed along axes where the labels do
not change, which is where a CNN pools: over positions, within each channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _labels as L
from ._graph import Op
from ._trace_core import PFactor, Value, params_leaves
from ._trace_dense import DenseOps, slices_along, unlabelled_along

UPDATES = {"dynamic_update_slice", "scatter", "scatter-add", "scatter_add", "scatter-mul"}
UPDATES |= {"scatter-min", "scatter-max"}
STRUCTURAL = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "rev"}
STRUCTURAL |= {"slice", "pad", "split", "concatenate", "dynamic_slice", "gather"} | UPDATES
# one primitive each for `jnp.stack`, `jnp.unstack` (from JAX 0.10) and `jnp.tile` (from 0.9)
STRUCTURAL |= {"stack", "unstack", "tile"}
#: operations that join their operands (all of them move into the result)
JOINS = ("concatenate", "stack")
MOVES = {"reshape", "transpose", "squeeze", "expand_dims", "split", "slice", "rev", "unstack"}
WINDOWS = {"reduce_window_max", "reduce_window_min", "reduce_window_sum"}
ALONG_AXIS = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "sort", "top_k", "fft"}


def _scalar(c: Any) -> int | None:
    return None if c is None else int(np.asarray(c).reshape(-1)[0])


def axis_map(op: Op, src: Sequence[Any], dst: Sequence[Any]) -> dict[int, int]:
    """Where each axis of the moved operand goes in the result (absent: merged or split)."""
    name, p = op.name, op.params
    if name in ("reshape", "squeeze", "expand_dims"):
        return {
            int(ins[0]): int(outs[0])
            for ins, outs in L._blocks(src, dst)
            if len(ins) == 1 and len(outs) == 1 and src[ins[0]] == dst[outs[0]]
        }
    if name == "transpose":
        return {int(a): i for i, a in enumerate(p["permutation"])}
    if name == "broadcast_in_dim":
        return {i: int(d) for i, d in enumerate(p["broadcast_dimensions"])}
    if name == "gather":
        return {}
    if name == "unstack":
        axis = p["axis"]
        return {d: d - (d > axis) for d in range(len(src)) if d != axis}
    return {d: d for d in range(len(src))}


class StructOps(DenseOps):
    """Label moves."""

    def structural(self, op: Op, ins: list[Value]) -> None:
        name = op.name
        if name in UPDATES:
            return self.update(op, ins)
        moved = tuple(range(len(ins))) if name in JOINS else (0,)
        index_ops = [] if name in ("pad", *JOINS) else list(range(1, len(ins)))
        for i in index_ops:
            if ins[i].units:
                raise self.cannot_follow(
                    op, ins[i].units, "uses them as indices, so what it selects depends on them"
                )
        if name == "pad" and ins[1].units:
            raise self.cannot_follow(op, ins[1].units, "pads with a value carrying units")
        dep_input = any(v.dep_input for v in ins)
        dynamic = any(ins[i].const is None for i in index_ops)
        if (
            dynamic
            and name in ("gather", "dynamic_slice")
            and ins[0].params
            and not ins[0].dep_input
        ):
            return self.read_table(op, ins)
        fn = self.mover(op, ins)
        shapes = [self.shape(a) for a in op.inputs]
        outs = [self.graph.shapes[o] for o in op.outputs]
        try:
            if name in JOINS:
                units = [self.normal(self.concat_factors(fn, ins, shapes), len(outs[0]))]
            else:
                got = [g for f in ins[0].units for g in self.moved(op, fn, f, shapes[0])]
                units = [self.normal([g[k] for g in got], len(o)) for k, o in enumerate(outs)]
        except L.Dynamic:
            raise self.cannot_follow(
                op,
                ins[0].units,
                "selects among them with indices computed from the input, so which unit ends "
                "up where is not known",
            ) from None
        params: list[list[PFactor]] = [[] for _ in outs]
        pstats = frozenset().union(*(v.pstats for v in ins))
        if not dep_input:
            try:
                params = self.move_params(op, ins, fn, moved, shapes, outs)
            except L.Dynamic:
                pstats |= frozenset().union(*(params_leaves(v) for v in ins))
        src = ins[0]
        for k, out in enumerate(op.outputs):
            v = Value(
                units=units[k],
                params=params[k],
                dep_input=dep_input,
                dep_param=any(v.dep_param for v in ins) and not dep_input,
                pstats=pstats,
                kind="producer" if src.kind == "producer" and name in MOVES else "pass",
            )
            if name in MOVES and src.stage >= 0:
                v.stage, v.exclusive = src.stage, src.exclusive and self.exclusive(out)
            self.set(out, v)

    def moved(self, op: Op, fn, f: np.ndarray, shape) -> list[list[np.ndarray]]:
        """`fn` applied to a factor; for a window read at a start computed from the input (a
        solver's buffer read at its step counter) from a factor that holds the same units
        wherever it holds any along that axis: those units, wherever the window lands."""
        f = L.lift(f, len(shape))
        try:
            return [fn(f)]
        except L.Dynamic:
            if op.name != "dynamic_slice":
                raise
        starts = [self.value(a).const for a in op.inputs[1:]]
        sizes = op.params["slice_sizes"]
        axes = [
            d
            for d, (start, size) in enumerate(zip(starts, sizes, strict=True))
            if start is None and size < shape[d] and f.shape[d] > 1
        ]
        parts = slices_along(f, axes)
        if len(parts) != 1:  # which unit the window holds depends on the input
            raise L.Dynamic
        if unlabelled_along(f, axes):
            self.crowded.append((self.labels_of(parts), op))
        return [fn(parts[0])]

    def mover(self, op: Op, ins: list[Value]) -> Callable[..., list[np.ndarray]]:
        """A function mapping the label arrays of the moved operand(s) to those of the results."""
        p, name = op.params, op.name
        shapes = [self.shape(a) for a in op.inputs]
        shape, out = shapes[0], self.graph.shapes[op.outputs[0]]
        if name in ("reshape", "squeeze", "expand_dims"):
            return lambda a: [L.reshape(a, shape, out)]
        if name == "transpose":
            return lambda a: [a.transpose(p["permutation"])]
        if name == "broadcast_in_dim":
            return lambda a: [L.broadcast_in_dim(a, out, p["broadcast_dimensions"])]
        if name == "rev":
            return lambda a: [np.flip(a, tuple(d for d in p["dimensions"] if a.shape[d] > 1))]
        if name == "slice":
            return lambda a: [L.slice_(a, p["start_indices"], p["limit_indices"], p["strides"])]
        if name == "pad":
            return lambda a: [L.pad(a, shape, p["padding_config"])]
        if name == "split":
            return lambda a: L.split(a, p["sizes"], p["axis"])
        if name == "concatenate":
            return lambda *a: [L.concatenate(a, shapes, p["dimension"])]
        if name == "stack":  # a new axis, then a concatenation along it
            axis = p["axis"]
            grown = [(*s[:axis], 1, *s[axis:]) for s in shapes]
            return lambda *a: [L.concatenate([np.expand_dims(x, axis) for x in a], grown, axis)]
        if name == "unstack":  # slices of one along the axis, which each result drops
            axis = p["axis"]
            return lambda a: [np.squeeze(x, axis) for x in L.split(a, [1] * shape[axis], axis)]
        if name == "tile":  # copies side by side along each axis where the labels change
            reps = p["reps"]
            return lambda a: [np.tile(a, [r if a.shape[d] > 1 else 1 for d, r in enumerate(reps)])]
        if name == "dynamic_slice":
            starts = [_scalar(v.const) for v in ins[1:]]
            return lambda a: [L.dynamic_slice(a, shape, starts, p["slice_sizes"])]
        assert name == "gather", name
        index = ins[1].const
        return lambda a: [L.gather(a, shape, index, shapes[1], p)]

    def concat_factors(self, fn, ins: list[Value], shapes) -> list[np.ndarray]:
        blank = [np.full((1,) * len(s), L.NONE, np.int32) for s in shapes]
        got = []
        for j, v in enumerate(ins):
            for f in v.units:
                args = [L.lift(f, len(shapes[j])) if k == j else blank[k] for k in range(len(ins))]
                got += fn(*args)
        return got

    def move_params(self, op, ins, fn, moved, shapes, outs) -> list[list[PFactor]]:
        if op.name not in JOINS:
            out: list[list[PFactor]] = [[] for _ in outs]
            where = axis_map(op, shapes[0], outs[0])
            for pf in ins[0].params:
                pf = pf.lifted(len(shapes[0]))
                got = [fn(m) for m in pf.maps]
                for k in range(len(outs)):
                    out[k].append(pf.moved(tuple(m[k] for m in got), where))
            return out
        if all(not v.params for v in ins):
            return [[]]
        if any(len(v.params) > 1 for v in ins):
            raise L.Dynamic
        ids = [
            self.global_ids(v.params[0], s) if v.params else np.full((1,) * len(s), L.NONE)
            for v, s in zip(ins, shapes, strict=True)
        ]
        return [[PFactor(-1, (fn(*[i.astype(np.int64) for i in ids])[0],))]]

    def global_ids(self, pf: PFactor, shape: Sequence[Any]) -> np.ndarray:
        """Global parameter ids of a parameter factor (compact)."""
        if pf.leaf < 0:
            return pf.maps[0]
        grid = np.broadcast_shapes(*(m.shape for m in pf.maps))
        maps = [np.broadcast_to(m, grid) for m in pf.maps]
        ok = np.all([m >= 0 for m in maps], axis=0)
        flat = np.ravel_multi_index([np.where(ok, m, 0) for m in maps], self.leaf_shapes[pf.leaf])
        return np.where(ok, self.offsets[pf.leaf] + flat, L.NONE).reshape(grid)

    # ---- writes ------------------------------------------------------------------------------
    def update(self, op: Op, ins: list[Value]) -> None:
        """`dynamic_update_slice` and scatters: the update's labels land on the operand's."""
        name, p = op.name, op.params
        upd_at, idx_at = (
            (1, list(range(2, len(ins)))) if name == "dynamic_update_slice" else (2, [1])
        )
        for i in idx_at:
            if ins[i].units:
                raise self.cannot_follow(op, ins[i].units, "uses them as indices")
        base, upd = ins[0], ins[upd_at]
        shape, ushape = self.shape(op.inputs[0]), self.shape(op.inputs[upd_at])
        nd = len(shape)
        blank = np.full((1,) * nd, L.NONE, np.int32)
        ublank = np.full((1,) * len(ushape), L.NONE, np.int32)
        known = all(ins[i].const is not None for i in idx_at)
        combine = name not in ("dynamic_update_slice", "scatter")
        if name == "dynamic_update_slice":
            starts = [_scalar(ins[i].const) for i in idx_at]

            def write(a, u):
                return L.dynamic_update_slice(a, u, shape, ushape, starts)
        else:
            index = ins[1].const

            def write(a, u):
                return L.scatter(a, shape, index, u, ushape, p)

        got, landed = [], []
        for f in upd.units:
            f = L.lift(f, len(ushape))
            if known:
                landed.append(write(blank, f))
            elif name == "dynamic_update_slice" and all(
                f.shape[d] == 1 or ushape[d] == shape[d] for d in range(nd)
            ):
                landed.append(f)
            elif f.size and (f == f.flat[0]).all():
                landed.append(np.full((1,) * nd, f.flat[0], np.int32))
            elif (
                name != "dynamic_update_slice" and (w := _windowed(f, p, shape, ushape)) is not None
            ):
                landed.append(w)
            else:
                raise self.cannot_follow(op, f, "writes them at positions computed from the input")
        for f in base.units:
            f = L.lift(f, nd)
            got.append(write(f, ublank) if known and not combine else f)
            for u in landed:
                self.meet("add" if combine else "either", f, u, op)
        dep_input = base.dep_input or upd.dep_input
        out = op.outputs[0]
        self.set(
            out,
            Value(
                units=self.normal(got + landed, nd),
                dep_input=dep_input,
                dep_param=(base.dep_param or upd.dep_param) and not dep_input,
                pstats=params_leaves(base) | params_leaves(upd),
                kind="pass",
            ),
        )

    # ---- tables read at input-dependent positions -------------------------------------------
    def read_table(self, op: Op, ins: list[Value]) -> None:
        shape = self.shape(op.inputs[0])
        sizes = op.params["slice_sizes"]
        if op.name == "dynamic_slice":
            starts = [_scalar(v.const) for v in ins[1:]]
            indexed = [d for d in range(len(shape)) if sizes[d] < shape[d]]
            dynamic = [d for d in indexed if starts[d] is None]
            if len(dynamic) != len(indexed):
                raise self.cannot_follow(op, [], "reads a table at mixed positions")
            where = {d: d for d in range(len(shape)) if d not in indexed}
        else:
            dn = op.params["dimension_numbers"]
            if getattr(dn, "operand_batching_dims", ()):
                raise self.cannot_follow(op, [], "reads a batched table")
            kept = [d for d in range(len(shape)) if d not in dn.collapsed_slice_dims]
            indexed = [d for d in range(len(shape)) if sizes[d] < shape[d]]  # read in part
            where = {d: o for d, o in zip(kept, dn.offset_dims, strict=True) if d not in indexed}
        self.lookup(op, ins[0], indexed, where)

    # ---- windows and axes --------------------------------------------------------------------
    def window(self, op: Op, ins: list[Value]) -> None:
        """Pooling: each output keeps the labels of its window, which must be one unit's."""
        p = op.params
        shape = self.shape(op.inputs[0])
        moving = []
        for d in range(len(shape)):
            cfg = (
                p["window_dimensions"][d],
                p["window_strides"][d],
                tuple(p["padding"][d]),
                p["base_dilation"][d],
                p["window_dilation"][d],
            )
            if cfg != (1, 1, (0, 0), 1, 1):
                moving.append(d)
        units = []
        for f in ins[0].units:
            f = L.lift(f, len(shape))
            bad = [d for d in moving if f.shape[d] > 1]
            if bad:
                raise self.cannot_follow(
                    op,
                    f,
                    f"pools across units: its window moves along axes {bad}, where the units change",
                )
            units.append(f)
        v = ins[0]
        out = Value(units=units, dep_input=v.dep_input, kind="pass", pstats=params_leaves(v))
        out.dep_param = v.dep_param and not v.dep_input
        self.set(op.outputs[0], out)

    def along_axis(self, op: Op, ins: list[Value]) -> None:
        """Cumulative operations, sorts, top-k and Fourier transforms (over their last axes):
        labels must not change along the axes they work along; parameters read there become
        statistics."""
        if op.name == "fft":
            axes = list(range(-len(op.params["fft_lengths"]), 0))
        elif op.name == "top_k":
            axes = [-1]
        else:
            axes = [int(op.params.get("axis", op.params.get("dimension", 0)))]
        kept: list[list[np.ndarray]] = []
        for v, atom in zip(ins, op.inputs, strict=True):
            kept.append([])
            for f in v.units:
                f = L.lift(f, len(self.shape(atom)))
                vary = [a % f.ndim for a in axes if f.shape[a] > 1]
                # a transform mixes every position along its axes: units found at some of
                # them only (a signal padded with zeros) reach every output position
                parts = self.spread(op, f, vary) if vary and op.name == "fft" else [f]
                if len(parts) != 1 or any(parts[0].shape[a] > 1 for a in axes):
                    raise self.cannot_follow(
                        op, f, "it is not an operation whose effect on units is known"
                    )
                kept[-1].append(parts[0])
        dep_input = any(v.dep_input for v in ins)
        pstats = frozenset().union(*(params_leaves(v) for v in ins))
        dep_param = any(v.dep_param for v in ins) and not dep_input
        for k, out in enumerate(op.outputs):
            units = kept[min(k, len(ins) - 1)] if (op.name != "top_k" or k == 0) else []
            value = Value(
                units=list(units), dep_input=dep_input, dep_param=dep_param, pstats=pstats
            )
            value.kind = "pass"
            self.set(out, value)


def _windowed(f: np.ndarray, p: dict[str, Any], shape, ushape) -> np.ndarray | None:
    """A scatter's update labels in the operand's frame, where they land alike wherever the
    (unknown) indices put them: constant along the scattered axes, and along each window axis
    either constant or spanning the operand's whole axis (`buffer.at[i].set(row)`)."""
    dn = p["dimension_numbers"]
    window = list(dn.update_window_dims)
    skipped = set(dn.inserted_window_dims) | set(getattr(dn, "operand_batching_dims", ()))
    targets = [d for d in range(len(shape)) if d not in skipped]
    if len(targets) != len(window):
        return None
    out_shape = [1] * len(shape)
    for d in range(len(ushape)):
        if d not in window and f.shape[d] > 1:
            return None
    for w, o in zip(window, targets, strict=True):
        if f.shape[w] > 1:
            if ushape[w] != shape[o]:
                return None
            out_shape[o] = f.shape[w]
    moved = np.transpose(f, [*window, *(d for d in range(len(ushape)) if d not in window)])
    return np.ascontiguousarray(moved).reshape(out_shape).astype(np.int32)
