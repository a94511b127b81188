"""Where to observe each group: its pre-activation and activation, at every call site.

A group's chain starts at the values its unit-creating operations produce and follows the
operations that carry every unit of the group (and no other unit mixed into them) to the places
where the units are consumed: another layer's weights, a sum with other layers' outputs (a
residual stream), the end of a scan body, the model's output. Each connected chain is a *site*:
one call of the layer, or the layer inside a scan body, observed at every iteration. At each site
the activation probe sits on the last value that leaves the chain (what consumers read) and the
pre-activation probe on the last producer-side value (after bias and per-unit norms) that every
path to it crosses.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .._errors import AnatomyError
from ._anatomy import _make_layout, _Site, _Taps
from ._graph import CONTROL, Op
from ._labels import lift
from ._owners import LabelMap
from ._resolve import FinalGroup
from ._trace import Tracer
from ._trace_core import Value


class Chains:
    """A value's unit index per element for a group, if it carries each of the group's units
    layout-ably (other units may ride along on other axes)."""

    def __init__(self, t: Tracer, lm: LabelMap, sizes: list[int]):
        self.t, self.lm, self.sizes = t, lm, sizes
        self.cache: dict[tuple[int, int], np.ndarray | None] = {}

    def of_value(self, v: Value, ndim: int, g: int) -> np.ndarray | None:
        key = (id(v), g)
        if key not in self.cache:
            self.cache[key] = self._compute(v, ndim, g)
        return self.cache[key]

    def _compute(self, v: Value, ndim: int, g: int) -> np.ndarray | None:
        local = None
        for f in v.units:
            f = lift(f, ndim)
            loc = self.lm.local(f, g)
            if not (loc != -1).any():
                continue
            others = self.lm.groups_of(np.unique(f[loc >= 0])) - {g}
            if (loc == -2).any() or others or (local is not None):
                return None  # mixed with other units, or the group's units on two axes
            local = loc
        return local

    def covers(self, local: np.ndarray, g: int) -> bool:
        return len(np.unique(local[local >= 0])) == self.sizes[g]

    def of(self, vid: int, g: int) -> np.ndarray | None:
        """Like `of_value`, over every iteration of the scans around the value (stacked)."""
        ndim = len(self.t.graph.shapes[vid])
        loops = self.t.graph.loops.get(vid, ())
        if not loops:
            v = self.t.values[vid]
            loc = None if v is None else self.of_value(v, ndim, g)
            return loc if loc is not None and self.covers(loc, g) else None
        snaps = self.t.snaps.get(vid, {})
        got = []
        for index in np.ndindex(*loops):
            v = snaps.get(index)
            loc = None if v is None else self.of_value(v, ndim, g)
            if loc is None:
                return None
            got.append(loc)
        first = got[0]
        if all(x.shape == first.shape and np.array_equal(x, first) for x in got[1:]):
            stacked = first.reshape((1,) * len(loops) + first.shape)
        else:
            shape = np.broadcast_shapes(*(x.shape for x in got))
            stacked = np.stack([np.broadcast_to(x, shape) for x in got]).reshape((*loops, *shape))
        return stacked if self.covers(stacked, g) else None


def taps(t: Tracer, lm: LabelMap, finals: list[FinalGroup]):
    """Each group's probe sites (None: not observable) and why some groups are not observed."""
    graph = t.graph
    sizes = [int(np.prod(fg.unit_shape, dtype=int)) for fg in finals]
    chains = Chains(t, lm, sizes)
    consumers: dict[int, list[Op]] = defaultdict(list)
    leaving: set[int] = {a for a in graph.outputs if isinstance(a, int)}
    for op in graph.all_ops():
        for a in op.inputs:
            if isinstance(a, int):
                consumers[a].append(op)
        for body in op.bodies:
            leaving |= {a for a in body.outputs if isinstance(a, int)}
    # sums of different groups' units (residual streams) end a chain; sums inside one merged
    # unit (a recurrent cell's gates) do not
    blocking = set()
    for kind, a, b, op in t.meetings:
        if kind in ("add", "either"):
            met = lm.indicator(a, len(finals)).T.astype(int) @ lm.indicator(b, len(finals))
            if (met - np.diag(np.diag(met))).any():
                blocking.add(id(op))
    starts: dict[int, list[int]] = defaultdict(list)
    for vid, op in t.producer.items():
        v = t.values[vid]
        if id(op) in t.creators and v is not None and v.stage >= 0:
            raw = t.groups[v.stage]
            for g in lm.groups_of(np.arange(raw.first, raw.first + raw.size)):
                starts[g].append(vid)
    out: list[_Taps | None] = []
    why: dict[int, str] = {}
    for g, fg in enumerate(finals):
        local: dict[int, np.ndarray] = {}
        preds: dict[int, list[int]] = defaultdict(list)
        sinks: set[int] = set()
        todo = []
        for vid in _roots(starts.get(g, []), g, chains, consumers, t, blocking):
            loc = chains.of(vid, g)
            assert loc is not None
            local[vid] = loc
            todo.append(vid)
        while todo:
            vid = todo.pop()
            if vid in leaving:
                sinks.add(vid)
            for op in consumers[vid]:
                if op.name in CONTROL or id(op) in t.creators or id(op) in blocking:
                    sinks.add(vid)
                    continue
                for o in op.outputs:
                    loc = local.get(o)
                    if loc is None:
                        loc = chains.of(o, g)
                    if loc is None:
                        sinks.add(vid)
                        continue
                    preds[o].append(vid)
                    if o not in local:
                        local[o] = loc
                        todo.append(o)
        sites = _components(local, preds)
        found = []
        for comp in sites:
            hidden = {graph.hidden[v] for v in comp if v in graph.hidden}
            ends = [v for v in comp if v in sinks]
            if not ends:
                continue
            if hidden:
                why[g] = "inside a `while` loop" if "while" in hidden else "inside a `cond` branch"
                continue

            def layout(v: int, local=local, n=sizes[g], unit_shape=fg.unit_shape):
                full = (*graph.loops.get(v, ()), *graph.shapes[v])
                return _make_layout(local[v], full, n, unit_shape)

            post = max(ends)
            try:
                post_layout = layout(post)
            except AnatomyError as err:
                # the last value carries some units more often than others (the units are
                # concatenated or padded with copies of some of them): the activations are read
                # before that, at the last value every end comes from that holds each unit alike
                post, post_layout = _before_repeats(preds, ends, layout, post, err, t, fg)
            pre = _pre(t, comp, preds, post)
            found.append(_Site(pre, post, layout(pre), post_layout))
        out.append(_Taps(tuple(found)) if found else None)
        if not found and g not in why:
            why[g] = (
                f"it is layer {fg.part} of a stack applied by a scan, and the scan's values "
                "carry every layer's units in turn, each at its own iteration"
                if fg.part is not None
                else "no value of the program carries its units alone"
            )
    return out, why


def _roots(
    starts: list[int], g: int, chains: Chains, consumers, t: Tracer, blocking: set[int]
) -> list[int]:
    """The first values after the producers that carry the group's units alone (a fused
    projection holds several groups until it is split)."""
    found, todo, seen = [], list(starts), set()
    while todo:
        vid = todo.pop()
        if vid in seen:
            continue
        seen.add(vid)
        if chains.of(vid, g) is not None:
            found.append(vid)
            continue
        for op in consumers[vid]:
            if op.name in CONTROL or id(op) in t.creators or id(op) in blocking:
                continue
            if len(seen) < 64:
                todo.extend(op.outputs)
    return found


def _components(nodes: dict[int, np.ndarray], preds: dict[int, list[int]]) -> list[list[int]]:
    parent = {v: v for v in nodes}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for v, ps in preds.items():
        for p in ps:
            parent[find(v)] = find(p)
    comps: dict[int, list[int]] = defaultdict(list)
    for v in nodes:
        comps[find(v)].append(v)
    return sorted((sorted(c) for c in comps.values()), key=lambda c: c[0])


def _ancestors(v: int, preds: dict[int, list[int]]) -> set[int]:
    """`v` and every value it is computed from along `preds`."""
    seen, todo = set(), [v]
    while todo:
        w = todo.pop()
        if w not in seen:
            seen.add(w)
            todo.extend(preds.get(w, ()))
    return seen


def _before_repeats(preds, ends, layout, post: int, err: AnatomyError, t: Tracer, fg):
    """The last value upstream of every end where the group's units appear equally often,
    with its layout; none: the layout error, naming the group and the operation."""
    common = set.intersection(*(_ancestors(end, preds) for end in ends))

    def moved_only(v: int) -> bool:
        """Whether every value between `v` and the ends is `v`'s entries moved (concatenated,
        padded, sliced, reshaped), so that reading the activation at `v` reads the same one."""
        seen: set[int] = set()
        todo = list(ends)
        while todo:
            w = todo.pop()
            if w == v or w in seen:
                continue
            seen.add(w)
            value = t.values[w]
            if value is None or value.kind != "pass":
                return False
            todo.extend(preds.get(w, ()))
        return True

    for v in sorted(common, reverse=True):
        if v >= post or not moved_only(v):
            continue
        try:
            return v, layout(v)
        except AnatomyError:
            continue
    op = t.producer.get(post)
    at = t.where(op) if op is not None else "a value of the program"
    leaf = t.leaf_paths[t.groups[fg.raw[0]].leaf]
    raise AnatomyError(
        f"The activations of the units produced by `{leaf}` cannot be read one per unit at "
        f"{at}: {err}, and no value after their last nonlinearity holds each of them once. "
        "Declare the groups of the module that performs this operation (`__neuron_groups__`, "
        "see `neurosurgery.DeclaredGroup`) or call the model through `fn=`."
    ) from None


def _pre(t: Tracer, comp: list[int], preds: dict[int, list[int]], post: int) -> int:
    """The last producer-side value that every path from the producers to `post` crosses."""
    inside = set(comp)
    roots = {v for v in comp if not preds.get(v)}

    def kind(v: int) -> str:
        seen = set()
        while v not in seen:
            seen.add(v)
            value = t.values[v]
            k = value.kind if value is not None else ""
            if k != "pass" or not preds.get(v):
                return k
            v = preds[v][0]
        return ""

    def reaches_root(avoid: int) -> bool:
        seen, todo = set(), [post]
        while todo:
            v = todo.pop()
            if v == avoid or v in seen or v not in inside:
                continue
            if v in roots:
                return True
            seen.add(v)
            todo.extend(preds.get(v, ()))
        return False

    ancestors = _ancestors(post, preds)
    dominating = [v for v in ancestors if kind(v) in ("producer", "pre") and not reaches_root(v)]
    return max(dominating) if dominating else post
