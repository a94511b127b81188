"""Turn what the tracer recorded into neuron groups.

Units that meet one to one in a product (a gate and the unit it gates, SwiGLU's two halves, a
recurrent cell's gates) or in the sum of two layers' fresh outputs (`W x + U h`, one layer split
in two) are one unit: they are merged, and so are their groups. So are units that meet one to
one in any other sum when neither is read anywhere but through that sum (FiLM's
`h * (1 + gamma) + beta`: no consumer sees `h`, `gamma` or `beta` apart). Units that meet in a
sum and are also read apart (a residual stream, read by the block it skips) stay apart and are
marked shared. Query and key units paired by an
attention's scores become groups of their own, each the other's outgoing entries. Every
parameter entry then gets at most one unit per group and role; anything else is an error that
says where the two owners come from.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict

import numpy as np

from .._errors import AnatomyError
from ._trace import Tracer


@dataclasses.dataclass
class FinalGroup:
    """A neuron group before it becomes a `NeuronGroup`: its components (merged units)."""

    raw: list[int]
    comps: list[int]  # component ids, in unit order
    unit_shape: tuple[int, ...]
    role: str  # "", "query" or "key"
    name: str = ""
    part: int | None = None  # the layer of a stack this group was split from
    kept: str = ""  # why zeroing its outgoing entries does not remove its units' term


class Units:
    """Union-find over unit labels, and the map from labels to (group, unit)."""

    def __init__(self, tracer: Tracer):
        self.t = tracer
        self.parent = np.arange(tracer.next_label)

    def find(self, u: int) -> int:
        root = u
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[u] != root:
            self.parent[u], u = root, self.parent[u]
        return int(root)

    def join(self, labels) -> None:
        base = [m for lab in labels for m in self.t.members(int(lab))]
        root = self.find(base[0])
        for m in base[1:]:
            r = self.find(m)
            if r != root:
                self.parent[r] = root


def one_to_one(a: np.ndarray, b: np.ndarray) -> bool:
    return len(np.unique(a)) == len(a) and len(np.unique(b)) == len(b)


def resolve(t: Tracer, paths: list[str]):
    """Merge units, build the final groups and the label -> (group, unit) maps."""
    uf = Units(t)
    leaving = t.output_labels()
    for kind, a, b, _ in t.meetings:
        if kind in ("mul", "layer") and one_to_one(a, b):
            for x, y in zip(a, b, strict=True):
                # two output layers summed stay two groups (outputs are never reset anyway)
                if kind == "mul" or not (t.members(int(x)) | t.members(int(y))) & leaving:
                    uf.join((x, y))
    _join_unread_sums(t, uf, leaving)
    base = sorted(t.unit_group)
    produced = {g.first + u for g in t.groups for u in g.produced}
    comp_of = {u: uf.find(u) for u in base}
    live = {comp_of[u] for u in produced}
    roles: dict[int, set[str]] = defaultdict(set)
    partners: dict[int, set[int]] = defaultdict(set)
    for a, b, op in t.pairs:
        for x, y in zip(a, b, strict=True):
            cx = {comp_of[m] for m in t.members(int(x))}
            cy = {comp_of[m] for m in t.members(int(y))}
            for c in cx:
                roles[c].add("query")
                partners[c] |= cy
            for c in cy:
                roles[c].add("key")
                partners[c] |= cx
            if cx & cy:
                raise AnatomyError(
                    f"{t.where(op)} pairs the same units as queries and keys; the anatomy "
                    "cannot tell them apart. Declare the module's groups (`__neuron_groups__`)."
                )
    for r in roles.values():
        if len(r) > 1:
            raise AnatomyError(
                "Some attention units act as queries in one attention and as keys in another; "
                "they cannot be paired one to one. Declare the module's groups "
                "(`__neuron_groups__`)."
            )
    # raw groups linked by merged units form one group
    link = list(range(len(t.groups)))

    def top(g: int) -> int:
        while link[g] != g:
            g = link[g]
        return g

    members_of: dict[int, list[int]] = defaultdict(list)
    for u in base:
        members_of[comp_of[u]].append(u)
    for us in members_of.values():
        gs = sorted({t.unit_group[u] for u in us})
        for g in gs[1:]:
            a, b = top(gs[0]), top(g)
            if a != b:
                link[max(a, b)] = min(a, b)
    clusters: dict[int, list[int]] = defaultdict(list)
    for g in range(len(t.groups)):
        clusters[top(g)].append(g)
    finals: list[FinalGroup] = []
    for root in sorted(clusters):
        raw = clusters[root]
        units = {
            u for g in raw for u in range(t.groups[g].first, t.groups[g].first + t.groups[g].size)
        }
        comps = sorted({comp_of[u] for u in units} & live, key=lambda c: min(members_of[c]))
        by_role: dict[str, list[int]] = defaultdict(list)
        for c in comps:
            by_role[next(iter(roles[c])) if roles.get(c) else ""].append(c)
        for role in ("query", "key", ""):
            if by_role.get(role):
                finals.append(FinalGroup(raw, by_role[role], (), role))
    for fg in finals:
        fg.unit_shape, order = _shape(t, fg, members_of)
        fg.comps = order
    finals = _split_streams(t, finals, comp_of)
    _name(t, finals, paths)
    return uf, comp_of, members_of, finals, partners


def _read_sets(t: Tracer) -> dict[int, list[frozenset[int]]]:
    """For each unit: the member sets of every label a consumer reads it through (a layer's
    outgoing entries, a reduction, an attention's scores, a read without weights, an output)."""
    labels: set[int] = set()
    for rel in t.rels:
        if rel.role == "outgoing":
            arr = rel.owner if rel.owner is not None else rel.labels
            if arr is not None:
                labels.update(np.unique(arr[arr >= 0]).tolist())
    for arr, _ in t.reduced:
        labels.update(np.unique(arr[arr >= 0]).tolist())
    for arr, _, _ in t.weightless:
        labels.update(np.unique(arr[arr >= 0]).tolist())
    for a, b, _ in t.pairs:
        labels.update(np.asarray(a).tolist())
        labels.update(np.asarray(b).tolist())
    for atom in t.graph.outputs:
        labels.update(t.labels_of(t.value(atom).units).tolist())
    reads: dict[int, list[frozenset[int]]] = defaultdict(list)
    for lab in labels:
        members = t.members(int(lab))
        for u in members:
            reads[u].append(members)
    return reads


def _join_unread_sums(t: Tracer, uf: Units, leaving: set[int]) -> None:
    """Merge units that meet one to one in a sum when no consumer reads either apart."""
    sums = [(a, b) for kind, a, b, _ in t.meetings if kind == "add" and one_to_one(a, b)]
    if not sums:
        return
    reads = _read_sets(t)
    # the units every read of a unit also holds: a read without the other side is then found
    # without looking at each read (the usual case, a stream read by the block it skips)
    common = {u: frozenset.intersection(*sets) for u, sets in reads.items()}

    def apart(mine: frozenset[int], theirs: frozenset[int]) -> bool:
        for u in mine:
            if u not in common or common[u] & theirs:
                continue
            if len(theirs) == 1 or any(not (seen & theirs) for seen in reads[u]):
                return True
        return False

    for a, b in sums:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            mx, my = t.members(int(x)), t.members(int(y))
            if (mx | my) & leaving or apart(mx, my) or apart(my, mx):
                continue
            uf.join((x, y))


def _split_streams(t: Tracer, finals: list[FinalGroup], comp_of) -> list[FinalGroup]:
    """Units of one group that meet in a sum and stay apart (the layers of a stack of residual
    blocks applied by a scan, each adding to the stream the next one reads) would each own the
    others' outgoing entries: the group is split along the unit axis in which they differ,
    one group per layer of the stack."""
    # only groups with several unit axes (a stack's layers) can be split
    where = {
        c: (i, k)
        for i, fg in enumerate(finals)
        if len(fg.unit_shape) > 1
        for k, c in enumerate(fg.comps)
    }
    if not where:
        return finals
    clash: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for kind, a, b, _ in t.meetings:
        if kind != "add":
            continue
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            found: dict[int, set[int]] = defaultdict(set)
            for m in t.members(int(x)) | t.members(int(y)):
                c = comp_of.get(m)
                if c in where:
                    g, k = where[c]
                    found[g].add(k)
            for g, ks in found.items():
                if len(ks) > 1:
                    clash[g].update(itertools.combinations(sorted(ks), 2))
    out: list[FinalGroup] = []
    for g, fg in enumerate(finals):
        shape = fg.unit_shape
        axis = None
        if clash.get(g) and len(shape) > 1:
            pairs = np.array(sorted(clash[g]))
            ca = np.stack(np.unravel_index(pairs[:, 0], shape), 1)
            cb = np.stack(np.unravel_index(pairs[:, 1], shape), 1)
            apart = [d for d in range(len(shape)) if (ca[:, d] != cb[:, d]).all()]
            axis = apart[0] if apart else None
        if axis is None:
            out.append(fg)
            continue
        coords = np.unravel_index(np.arange(len(fg.comps)), shape)
        rest = shape[:axis] + shape[axis + 1 :]
        for j in range(shape[axis]):
            comps = [c for c, at in zip(fg.comps, coords[axis], strict=True) if at == j]
            out.append(FinalGroup(fg.raw, comps, rest or (1,), fg.role, part=j))
    return out


def _shape(t: Tracer, fg: FinalGroup, members_of) -> tuple[tuple[int, ...], list[int]]:
    """The unit shape: the box of the raw group units that stand for the merged units."""
    reps = {c: min(members_of[c]) for c in fg.comps}
    groups = {t.unit_group[r] for r in reps.values()}
    if len(groups) == 1:
        g = t.groups[groups.pop()]
        if not g.unit_shape:  # one unit of a 0-d group (a scalar read as a unit)
            return (1,), list(reps)
        coords = np.array([np.unravel_index(r - g.first, g.unit_shape) for r in reps.values()])
        coords = coords.reshape(len(reps), len(g.unit_shape))
        values = [np.unique(coords[:, k]) for k in range(coords.shape[1])]
        if len(reps) == int(np.prod([len(v) for v in values])):
            pos = np.stack(
                [np.searchsorted(values[k], coords[:, k]) for k in range(coords.shape[1])], 1
            )
            sizes = [len(v) for v in values]
            local = np.ravel_multi_index(tuple(pos.T), sizes) if sizes else np.zeros(1, int)
            ranks = [int(x) for x in np.ravel(local)]
            order = [c for _, c in sorted(zip(ranks, list(reps), strict=True))]
            shape = tuple(n for n, f in zip(sizes, g.fixed, strict=True) if not (f and n == 1))
            return shape or (1,), order
    return (len(fg.comps),), list(fg.comps)


def _name(t: Tracer, finals: list[FinalGroup], paths: list[str]) -> None:
    def base(g: int) -> str:
        p = paths[t.groups[g].leaf].lstrip(".")
        for suffix in (".weight", ".kernel", ".w"):
            if p.endswith(suffix):
                return p[: -len(suffix)] or "root"
        return p or "root"

    names = []
    for fg in finals:
        name = "+".join(dict.fromkeys(base(g) for g in fg.raw))
        if fg.part is not None:
            name += f"[{fg.part}]"
        split = sum(1 for f in finals if f.raw == fg.raw and f.part == fg.part) > 1
        if split:
            name += f":{fg.role or 'value'}"
        names.append(name)
    seen: dict[str, int] = defaultdict(int)
    for fg, n in zip(finals, names, strict=True):
        fg.name = n if names.count(n) == 1 else f"{n}@{seen[n]}"
        seen[n] += 1
