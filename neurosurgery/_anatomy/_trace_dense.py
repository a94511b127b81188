"""Contractions: where units are created (a parameter weight read by a dense, conv or lookup
operation) and consumed (their outgoing weights), and contractions of two activations
(attention: scores = Q·K pair query and key units, output = softmax·V carries the value units).

A group is identified by the weight leaf and the leaf axes that index its units, so a layer
called at several sites, a recurrent weight read at every iteration of a scan, or a stack of
layers sliced by a scan all give one group with the same units everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import AnatomyError
from ._graph import Op
from ._labels import NONE, compress, pattern
from ._trace_core import PFactor, RawGroup, Rel, TracerCore, Value, params_leaves


def place(a: np.ndarray, where: dict[int, int], ndim: int) -> np.ndarray:
    """Move the axes of compact `a` to new positions (`where[src] = dst`) in an `ndim`-array;
    `a` must be constant along the axes it loses."""
    take = tuple(slice(None) if d in where else 0 for d in range(a.ndim))
    kept = sorted(where)
    sub = np.asarray(a[take])
    order = sorted(range(len(kept)), key=lambda i: where[kept[i]])
    sub = sub.transpose(order) if sub.ndim else sub
    shape = [1] * ndim
    for d in kept:
        shape[where[d]] = a.shape[d]
    return sub.reshape(shape)


def leaf_owner(owner: np.ndarray, pf: PFactor, leaf_shape: Sequence[Any]) -> np.ndarray | None:
    """`owner` (a label per element of a parameter-derived value) in the leaf's own frame, as a
    compact array; None when the value is not an axis-aligned view of the leaf."""
    used: dict[int, int] = {}
    var: list[int | None] = []
    for a, m in enumerate(pf.maps):
        p = pattern(m)
        if len(p) > 1 or (p and p[0] in used):
            return None
        if p:
            used[p[0]] = a
        var.append(p[0] if p else None)
    if any(d not in used for d in pattern(owner)):
        return None
    index, comp, taken = [], [], {}
    for a, (m, d) in enumerate(zip(pf.maps, var, strict=True)):
        n = leaf_shape[a]
        idx = m.reshape(-1)
        if (idx < 0).any():
            return None
        if d is None:
            comp.append(1 if n == 1 else n)
            index.append(np.array([0 if n == 1 else int(idx[0])]))
            continue
        whole = len(idx) == n and np.array_equal(np.sort(idx), np.arange(n))
        if owner.shape[d] == 1 and whole:
            comp.append(1)
            index.append(np.array([0]))
        else:
            if owner.shape[d] > 1 and len(np.unique(idx)) != len(idx):
                return None
            comp.append(n)
            index.append(idx)
            taken[d] = a
    grow = [
        len(pf.maps[taken[d]].reshape(-1)) if d in taken else owner.shape[d]
        for d in range(owner.ndim)
    ]
    sub = np.broadcast_to(owner, grow)
    sub = np.asarray(sub[tuple(slice(None) if d in taken else 0 for d in range(owner.ndim))])
    dims = sorted(taken)
    sub = sub.transpose(sorted(range(len(dims)), key=lambda i: taken[dims[i]])) if dims else sub
    sub = sub.reshape([len(i) for i in index])
    out = np.full(comp, NONE, np.int32)
    out[np.ix_(*index)] = sub
    return out


def unlabelled_along(f: np.ndarray, axes: list[int]) -> bool:
    """Some position along `axes` holds none of the units (the factor's other values there)."""
    moved = np.moveaxis(f, axes, list(range(len(axes))))
    flat = moved.reshape(int(np.prod(moved.shape[: len(axes)], dtype=int)), -1)
    return bool((flat < 0).all(axis=1).any())


def slices_along(f: np.ndarray, axes: list[int]) -> list[np.ndarray]:
    """The distinct labelled slices of a compact label array along `axes`, each of size 1
    there: the units found at any one position along them."""
    moved = np.moveaxis(f, axes, list(range(len(axes))))
    rest = moved.shape[len(axes) :]
    rows = np.unique(moved.reshape(-1, int(np.prod(rest, dtype=int))), axis=0)
    out = []
    for row in rows:
        if (row >= 0).any():
            g = row.reshape((1,) * len(axes) + rest)
            out.append(compress(np.moveaxis(g, list(range(len(axes))), axes)))
    return out


class DenseOps(TracerCore):
    """Unit-creating operations and contractions."""

    def spread(self, op: Op, f: np.ndarray, axes: list[int]) -> list[np.ndarray]:
        """The distinct slices of `f` along `axes`; where some positions hold none of its units
        (a class token's row before the tokens), the units share their readers' columns with
        whatever is there."""
        parts = slices_along(f, axes)
        if unlabelled_along(f, axes):
            self.crowded.append((self.labels_of(parts), op))
        return parts

    # ---- relations ---------------------------------------------------------------------------
    def relate(self, role: str, kind: str, owner: np.ndarray, pf: PFactor, op: Op) -> None:
        """Record that the entries of `pf` belong to the units labelled by `owner`."""
        if not (owner >= 0).any():
            return
        if pf.leaf >= 0:
            compact = leaf_owner(owner, pf, self.leaf_shapes[pf.leaf])
            if compact is not None:
                self.rels.append(Rel(role, kind, pf.leaf, compact, None, None, op))
                return
        shape = np.broadcast_shapes(owner.shape, *(m.shape for m in pf.maps))
        lab = np.broadcast_to(owner, shape).ravel()
        maps = [np.broadcast_to(m, shape).ravel() for m in pf.maps]
        if pf.leaf >= 0:
            ok = lab >= 0
            for m in maps:
                ok &= m >= 0
            leaves = np.full(lab.shape, pf.leaf)
            shape = self.leaf_shapes[pf.leaf]
            flat = np.ravel_multi_index([m[ok] for m in maps], shape) if maps else lab[ok] * 0
            lab, leaves = lab[ok], leaves[ok]
        else:
            ok = (maps[0] >= 0) & (lab >= 0)
            gid, lab = maps[0][ok].astype(np.int64), lab[ok]
            leaves = np.searchsorted(self.offsets, gid, side="right") - 1
            flat = gid - self.offsets[leaves]
        for leaf in np.unique(leaves):
            sel = leaves == leaf
            self.rels.append(Rel(role, kind, int(leaf), None, flat[sel], lab[sel], op))

    # ---- groups ------------------------------------------------------------------------------
    def group_labels(
        self, op: Op, w: Value, unit_dims: Sequence[Any], contract: Sequence[Any], wshape
    ) -> tuple[int, np.ndarray]:
        """The raw group a weight read creates (found again at later call sites) and the unit
        label of each weight element (compact, constant along the contracted axes)."""
        pf = next((p for p in w.params if p.leaf >= 0), w.params[0])
        key: Any = None
        unit_shape: tuple[int, ...] = ()
        fixed: list[bool] = []
        local = np.zeros((1,) * len(wshape), np.int64)
        if pf.leaf >= 0:
            shape = self.leaf_shapes[pf.leaf]
            axes: list[int] | None = []
            tags = pf.axes if len(pf.axes) == len(pf.maps) else (None,) * len(pf.maps)
            for a, m in enumerate(pf.maps):
                p = set(pattern(m))
                if not p and shape[a] == 1:
                    if tags[a] in unit_dims:  # a unit axis of size 1 (a layer of width 1)
                        axes.append(a)
                        fixed.append(False)
                elif not p:
                    axes.append(a)
                    fixed.append(True)
                elif p <= set(unit_dims):
                    axes.append(a)
                    fixed.append(False)
                elif not p <= set(contract):
                    axes = None
                    break
            if axes is not None and all((pf.maps[a] >= 0).all() for a in axes):
                key = (pf.leaf, tuple(axes))
                unit_shape = tuple(shape[a] for a in axes)
                strides = np.cumprod((1, *unit_shape[::-1]))[:-1][::-1]
                for a, s in zip(axes, strides, strict=True):
                    local = local + int(s) * pf.maps[a].astype(np.int64)
        if key is None:  # a weight that is no axis-aligned view of one leaf: units of this op
            key = ("op", id(op))
            unit_shape = tuple(wshape[d] for d in unit_dims)
            fixed = [False] * len(unit_shape)
            local = np.zeros((1,) * len(wshape), np.int64)
            stride = 1
            for d in reversed(list(unit_dims)):
                idx = np.arange(wshape[d]).reshape(
                    [-1 if k == d else 1 for k in range(len(wshape))]
                )
                local = local + stride * idx
                stride *= wshape[d]
        self.creators.add(id(op))
        if key not in self.group_keys:
            leaf = pf.leaf if pf.leaf >= 0 else self.leaf_of(pf.maps[0])
            group = RawGroup(self.next_label, unit_shape, leaf, tuple(fixed), op)
            for u in range(group.size):
                self.unit_group[self.next_label + u] = len(self.groups)
            self.next_label += group.size
            self.group_keys[key] = len(self.groups)
            self.groups.append(group)
        gid = self.group_keys[key]
        group = self.groups[gid]
        labels = (group.first + local).astype(np.int32)
        group.produced.update(np.unique(local).tolist())
        return gid, labels

    def leaf_of(self, ids: np.ndarray) -> int:
        ids = ids[ids >= 0]
        return (
            int(np.searchsorted(self.offsets, int(ids.min()), side="right") - 1) if ids.size else 0
        )

    def weight_of(self, op: Op, w: Value) -> None:
        """A weight must be traceable to parameter entries."""
        if not w.params:
            raise AnatomyError(
                f"{self.where(op)} reads a weight computed from {self.describe_leaves(w.pstats)} "
                "by operations whose effect on each entry the tracer cannot follow (a reduction "
                "or an unknown operation), so its units' incoming entries are unknown. Declare the "
                "module's neuron groups (`__neuron_groups__`) or compute the weight outside the "
                "traced call (`fn=`)."
            )

    def incoming(self, op: Op, gid: int, w: Value, labels: np.ndarray, contract) -> None:
        for pf in w.params:
            const_k = all(m.shape[d] == 1 for m in pf.maps for d in contract)
            kind = "scale" if const_k and pf is not w.params[0] else "weight"
            self.relate("incoming", kind, labels, pf, op)
        if w.pstats & params_leaves(w) or (w.pstats and not w.params):
            vid = next(a for a in op.inputs if isinstance(a, int) and self.values[a] is w)
            self.groups[gid].weights.append((vid, labels))

    # ---- dot_general -------------------------------------------------------------------------
    def dot_general(self, op: Op, ins: list[Value]) -> None:
        (lc, rc), (lb, rb) = op.params["dimension_numbers"]
        lhs, rhs = ins
        if lhs.dep_input and rhs.dep_input:
            return self.contract_activations(op, ins)
        out = op.outputs[0]
        if not (lhs.dep_input or rhs.dep_input):
            return self.set(
                out, Value(dep_param=True, pstats=params_leaves(lhs) | params_leaves(rhs))
            )
        side = 0 if rhs.dep_input else 1  # the weight's side
        w, a = ins[side], ins[1 - side]
        shapes = [self.shape(x) for x in op.inputs]
        wc, wb = (lc, lb) if side == 0 else (rc, rb)
        ac, ab = (rc, rb) if side == 0 else (lc, lb)
        wshape, ashape = shapes[side], shapes[1 - side]
        wf = [d for d in range(len(wshape)) if d not in wc and d not in wb]
        af = [d for d in range(len(ashape)) if d not in ac and d not in ab]
        nb, ndim = len(wb), len(self.graph.shapes[out])
        w_pos = {d: i for i, d in enumerate(wb)}
        a_pos = {d: i for i, d in enumerate(ab)}
        w_start, a_start = (nb, nb + len(wf)) if side == 0 else (nb + len(af), nb)
        w_pos |= {d: w_start + i for i, d in enumerate(wf)}
        a_pos |= {d: a_start + i for i, d in enumerate(af)}
        units: list[np.ndarray] = []
        consumed = []
        for f in a.units:
            p = set(pattern(f))
            if not p & set(ac) and p & set(af):  # units at positions the weight is shared by
                units.append(place(f, a_pos, ndim))
            elif p & set(ac) and p & set(af) and not w.dep_param:
                consumed.append(f)  # read through a constant (a C51 head's support)
            elif p & set(ac) and p & set(af):
                # units at some positions only (a class token concatenated before the
                # tokens, padding), or different units at different positions: each distinct
                # slice is read through the weight's columns
                consumed.extend(self.spread(op, f, [d for d in af if f.shape[d] > 1]))
            else:
                consumed.append(f)
        if not w.dep_param:
            # units read through a constant straight into the model's outputs are outputs (a
            # C51 head's atoms, weighted by its support); elsewhere they reach the outputs
            # through weights that no reset can zero
            final = out in self.graph.outputs
            for f in consumed:
                if final:
                    self.read_out.append(self.labels_of([f]))
                else:
                    self.weightless.append((self.labels_of([f]), op, "a constant weight"))
            return self.set(out, Value(units=self.normal(units, ndim), dep_input=True))
        self.weight_of(op, w)
        gid, labels = self.group_labels(op, w, [*wb, *wf], wc, wshape)
        self.incoming(op, gid, w, labels, wc)
        units.insert(0, place(labels, w_pos, ndim))
        to_w = {d: wb[i] for i, d in enumerate(ab)} | {d: wc[i] for i, d in enumerate(ac)}
        for f in consumed:
            owner = place(f, to_w, len(wshape))
            for pf in w.params:
                self.relate("outgoing", "weight", owner, pf, op)
        v = Value(units=self.normal(units, ndim), dep_input=True, stage=gid, kind="producer")
        v.exclusive = self.exclusive(out)
        self.set(out, v)

    def contract_activations(self, op: Op, ins: list[Value]) -> None:
        """Two input-dependent operands: units constant along the contracted axes pass through
        (softmax·V); units varying along them must be met by units on the other side (Q·K)."""
        (lc, rc), (lb, rb) = op.params["dimension_numbers"]
        shapes = [self.shape(x) for x in op.inputs]
        out = op.outputs[0]
        ndim = len(self.graph.shapes[out])
        nb = len(lb)
        lf = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
        rf = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
        pos = [
            {d: i for i, d in enumerate(lb)} | {d: nb + i for i, d in enumerate(lf)},
            {d: i for i, d in enumerate(rb)} | {d: nb + len(lf) + i for i, d in enumerate(rf)},
        ]
        frame = [
            {d: i for i, d in enumerate([*lb, *lc])},
            {d: i for i, d in enumerate([*rb, *rc])},
        ]
        units, consumed = [], [[], []]
        for s, (v, c, f) in enumerate(((ins[0], lc, lf), (ins[1], rc, rf))):
            for fac in v.units:
                p = set(pattern(fac))
                if not p & set(c):
                    units.append(place(fac, pos[s], ndim))
                elif p & set(f):
                    raise self.cannot_follow(
                        op,
                        fac,
                        "its units vary both along the contracted axes and along the others",
                    )
                else:
                    consumed[s].append(place(fac, frame[s], nb + len(c)))
        left = self.normal(consumed[0], nb + len(lc))
        right = self.normal(consumed[1], nb + len(lc))
        if left or right:
            q = left[0] if left else np.full((1,) * (nb + len(lc)), NONE, np.int32)
            k = right[0] if right else np.full((1,) * (nb + len(lc)), NONE, np.int32)
            for extra in left[1:]:
                q = self.union(q, extra)
            for extra in right[1:]:
                k = self.union(k, extra)
            q, k = np.broadcast_arrays(q, k)
            lonely = ((q >= 0) != (k >= 0)).any()
            if lonely or not (left and right):
                raise self.cannot_follow(
                    op,
                    q if (q >= 0).any() else k,
                    "contracts these units with a value computed from the input that carries no "
                    "units at the same positions, so their outgoing weights are not parameters "
                    "(if that value is a layer's state, such as SpectralNorm's power-iteration "
                    "vectors, close over the state in `fn=` instead of passing it as an input)",
                )
            same = q == k
            if same.all():
                self.reduced.append((self.labels_of([q]), op))
            else:
                # The key side is the one already combined with values (linear attention's
                # context = Kᵀ V carries V's units along); otherwise queries come first.
                carries = [len(v.units) > len(c) for v, c in zip(ins, consumed, strict=True)]
                if carries == [True, False]:
                    q, k = k, q
                pairs = np.unique(np.stack([q[~same], k[~same]]), axis=1)
                self.pairs.append((pairs[0], pairs[1], op))
        self.set(out, Value(units=self.normal(units, ndim), dep_input=True, kind="act"))

    # ---- convolutions ------------------------------------------------------------------------
    def conv(self, op: Op, ins: list[Value]) -> None:
        a, w = ins
        out = op.outputs[0]
        if w.dep_input or not w.dep_param:
            raise (
                self.cannot_follow(
                    op, a.units, "convolves them with a kernel that is not a parameter of the model"
                )
                if a.units
                else AnatomyError(
                    f"{self.where(op)} convolves with a kernel computed from the input; only "
                    "convolutions with a parameter kernel are mapped. Declare the groups explicitly."
                )
            )
        self.weight_of(op, w)
        dn = op.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        n_groups = int(op.params.get("feature_group_count", 1))
        if int(op.params.get("batch_group_count", 1)) != 1:
            raise AnatomyError(f"{self.where(op)} uses batch_group_count; it is not mapped.")
        wshape = self.shape(op.inputs[1])
        ndim = len(self.graph.shapes[out])
        contract = [d for d in range(len(wshape)) if d != rhs_spec[0]]
        gid, labels = self.group_labels(op, w, [rhs_spec[0]], contract, wshape)
        self.incoming(op, gid, w, labels, contract)
        units = [place(labels, {rhs_spec[0]: out_spec[1]}, ndim)]
        n_out, n_in = wshape[rhs_spec[0]], wshape[rhs_spec[1]]
        for f in a.units:
            p = set(pattern(f))
            if p - {lhs_spec[0], lhs_spec[1]}:
                raise self.cannot_follow(op, f, "its unit labels vary across positions")
            if lhs_spec[1] not in p and p:  # units along the batch axis pass through
                units.append(place(f, {lhs_spec[0]: out_spec[0]}, ndim))
                continue
            if lhs_spec[0] in p:
                raise self.cannot_follow(op, f, "its unit labels vary along the batch axis")
            chan = f.reshape(-1)  # labels of the input channels
            per_out = n_out // n_groups
            o = np.arange(n_out)[:, None]
            i = np.arange(n_in)[None, :]
            owner2 = chan[(o // per_out) * n_in + i]  # (out, in-per-group)
            shape = [1] * len(wshape)
            shape[rhs_spec[0]], shape[rhs_spec[1]] = n_out, n_in
            order = sorted((rhs_spec[0], rhs_spec[1]))
            owner = owner2 if order[0] == rhs_spec[0] else owner2.T
            owner = compress(owner.reshape(shape))
            for pf in w.params:
                self.relate("outgoing", "weight", owner, pf, op)
        v = Value(units=self.normal(units, ndim), dep_input=True, stage=gid, kind="producer")
        v.exclusive = self.exclusive(out)
        self.set(out, v)

    # ---- lookups -----------------------------------------------------------------------------
    def lookup(self, op: Op, w: Value, indexed: Sequence[Any], where: dict[int, int]) -> None:
        """A parameter read at positions computed from the input (an embedding table): units
        along the axes read whole, like a dense layer on a one-hot input."""
        wshape = self.shape(op.inputs[0])
        out = op.outputs[0]
        ndim = len(self.graph.shapes[out])
        unit_dims = [d for d in range(len(wshape)) if d not in indexed]
        gid, labels = self.group_labels(op, w, unit_dims, indexed, wshape)
        self.incoming(op, gid, w, labels, indexed)
        v = Value(units=[place(labels, where, ndim)], dep_input=True, stage=gid, kind="producer")
        v.exclusive = self.exclusive(out)
        self.set(out, v)
