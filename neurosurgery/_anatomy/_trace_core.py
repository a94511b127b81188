"""State shared by the tracer's operation families: values, groups, relations and events.

Every value of the program carries, element by element:

* *unit labels*, as a list of compact label arrays ("factors", see `_labels`), each varying along
  its own axes: an element belongs to the units of every factor at its position. A factor label
  may be a *mix* standing for several units at once (a residual stream channel written by
  several layers, a gate multiplied into a unit);
* *parameter factors*: for values computed from parameters only (a weight, its transpose, a
  bias broadcast to an image), which entry of which leaf each element was read from, as one
  compact index array per leaf axis.

What the tracer learns is kept as flat records: the relations between units and parameter
entries (incoming, per-unit, outgoing; in each leaf's own frame) and events (units meeting in an
elementwise operation, query/key pairs, reductions over units). `_resolve` turns them into
neuron groups. Nothing here depends on names, attribute order or module types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._errors import AnatomyError
from ._graph import Const, Graph, Op
from ._labels import NONE, lift, pattern


@dataclasses.dataclass(frozen=True)
class PFactor:
    """Where the elements of a parameter-derived value were read from.

    `maps[a]` (compact, the value's rank) is the index along axis `a` of leaf `leaf` (-1: no
    parameter). With `leaf == -1`, `maps[0]` holds global parameter ids instead.
    """

    leaf: int
    maps: tuple[np.ndarray, ...]
    axes: tuple[int | None, ...] = ()  # the value axis each leaf axis runs along (None: unknown)

    def lifted(self, ndim: int) -> PFactor:
        """The same factor for a value of rank `ndim` (leading axes added by broadcasting)."""
        if not self.maps or self.maps[0].ndim >= ndim:
            return self
        k = ndim - self.maps[0].ndim
        axes = tuple(None if a is None else a + k for a in self.axes)
        return PFactor(self.leaf, tuple(lift(m, ndim) for m in self.maps), axes)

    def moved(self, maps: tuple[np.ndarray, ...], where: dict[int, int] | None) -> PFactor:
        """New maps, with each known axis sent to `where[axis]` (None: axes unchanged)."""
        if where is None:
            return PFactor(self.leaf, maps, self.axes)
        axes = tuple(None if a is None else where.get(a) for a in self.axes)
        return PFactor(self.leaf, maps, axes)


@dataclasses.dataclass
class Value:
    """What the tracer knows about one value of the program."""

    units: list[np.ndarray] = dataclasses.field(default_factory=list)
    params: list[PFactor] = dataclasses.field(default_factory=list)
    dep_input: bool = False
    dep_param: bool = False
    const: Any = None
    pstats: frozenset[int] = frozenset()  # leaves folded in by reductions / unknown operations
    stage: int = -1  # raw group whose `W x (+ b)` this value still is (moved, not transformed)
    exclusive: bool = False  # ... and that value is read by one operation only
    kind: str = ""  # producer / pre / act / pass: how the value relates to its units' chain
    noise: bool = False  # computed from random keys (and constants) only: data, but no units


@dataclasses.dataclass
class RawGroup:
    """Units created by reading one weight leaf along fixed unit axes (one or more call sites)."""

    first: int
    unit_shape: tuple[int, ...]
    leaf: int
    fixed: tuple[bool, ...]  # unit axes that each call site reads at one index (a scan's layer)
    op: Op
    produced: set[int] = dataclasses.field(default_factory=set)
    weights: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return int(np.prod(self.unit_shape, dtype=int))


@dataclasses.dataclass
class Rel:
    """Parameter entries of one leaf related to unit labels: a compact `owner` array in the
    leaf's frame, or explicit flat indices and their labels."""

    role: str  # incoming / per_unit / outgoing
    kind: str  # weight / bias / scale / shift
    leaf: int
    owner: np.ndarray | None
    flat: np.ndarray | None
    labels: np.ndarray | None
    op: Op


class TracerCore:
    """Label state and helpers; the operation families extend it."""

    def __init__(
        self,
        graph: Graph,
        leaf_offsets: list[int],
        leaf_shapes: list[tuple[int, ...]],
        leaf_paths: list[str],
    ):
        self.graph = graph
        self.offsets = np.asarray(leaf_offsets, np.int64)
        self.leaf_shapes = leaf_shapes
        self.leaf_paths = leaf_paths
        self.next_label = 0
        self.unit_group: dict[int, int] = {}
        self.mixes: dict[int, frozenset[int]] = {}
        self.mix_ids: dict[frozenset[int], int] = {}
        self.groups: list[RawGroup] = []
        self.group_keys: dict[Any, int] = {}
        self.rels: list[Rel] = []
        self.meetings: list[tuple[str, np.ndarray, np.ndarray, Op]] = []
        self.pairs: list[tuple[np.ndarray, np.ndarray, Op]] = []
        self.reduced: list[tuple[np.ndarray, Op]] = []
        self.weightless: list[tuple[np.ndarray, Op, str]] = []
        self.read_out: list[np.ndarray] = []  # labels read into the outputs through a constant
        self.crowded: list[tuple[np.ndarray, Op]] = []  # units read where other values are too
        self.values: list[Value | None] = [None] * len(graph.shapes)
        self.snaps: dict[int, dict[tuple[int, ...], Value]] = {}
        self.loop_index: tuple[int, ...] = ()
        self.producer: dict[int, Op] = {}
        self.creators: set[int] = set()  # ids of the operations that create units
        n = len(leaf_shapes)
        for i, vid in enumerate(graph.inputs):
            shape = graph.shapes[vid]
            if i < n:
                maps = tuple(
                    np.arange(s, dtype=np.int32).reshape(_axis(k, len(shape)))
                    for k, s in enumerate(shape)
                )
                pf = PFactor(i, maps, tuple(range(len(shape))))
                self.set(vid, Value(params=[pf], dep_param=True))
            else:
                key = jax.dtypes.issubdtype(graph.dtypes[vid], jax.dtypes.prng_key)
                self.set(vid, Value(dep_input=True, noise=bool(key)))

    def run_ops(self, ops: list[Op]) -> None:  # pragma: no cover - provided by Tracer
        raise NotImplementedError

    # ---- values ----------------------------------------------------------------------------
    def set(self, vid: int, value: Value) -> None:
        self.values[vid] = value
        if vid in self.graph.loops:
            self.snaps.setdefault(vid, {})[self.loop_index] = value

    def value(self, atom: int | Const) -> Value:
        if isinstance(atom, Const):
            return Value(const=atom.value)
        v = self.values[atom]
        assert v is not None, f"value {atom} used before it was traced"
        return v

    def shape(self, atom: int | Const) -> tuple[int, ...]:
        if isinstance(atom, Const):
            return tuple(np.shape(atom.value))
        return self.graph.shapes[atom]

    def exclusive(self, vid: int) -> bool:
        return self.graph.uses[vid] == 1

    # ---- labels ----------------------------------------------------------------------------
    def members(self, label: int) -> frozenset[int]:
        return self.mixes.get(label, frozenset((label,)))

    def mix(self, a: int, b: int) -> int:
        key = self.members(a) | self.members(b)
        if len(key) == 1:
            return next(iter(key))
        if key not in self.mix_ids:
            self.mix_ids[key] = self.next_label
            self.mixes[self.next_label] = key
            self.next_label += 1
        return self.mix_ids[key]

    def union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Element by element, the labels standing for the units of both arrays."""
        a, b = np.broadcast_arrays(a, b)
        out = np.where(a < 0, b, a).astype(np.int32)
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            key = (a[both].astype(np.int64) << 32) | b[both].astype(np.int64)
            uniq, inverse = np.unique(key, return_inverse=True)
            table = np.array([self.mix(int(k >> 32), int(k & 0xFFFFFFFF)) for k in uniq], np.int32)
            out[both] = table[inverse]
        return out

    def normal(self, factors: list[np.ndarray], ndim: int) -> list[np.ndarray]:
        """One factor per pattern, unlabelled factors dropped."""
        by: dict[tuple[int, ...], np.ndarray] = {}
        for f in factors:
            f = lift(np.asarray(f, np.int32), ndim)
            if not (f >= 0).any():
                continue
            p = pattern(f)
            by[p] = f if p not in by else self.union(by[p], f)
        return list(by.values())

    def labels_of(self, factors: list[np.ndarray]) -> np.ndarray:
        """The distinct labels of some factors."""
        if not factors:
            return np.zeros(0, np.int32)
        return np.unique(np.concatenate([f[f >= 0].ravel() for f in factors]))

    def meet(
        self,
        kind: str,
        a: np.ndarray,
        b: np.ndarray,
        op: Op,
        with_a: Sequence[np.ndarray] = (),
        with_b: Sequence[np.ndarray] = (),
    ) -> None:
        """Record units of `a` and `b` meeting element by element (`kind`: add, layer, mul,
        either). `with_a` (`with_b`) are all the factors of `a`'s (`b`'s) operand: units found
        together in both operands already (`x + x**3`) do not meet anew."""
        shape = np.broadcast_shapes(a.shape, b.shape, *(o.shape for o in (*with_a, *with_b)))
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
        m = (a >= 0) & (b >= 0) & (a != b)
        a_in_b = np.zeros(shape, bool)
        b_in_a = np.zeros(shape, bool)
        for other in with_b:
            a_in_b |= np.broadcast_to(other, shape) == a
        for other in with_a:
            b_in_a |= np.broadcast_to(other, shape) == b
        m &= ~(a_in_b & b_in_a)
        if m.any():
            pairs = np.unique(np.stack([a[m], b[m]]), axis=1)
            self.meetings.append((kind, pairs[0], pairs[1], op))

    # ---- messages ---------------------------------------------------------------------------
    def where(self, op: Op) -> str:
        return f"`{op.name}` at {op.source}"

    def describe_units(self, labels: np.ndarray) -> str:
        groups = set()
        for lab in np.unique(labels[labels >= 0]):
            for u in self.members(int(lab)):
                groups.add(self.unit_group[u])
        names = sorted({self.leaf_paths[self.groups[g].leaf] for g in groups})
        return ", ".join(f"units produced by `{n}`" for n in names) or "units"

    def cannot_follow(self, op: Op, labels: np.ndarray | list[np.ndarray], why: str):
        if isinstance(labels, list):
            labels = self.labels_of(labels)
        hint = HINTS.get(op.name, "")
        return AnatomyError(
            f"The tracer cannot follow {self.where(op)}: it receives the "
            f"{self.describe_units(labels)} and {why}. Declare the neuron groups of the module "
            "that performs this operation explicitly (give the module a `__neuron_groups__` "
            f"method, see `neurosurgery.DeclaredGroup`{hint}), call the model through `fn=` so "
            "that this operation is not traced, or express the operation with dense/conv layers "
            "and elementwise functions."
        )

    def describe_leaves(self, leaves: frozenset[int] | set[int]) -> str:
        return ", ".join(f"`{self.leaf_paths[i]}`" for i in sorted(leaves))


#: where the guide shows a declaration for a family that routes units through an operation
HINTS = {
    "top_k": "; a mixture of experts routed by top-k declares each expert's hidden layer as in "
    "the anatomy guide's mixture-of-experts example",
}


def _axis(k: int, ndim: int) -> tuple[int, ...]:
    """The shape of an index vector along axis `k` of an `ndim`-dimensional array."""
    return tuple(-1 if d == k else 1 for d in range(ndim))


def params_leaves(v: Value) -> frozenset[int]:
    """Every leaf a parameter-derived value was computed from."""
    return frozenset(p.leaf for p in v.params if p.leaf >= 0) | v.pstats


__all__ = ["NONE", "PFactor", "RawGroup", "Rel", "TracerCore", "Value", "params_leaves"]
