"""Which parameter entries belong to which unit of which group, checked for double owners."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .._errors import AnatomyError
from ._resolve import FinalGroup
from ._trace import Tracer

SHARED = -2  # an entry met by several units of one group

SHARED_PARTNER = (
    "several of its units pair with one unit of `{partner}` in an attention's scores (query "
    "heads sharing a key head, as in grouped-query attention): that unit's rows are no one "
    "unit's to zero, so zeroing outgoing entries does not remove a unit's term and a reset "
    "changes the outputs"
)


class LabelMap:
    """Unit labels (mixes included) -> the groups and units they stand for.

    Kept as flat arrays: for label `l`, `fg[start[l]:start[l + 1]]` and `unit[...]` list the
    (group, unit) pairs it stands for, so that whole label arrays are mapped at once.
    """

    def __init__(self, t: Tracer, comp_of: dict[int, int], finals: list[FinalGroup]):
        self.t = t
        where = {c: (i, k) for i, fg in enumerate(finals) for k, c in enumerate(fg.comps)}
        base_fg = np.full(t.next_label, -1, np.int64)
        base_unit = np.full(t.next_label, -1, np.int64)
        for u, c in comp_of.items():
            if c in where:
                base_fg[u], base_unit[u] = where[c]
        members = [
            np.fromiter(t.mixes[lab], np.int64) if lab in t.mixes else np.array([lab], np.int64)
            for lab in range(t.next_label)
        ]
        counts = np.array([len(m) for m in members], np.int64)
        self.start = np.concatenate([[0], np.cumsum(counts)])
        flat = np.concatenate(members) if members else np.zeros(0, np.int64)
        keep_fg, keep_unit = base_fg[flat], base_unit[flat]
        self.fg, self.unit = keep_fg, keep_unit

    def _pairs(self, labels: np.ndarray):
        """For distinct labels: (index of the label, group, unit) of every pair they stand for."""
        labels = np.asarray(labels, np.int64)
        starts, ends = self.start[labels], self.start[labels + 1]
        counts = ends - starts
        owner = np.repeat(np.arange(len(labels)), counts)
        idx = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        idx += np.repeat(starts, counts)
        return owner, self.fg[idx], self.unit[idx]

    def targets(self, label: int) -> dict[int, set[int]]:
        _, fg, unit = self._pairs(np.array([label]))
        out: dict[int, set[int]] = {}
        for g, k in zip(fg.tolist(), unit.tolist(), strict=True):
            if g >= 0:
                out.setdefault(g, set()).add(k)
        return out

    def local(self, arr: np.ndarray, group: int) -> np.ndarray:
        """Each label of `arr` as a unit of `group` (-1: none of its units, SHARED: several)."""
        labs, inv = np.unique(arr, return_inverse=True)
        table = np.full(len(labs), -1, np.int64)
        ok = labs >= 0
        if ok.any():
            owner, fg, unit = self._pairs(labs[ok])
            sel = fg == group
            lo = np.full(int(ok.sum()), np.iinfo(np.int64).max)
            hi = np.full(int(ok.sum()), -1)
            np.minimum.at(lo, owner[sel], unit[sel])
            np.maximum.at(hi, owner[sel], unit[sel])
            got = np.where(hi < 0, -1, np.where(lo == hi, hi, SHARED))
            table[ok] = got
        return np.asarray(table[inv]).reshape(np.shape(arr))

    def indicator(self, labels: np.ndarray, n_groups: int) -> np.ndarray:
        """(len(labels), n_groups) booleans: which groups each label stands for units of."""
        out = np.zeros((len(labels), n_groups), bool)
        owner, fg, _ = self._pairs(np.asarray(labels, np.int64))
        keep = fg >= 0
        out[owner[keep], fg[keep]] = True
        return out

    def groups_of(self, labels: Any) -> set[int]:
        labs = np.unique(np.asarray(labels, np.int64).ravel())
        labs = labs[labs >= 0]
        if not labs.size:
            return set()
        _, fg, _ = self._pairs(labs)
        return set(np.unique(fg[fg >= 0]).tolist())


def _combine(parts: list[np.ndarray]) -> np.ndarray:
    shape = np.broadcast_shapes(*(p.shape for p in parts))
    out = np.array(np.broadcast_to(parts[0], shape))
    for p in parts[1:]:
        p = np.broadcast_to(p, shape)
        clash = (out >= 0) & (p >= 0) & (out != p)
        out = np.where(out == -1, p, out)
        out[clash | (p == SHARED)] = SHARED
    return out


def owners(t: Tracer, lm: LabelMap, finals: list[FinalGroup], partners: dict[int, set[int]]):
    """Per group: {(role, kind, leaf): owner array in the leaf's frame (compact)}."""
    acc: dict[tuple[int, str, str, int], list[np.ndarray]] = defaultdict(list)
    ops: dict[tuple[int, str, str, int], list] = defaultdict(list)
    for rel in t.rels:
        if rel.owner is not None:
            arr = rel.owner
            for g in lm.groups_of(np.unique(arr)):
                acc[(g, rel.role, rel.kind, rel.leaf)].append(lm.local(arr, g))
                ops[(g, rel.role, rel.kind, rel.leaf)].append(rel.op)
            continue
        assert rel.flat is not None and rel.labels is not None
        size = int(np.prod(t.leaf_shapes[rel.leaf], dtype=int))
        for g in lm.groups_of(np.unique(rel.labels)):
            local = lm.local(rel.labels, g)
            keep = local != -1
            flat, local = rel.flat[keep], local[keep]
            out = np.full(size, -1, np.int64)
            order = np.lexsort((local, flat))
            flat, local = flat[order], local[order]
            first = np.r_[True, flat[1:] != flat[:-1]]
            out[flat[first]] = local[first]
            many = np.zeros(size, bool)
            np.logical_or.at(many, flat[~first], local[~first] != out[flat[~first]])
            out[many] = SHARED
            acc[(g, rel.role, rel.kind, rel.leaf)].append(out.reshape(t.leaf_shapes[rel.leaf]))
            ops[(g, rel.role, rel.kind, rel.leaf)].append(rel.op)
    result: dict[int, dict[tuple[str, str, int], np.ndarray]] = defaultdict(dict)
    for key, parts in acc.items():
        g, role, kind, leaf = key
        own = _combine(parts)
        if role == "per_unit":
            own = np.where(own == SHARED, -1, own)  # a shared parameter is not per-unit
        elif (own == SHARED).any():
            raise _double(t, lm, g, finals[g], role, leaf, ops[key])
        if (own >= 0).any():
            result[g][(role, kind, leaf)] = own
    _check_incoming(t, finals, result)
    _partner_outgoing(t, lm, finals, partners, result)
    return result


def _double(t: Tracer, lm: LabelMap, g: int, fg: FinalGroup, role: str, leaf: int, ops: list):
    path = t.leaf_paths[leaf]
    where = "; ".join(sorted({f"{t.where(op)}" for op in ops}))
    meets = [
        t.where(op) for _, a, b, op in t.meetings if g in lm.groups_of(a) and g in lm.groups_of(b)
    ]
    how = f" Units of the group meet at {', '.join(sorted(set(meets))[:3])}." if meets else ""
    return AnatomyError(
        f"Entries of `{path}` would belong to two units of group {fg.name!r} as their "
        f"{role} weights (read at {where}), so resetting one unit would change the other.{how} "
        "The units are combined in a pattern that does not pair them one to one. Declare the "
        "module's neuron groups (`__neuron_groups__`, see `neurosurgery.DeclaredGroup`) or call "
        "the model through `fn=` so that this part is not traced."
    )


def _check_incoming(t: Tracer, finals: list[FinalGroup], result) -> None:
    """An entry may be the incoming weight of one group only."""
    seen: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for g, parts in result.items():
        for (role, _, leaf), own in parts.items():
            if role == "incoming":
                seen[leaf].append((g, own))
    for leaf, items in seen.items():
        for i, (g, a) in enumerate(items):
            for h, b in items[i + 1 :]:
                a2, b2 = np.broadcast_arrays(a, b)
                if h != g and ((a2 >= 0) & (b2 >= 0)).any():
                    raise AnatomyError(
                        f"`{t.leaf_paths[leaf]}` is read as the incoming weight of two different "
                        f"groups of units ({finals[g].name!r} and {finals[h].name!r}), e.g. a "
                        "weight used both as `W @ x` and as `W.T @ y`, or an embedding table "
                        "tied to an output layer; a reset of one would change the other. Declare "
                        "the module's neuron groups (`__neuron_groups__`) or untie the weights."
                    )


def _partner_outgoing(t, lm, finals, partners, result) -> None:
    """A query unit's outgoing entries are its key's incoming entries, and vice versa."""
    index = {c: (i, k) for i, fg in enumerate(finals) for k, c in enumerate(fg.comps)}
    for g, fg in enumerate(finals):
        if not fg.role:
            continue
        tables: dict[int, np.ndarray] = {}
        for k, c in enumerate(fg.comps):
            for pc in partners.get(c, ()):
                if pc not in index:
                    continue
                h, pk = index[pc]
                table = tables.setdefault(h, np.full(len(finals[h].comps), -1, np.int64))
                if table[pk] not in (-1, k):
                    # several of this group's units pair with one partner unit (grouped-query
                    # attention: query heads sharing a key head): that partner's rows are no
                    # one unit's to zero
                    table[pk] = SHARED
                    fg.kept = SHARED_PARTNER.format(partner=finals[h].name)
                elif table[pk] == -1:
                    table[pk] = k
        for h, table in tables.items():
            for (role, kind, leaf), own in list(result.get(h, {}).items()):
                if role != "incoming":
                    continue
                mapped = np.where(own >= 0, table[np.maximum(own, 0)], -1)
                mapped = np.where(mapped == SHARED, -1, mapped)
                if not (mapped >= 0).any():
                    continue
                key = ("outgoing", kind, leaf)
                prev = result[g].get(key)
                result[g][key] = mapped if prev is None else _combine([prev, mapped])
