"""Edits of single units' parameter entries that the unit-level strategies share: per-unit values
spread over a leaf, one unit's entries read from another unit's, and the consumers' biases that
absorb a unit's mean contribution.

Everything works from the anatomy's leaf slices (any layout: rows, columns, channels, stacked
members), with index tables computed once, in NumPy, from the slices' static unit maps.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._anatomy._anatomy import Anatomy
from .._anatomy._groups import LeafSlice, NeuronGroup
from .._errors import AnatomyError
from .._metrics import unit_reduce


def spread(s: LeafSlice, group: NeuronGroup, values: Array, fill: ArrayLike = 0) -> Array:
    """Per-unit `values` (the group's unit shape) on every entry of the slice's leaf that a unit
    owns, `fill` on the others: an array of the leaf's shape."""
    values = jnp.asarray(values)
    flat = jnp.concatenate([jnp.ravel(values), jnp.full((1,), fill, values.dtype)])
    sel = flat[np.where(s.units >= 0, s.units, group.n_units)]
    shape = [s.shape[a] if a in s.axes else 1 for a in range(len(s.shape))]
    sel = jnp.transpose(sel, tuple(np.argsort(s.axes))).reshape(shape)
    return jnp.broadcast_to(sel, s.shape)


def _positions(s: LeafSlice, group: NeuronGroup) -> tuple[np.ndarray, np.ndarray]:
    """`table[u, r]`: the flat position (along the slice's axes) of unit u's r-th entry, and
    `rank[p]`: which entry of its unit position p is (0 where no unit owns it)."""
    units = s.units.reshape(-1)
    owned = units >= 0
    counts = np.bincount(units[owned], minlength=group.n_units)
    present = counts[counts > 0]
    if present.size and not (present == present[0]).all():
        raise AnatomyError(
            f"The units of group {group.name!r} own unequal numbers of entries of {s.path} "
            f"({sorted(set(present.tolist()))}), so one unit's entries cannot be copied onto "
            "another's there; leave this group out of the strategy."
        )
    width = int(present[0]) if present.size else 0
    table = np.full((group.n_units, max(width, 1)), -1, np.int32)
    rank = np.zeros(units.size, np.int32)
    seen = np.zeros(group.n_units, np.int32)
    for p in np.flatnonzero(owned):
        u = units[p]
        table[u, seen[u]] = p
        rank[p] = seen[u]
        seen[u] += 1
    return table, rank


def from_units(s: LeafSlice, group: NeuronGroup, leaf: Array, source: Array) -> Array:
    """The leaf with every entry of unit u replaced by the matching entry of unit `source[u]`
    (flat unit indices; `source[u] = u` keeps the unit's own). Entries no unit owns are kept.

    The matching entry is the one in the same place along the leaf's other axes and at the same
    rank among the unit's own positions (the same kernel offset of a channel, the same spatial
    position of a flattened feature map)."""
    table, rank = _positions(s, group)
    rest = tuple(a for a in range(leaf.ndim) if a not in s.axes)
    perm = (*s.axes, *rest)
    moved = jnp.transpose(leaf, perm)
    flat = moved.reshape(int(np.prod([leaf.shape[a] for a in s.axes], dtype=int)), -1)
    units = s.units.reshape(-1)
    owned = units >= 0
    src = jnp.asarray(source, jnp.int32)[np.where(owned, units, 0)]
    there = jnp.asarray(table)[src, rank]
    there = jnp.where(jnp.asarray(owned) & (there >= 0), there, jnp.arange(units.size))
    new = flat[there].reshape(moved.shape)
    return jnp.transpose(new, tuple(np.argsort(perm)))


def consumers(
    anatomy: Anatomy, group: NeuronGroup
) -> list[tuple[LeafSlice, NeuronGroup, LeafSlice]]:
    """For each outgoing slice of `group`: the group that reads that leaf as its weights, and
    its weight slice. Raises when a leaf has no such reader."""
    out = []
    for s in group.outgoing:
        found = [
            (c, t)
            for c in anatomy.groups
            for t in c.incoming
            if t.kind == "weight" and t.leaf == s.leaf
        ]
        if not found:
            raise AnatomyError(
                f"The outgoing weights {s.path} of group {group.name!r} are not the incoming "
                "weights of any group, so their consumers' biases cannot be found; pass "
                "bias_correction=False."
            )
        out.append((s, *found[0]))
    return out


def check_consumer_biases(anatomy: Anatomy, group: NeuronGroup) -> None:
    """Every consumer of `group` has a bias to absorb a unit's mean contribution."""
    if group.paired_with:
        raise AnatomyError(
            f"Group {group.name!r} meets {', '.join(map(repr, group.paired_with))} in a product "
            "of two activations (attention's queries and keys): no consumer's bias can absorb "
            "a replaced unit's mean contribution there. Pass bias_correction=False, or leave "
            "include_shared off (paired groups are then not operated)."
        )
    for s, consumer, _ in consumers(anatomy, group):
        if not any(b.kind == "bias" for b in consumer.incoming):
            raise AnatomyError(
                f"Group {group.name!r} feeds {consumer.name!r} (through {s.path}), which has no "
                "bias to absorb a replaced unit's mean contribution; pass bias_correction=False "
                "(replaced units then simply stop contributing)."
            )


def absorb_mean(
    anatomy: Anatomy, group: NeuronGroup, mean: Array, leaves: list[Array]
) -> list[Array]:
    """The leaves with each consumer's bias shifted by Σ_i w_ki · mean_i: what the units'
    `mean` activations (zero for the units left alone) contributed through their outgoing
    weights. Exact for dense consumers and unpadded convolutions; for a feature map flattened
    into a dense layer, `mean` is the unit's average over positions."""
    leaves = list(leaves)
    for s, consumer, t in consumers(anatomy, group):
        contributions = list(leaves)  # only the consumer's weight leaf is read
        contributions[t.leaf] = leaves[s.leaf] * spread(s, group, mean.astype(leaves[s.leaf].dtype))
        shift = unit_reduce(consumer, (t,), contributions, "sum")
        for b in consumer.incoming:
            if b.kind == "bias":
                leaves[b.leaf] = leaves[b.leaf] + spread(
                    b, consumer, shift.astype(leaves[b.leaf].dtype)
                )
    return leaves
