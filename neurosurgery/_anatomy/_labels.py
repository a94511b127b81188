"""Compact label arrays and the structural operations on them.

A *label array* gives, for every element of a value, an integer label (a unit, a parameter index;
-1: none). It is stored compactly: it has the value's number of dimensions, and along every axis
where the labels do not change it has size 1 (numpy broadcasting restores the full array). A
convolution's output channels are labelled by an array of shape `(C, 1, 1)` whatever the image
size, so following units costs what the layer's width costs, not what its activations cost.

The functions here apply the structural primitives of a program (reshape, transpose, slicing,
padding, concatenation, gathers, ...) to label arrays, materialising an axis only where an
operation really moves labels along it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int

NONE = -1
Labels = Int[np.ndarray, "..."]


class Dynamic(LookupError):
    """Indices computed from the input select among differently labelled elements."""


def pattern(a: Labels) -> tuple[int, ...]:
    """The axes along which a compact array varies."""
    return tuple(d for d, n in enumerate(a.shape) if n > 1)


def expand(a: Labels, shape: Sequence[Any], axes: Sequence[Any]) -> Labels:
    """Materialise `axes` of a compact array (to their full size in `shape`)."""
    target = [shape[d] if d in axes else a.shape[d] for d in range(a.ndim)]
    if tuple(target) == a.shape:
        return a
    return np.broadcast_to(a, target)


def compress(a: Labels) -> Labels:
    """Shrink every axis along which `a` is constant to size 1."""
    for d in range(a.ndim):
        if a.shape[d] > 1:
            first = np.take(a, [0], axis=d)
            if (a == first).all():
                a = first
    return a


def lift(a: Labels, ndim: int) -> Labels:
    """A compact array of lower rank (a scalar operand) with `ndim` dimensions."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape) if a.ndim < ndim else a


def _blocks(src: Sequence[Any], dst: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
    """Group the axes of a reshape into runs whose sizes multiply to the same number."""
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            out.append(([i], []))
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            out.append(([], [j]))
            j += 1
            continue
        ins, outs = [i], [j]
        a, b = src[i], dst[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b:
                a *= src[i]
                ins.append(i)
                i += 1
            else:
                b *= dst[j]
                outs.append(j)
                j += 1
        out.append((ins, outs))
    return out


def reshape(a: Labels, src: Sequence[Any], dst: Sequence[Any]) -> Labels:
    """Reshape, keeping compact every run of axes along which nothing varies."""
    if 0 in src:
        return np.full(tuple(dst), NONE, np.int32)
    grow: list[int] = []
    out = [1] * len(dst)
    for ins, outs in _blocks(src, dst):
        if any(a.shape[d] > 1 for d in ins):
            grow += ins
            for d in outs:
                out[d] = dst[d]
    return np.ascontiguousarray(expand(a, src, grow)).reshape(out)


def broadcast_in_dim(a: Labels, shape: Sequence[Any], dims: Sequence[Any]) -> Labels:
    out = [1] * len(shape)
    for k, d in enumerate(dims):
        out[d] = a.shape[k]
    return a.reshape(out)


def slice_(a: Labels, start: Sequence[Any], limit: Sequence[Any], strides: Any) -> Labels:
    strides = strides or (1,) * a.ndim
    idx = tuple(
        slice(s, e, st) if a.shape[d] > 1 else slice(None)
        for d, (s, e, st) in enumerate(zip(start, limit, strides, strict=True))
    )
    return a[idx]


def pad(a: Labels, shape: Sequence[Any], config: Sequence[Any]) -> Labels:
    """Pad with unlabelled elements (negative padding crops)."""
    moved = [d for d, c in enumerate(config) if tuple(c) != (0, 0, 0)]
    a = expand(a, shape, moved)
    cfg: list[tuple[int, int, int]] = [
        (int(c[0]), int(c[1]), int(c[2])) if d in moved else (0, 0, 0) for d, c in enumerate(config)
    ]
    return np.asarray(jax.lax.pad(jnp.asarray(a, jnp.int32), jnp.int32(NONE), cfg))


def concatenate(arrays: Sequence[Labels], shapes: Sequence[Sequence[Any]], dim: int) -> Labels:
    ndim = len(shapes[0])
    grow = {d for d in range(ndim) for a in arrays if a.shape[d] > 1} | {dim}
    parts = [
        np.broadcast_to(a, [s[d] if d in grow else 1 for d in range(ndim)])
        for a, s in zip(arrays, shapes, strict=True)
    ]
    return np.concatenate(parts, axis=dim)


def split(a: Labels, sizes: Sequence[Any], axis: int) -> list[Labels]:
    if a.shape[axis] == 1:
        return [a] * len(sizes)
    return list(np.split(a, np.cumsum(sizes)[:-1], axis=axis))


def dynamic_slice(
    a: Labels, shape: Sequence[Any], starts: Sequence[Any], sizes: Sequence[Any]
) -> Labels:
    """`starts[d]` is None where the start is computed from the input."""
    idx = []
    for d, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        if size == shape[d] or a.shape[d] == 1:
            idx.append(slice(None))
        elif start is None:
            raise Dynamic
        else:
            s = min(max(int(start), 0), shape[d] - size)
            idx.append(slice(s, s + size))
    return a[tuple(idx)]


def dynamic_update_slice(
    a: Labels, update: Labels, shape: Sequence[Any], update_shape: Sequence[Any], starts
) -> Labels:
    """The labels after writing `update` into `a` at constant `starts`."""
    grow = [d for d in range(len(shape)) if update_shape[d] != shape[d] or update.shape[d] > 1]
    out = np.array(expand(a, shape, grow))
    idx = []
    for d, start in enumerate(starts):
        if d in grow:
            s = min(max(int(start), 0), shape[d] - update_shape[d])
            idx.append(slice(s, s + update_shape[d]))
        else:
            idx.append(slice(None))
    out[tuple(idx)] = update
    return compress(out)


def gather(
    a: Labels,
    shape: Sequence[Any],
    indices: np.ndarray | None,
    index_shape: Sequence[Any],
    params: dict[str, Any],
) -> Labels:
    """A gather on labels; `indices` is None where they are computed from the input (then the
    labels must be constant along every indexed axis)."""
    dn = params["dimension_numbers"]
    sizes = list(params["slice_sizes"])
    batching = set(getattr(dn, "operand_batching_dims", ()))
    indexed = set(dn.start_index_map) | set(dn.collapsed_slice_dims) | batching
    if indices is None:
        for d in dn.start_index_map:
            if a.shape[d] > 1 and sizes[d] < shape[d]:
                raise Dynamic
        indices = np.zeros(tuple(index_shape), np.int32)
        a = expand(a, shape, sorted(batching))
    else:
        a = expand(a, shape, sorted(indexed))
    for d in range(len(shape)):
        if d not in indexed and a.shape[d] == 1:
            sizes[d] = 1
    bind = dict(params, slice_sizes=tuple(sizes), fill_value=NONE)
    out = jax.lax.gather_p.bind(jnp.asarray(a, jnp.int32), jnp.asarray(indices, jnp.int32), **bind)
    return compress(np.asarray(out, np.int32))


def scatter(
    a: Labels,
    shape: Sequence[Any],
    indices: np.ndarray,
    update: Labels,
    update_shape: Sequence[Any],
    params: dict[str, Any],
) -> Labels:
    """The labels of `a` with `update` written at constant `indices` (last write wins)."""
    bind = {k: v for k, v in params.items() if k not in ("update_jaxpr", "update_consts")}
    out = jax.lax.scatter_p.bind(
        jnp.asarray(np.broadcast_to(a, shape), jnp.int32),
        jnp.asarray(indices, jnp.int32),
        jnp.asarray(np.broadcast_to(update, update_shape), jnp.int32),
        update_jaxpr=None,
        update_consts=(),
        **bind,
    )
    return compress(np.asarray(out, np.int32))
