"""Neuron groups: plain values describing which parameter entries belong to which unit."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class LeafSlice:
    """The entries of one parameter leaf that belong to the units of a group.

    `units` has the shape of the leaf's `axes` and holds, for each position along them, the flat
    index of the owning unit within the group (-1: not owned). Along the other axes of the leaf
    every entry belongs to the same unit, so a weight row is `axes=(0,)` and a weight column of a
    consumer is `axes=(1,)`; a stacked ensemble adds its member axis, e.g. `axes=(0, 1)`.

    `kind` says how the entries meet the units: `"weight"` (read by a dense/conv operation),
    `"bias"` (added right after it), `"scale"` (multiplied in, e.g. a norm's scale or an activation
    slope) or `"shift"` (added later, e.g. a norm's shift).
    """

    path: str
    leaf: int
    shape: tuple[int, ...]
    axes: tuple[int, ...]
    units: np.ndarray
    kind: str = ""

    @property
    def count(self) -> int:
        """Number of leaf entries owned by the group's units."""
        other = int(np.prod([d for i, d in enumerate(self.shape) if i not in self.axes], dtype=int))
        return int((self.units >= 0).sum()) * other

    def positions(self, axis: int) -> np.ndarray:
        """Indices along leaf axis `axis` that hold owned entries."""
        k = self.axes.index(axis)
        other = tuple(i for i in range(self.units.ndim) if i != k)
        return np.nonzero((self.units >= 0).any(axis=other))[0]

    def index_text(self) -> str:
        parts = []
        for axis, size in enumerate(self.shape):
            if axis not in self.axes:
                parts.append(":")
                continue
            pos = self.positions(axis)
            if pos.size and (np.diff(pos) == 1).all():
                parts.append(f"{pos[0]}:{pos[-1] + 1}")
            else:
                parts.append(f"<{pos.size} of {size}>")
        return "[" + ", ".join(parts) + "]" if parts else ""

    def __repr__(self) -> str:
        return f"{self.path}{self.index_text()}"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LeafSlice)
            and (self.path, self.leaf, self.shape, self.axes)
            == (other.path, other.leaf, other.shape, other.axes)
            and np.array_equal(self.units, other.units)
        )

    def __hash__(self) -> int:
        return hash((self.path, self.axes, self.units.tobytes()))

    def element_owner(self) -> np.ndarray:
        """The owning unit of every entry of the leaf (-1: not owned), full leaf shape."""
        shape = [self.shape[a] if a in self.axes else 1 for a in range(len(self.shape))]
        order = np.argsort(self.axes)
        units = np.transpose(self.units, order).reshape(shape)
        return np.broadcast_to(units, self.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class NeuronGroup:
    """The hidden units of one layer and every parameter entry that belongs to them.

    Attributes:
        name: the producing layer's path in the model (e.g. `layers[0]`).
        index: position in the anatomy, in execution order.
        unit_shape: shape of the units; leading axes are ensemble members, the last is the width.
        layer_type: the class of the module that owns the producing weight.
        incoming: weight rows (or output channels) and bias entries of the producing layer.
        per_unit: parameters applied to each unit before it reaches the next layer
            (norm scale/shift, learnable activation parameters).
        outgoing: the matching weight columns of every layer that consumes the units.
        shared: the units are residual-stream channels also written by other groups.
        output: the units leave the model (Q values, action means, noise predictions).
        shared_with: the other groups writing the same residual-stream channels.
        normalized: a statistic over the layer's units (LayerNorm's mean and variance, a sum
            or maximum over them, a norm of the whole weight such as spectral normalisation's σ)
            enters the computation, so re-drawing some units changes what the others
            contribute: a reset of such a group is not function-preserving even with zeroed
            outgoing weights.
        paired_with: for attention query (key) units, the groups of the key (query) units they
            meet in the scores. Their outgoing entries are the partner units' incoming entries:
            a reset re-draws a query unit and zeroes its key partner (so the pair's score term
            starts from zero again), and the other way round.
        entangled_with: the other groups whose units are read through the same outgoing
            entries (one layer consumes both, e.g. a layer applied to its own output, or one head
            applied to two producers): zeroing a unit's outgoing weights also silences the
            matching unit of those groups, so a reset is not function-preserving.
        term_kept: why zeroing the group's outgoing entries does not remove its units' term from
            the outputs though the group is neither normalised nor entangled ("": it does), found
            by running the traced program with them zeroed: e.g. query units whose key partners
            pass through a softmax over positions before the product, where a zeroed key row
            becomes 1/n, not 0. A reset of such a group is not function-preserving.
        no_reset: why the group is left out of resets by default ("": it is not), e.g. attention
            query/key pairs, units read through a constant weight, or units that reach the
            outputs only through a sum or max over units: no outgoing weight can be zeroed.
            `ns.reset(..., include_shared=True)` resets such groups too.
        shares_columns: why the group's outgoing columns also read something other than its
            units ("": they do not): at other positions the consuming layer reads another value
            through the same columns (a class token concatenated before the tokens whose units
            these are), so zeroing them removes that value's term too. A reset, even of a
            dormant unit, is not function-preserving, and the group is not reset by default.
    """

    name: str
    index: int
    unit_shape: tuple[int, ...]
    layer_type: type
    incoming: tuple[LeafSlice, ...]
    per_unit: tuple[LeafSlice, ...]
    outgoing: tuple[LeafSlice, ...]
    shared: bool
    output: bool
    shared_with: tuple[str, ...] = ()
    normalized: bool = False
    paired_with: tuple[str, ...] = ()
    no_reset: str = ""
    entangled_with: tuple[str, ...] = ()
    term_kept: str = ""
    shares_columns: str = ""

    @property
    def preserving(self) -> bool:
        """A reset with zeroed outgoing weights leaves the model's function unchanged: the group
        is not `normalized`, not `entangled_with` another one, and zeroing its outgoing entries
        removes its units' term (`term_kept` is empty) and nothing else (`shares_columns` is
        empty)."""
        return (
            not self.normalized
            and not self.entangled_with
            and not self.term_kept
            and not self.shares_columns
        )

    @property
    def width(self) -> int:
        """Units per member (the last axis of `unit_shape`)."""
        return self.unit_shape[-1]

    @property
    def members(self) -> tuple[int, ...]:
        """Leading member axes (stacked ensembles); `()` for a single network."""
        return self.unit_shape[:-1]

    @property
    def n_units(self) -> int:
        return int(np.prod(self.unit_shape, dtype=int))

    @property
    def hidden(self) -> bool:
        return not self.output

    @property
    def resettable(self) -> bool:
        """Reset by default: hidden units that are not residual-stream channels and have no
        other reason to be left out (`no_reset`)."""
        return not self.output and not self.shared and not self.no_reset

    def leaves(self) -> tuple[str, ...]:
        """Paths of every leaf touched by the group."""
        return tuple(
            dict.fromkeys(s.path for s in (*self.incoming, *self.per_unit, *self.outgoing))
        )

    def kind(self) -> str:
        if self.output:
            return "output"
        if self.shared:
            return "shared"
        return "paired" if self.paired_with else "hidden"

    def __repr__(self) -> str:
        def show(slices: tuple[LeafSlice, ...]) -> str:
            return "(" + ", ".join(repr(s) for s in slices) + ")"

        return (
            f"NeuronGroup({self.name!r}, units={self.unit_shape}, {self.kind()}, "
            f"layer={self.layer_type.__name__}, incoming={show(self.incoming)}, "
            f"per_unit={show(self.per_unit)}, outgoing={show(self.outgoing)})"
        )
