"""Explicit neuron groups, for modules whose computation the tracer cannot follow.

A module declares its groups with a `__neuron_groups__(self)` method returning
[`DeclaredGroup`][neurosurgery.DeclaredGroup] values. The anatomy then treats the module as one
opaque step: nothing inside it is traced for units, and the declaration stands instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._errors import AnatomyError
from ._graph import DECLARED_PREFIX
from ._groups import LeafSlice, NeuronGroup


@dataclasses.dataclass(frozen=True)
class DeclaredGroup:
    """One neuron group of a module, declared by hand.

    Each role lists `(path, axis)` pairs: the leaf at `path` (relative to the declaring module,
    written as `jax.tree_util.keystr` writes it, e.g. `".w1"` or `".layers[0].weight"`) holds one
    slice per unit along `axis`. A third element may give the entries' kind (see
    [`LeafSlice`][neurosurgery.LeafSlice]); by default incoming and outgoing entries are
    `"weight"` and per-unit entries `"shift"`.

    Attributes:
        name: the group's name (prefixed with the module's path in the model).
        incoming: weights and biases producing the units.
        outgoing: weights consuming the units.
        per_unit: per-unit parameters (norm scale/shift, activation parameters).
        output: the units leave the model.
        shared: the units are residual-stream channels (scorable, not reset by default).
    """

    name: str
    incoming: Sequence[tuple[str, int] | tuple[str, int, str]]
    outgoing: Sequence[tuple[str, int] | tuple[str, int, str]] = ()
    per_unit: Sequence[tuple[str, int] | tuple[str, int, str]] = ()
    output: bool = False
    shared: bool = False


def declaring_modules(model: Any) -> list[tuple[tuple, Any]]:
    """(key path, module) of every module in `model` with a `__neuron_groups__` method."""
    found = []

    def is_leaf(x: Any) -> bool:
        return isinstance(x, eqx.Module) and hasattr(x, "__neuron_groups__")

    for path, node in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_leaf)[0]:
        if is_leaf(node):
            found.append((path, node))
    return found


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            tree = tree[key.idx]
        elif isinstance(key, jax.tree_util.DictKey):
            tree = tree[key.key]
        else:  # pragma: no cover - flattened index keys of custom nodes
            raise AnatomyError(f"cannot address {key} in a declared module path")
    return tree


class _Opaque(eqx.Module):
    inner: Any
    tag: str = eqx.field(static=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params, static = eqx.partition(self.inner, eqx.is_array)
        # Only arrays are traced: Python flags (`inference=True`, `key=None`) stay Python values.
        dyn, fixed = eqx.partition((args, kwargs), eqx.is_array)

        def run(p: Any, d: Any) -> Any:
            a, k = eqx.combine(d, fixed)
            return eqx.combine(p, static)(*a, **k)

        run.__name__ = self.tag
        return jax.jit(run)(params, dyn)


def make_opaque(model: Any, found: list[tuple[tuple, Any]]) -> Any:
    """Replace every declaring module by a call the tracer does not enter."""
    for i, (path, module) in enumerate(found):
        if not path:
            return _Opaque(module, f"{DECLARED_PREFIX}{i}")
        model = eqx.tree_at(
            lambda m, p=path: _get(m, p), model, _Opaque(module, f"{DECLARED_PREFIX}{i}")
        )
    return model


def declared_groups(
    found: list[tuple[tuple, Any]],
    paths: list[str],
    shapes: list[tuple[int, ...]],
    first_index: int,
) -> list[NeuronGroup]:
    """Turn declarations into neuron groups with leaf slices in the whole model's terms."""
    groups = []
    for path, module in found:
        prefix = jax.tree_util.keystr(path)
        for decl in module.__neuron_groups__():
            slices: dict[str, list[LeafSlice]] = {}
            width = None
            for role in ("incoming", "outgoing", "per_unit"):
                slices[role] = []
                for entry in getattr(decl, role):
                    rel, axis = entry[0], entry[1]
                    kind = (
                        entry[2]
                        if len(entry) > 2
                        else ("shift" if role == "per_unit" else "weight")
                    )
                    full = prefix + rel
                    if full not in paths:
                        own = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
                        raise AnatomyError(
                            f"{type(module).__name__} at {prefix or 'the root'} declares group "
                            f"{decl.name!r} with leaf {rel!r}, which it does not have. Its array "
                            f"leaves are {own}."
                        )
                    leaf = paths.index(full)
                    shape = shapes[leaf]
                    size = shape[axis]
                    if role == "incoming" and width is None:
                        width = size
                    if size != width:
                        raise AnatomyError(
                            f"Declared group {decl.name!r}: {full} has {size} entries along axis "
                            f"{axis}, but the group has {width} units."
                        )
                    slices[role].append(
                        LeafSlice(
                            full,
                            leaf,
                            shape,
                            (axis % len(shape),),
                            np.arange(size, dtype=np.int32),
                            kind,
                        )
                    )
            if width is None:
                raise AnatomyError(f"Declared group {decl.name!r} names no incoming leaf.")
            name = f"{prefix.lstrip('.')}.{decl.name}" if prefix else decl.name
            groups.append(
                NeuronGroup(
                    name,
                    first_index + len(groups),
                    (width,),
                    type(module),
                    tuple(slices["incoming"]),
                    tuple(slices["per_unit"]),
                    tuple(slices["outgoing"]),
                    shared=decl.shared,
                    output=decl.output,
                )
            )
    return groups
