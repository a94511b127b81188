"""`anatomy(model, *example_args)`: the neuron groups of any Equinox model, from its traced program."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterator, Mapping
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, PyTree

from .._errors import AnatomyError
from ._graph import Graph, evaluate
from ._groups import NeuronGroup


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a tapped value (leading batch axes, then the value's own shape) is laid out as
    `(*batch, positions, *unit_shape)`: every unit's entries at one position each.

    `perm` moves the value's position axes before its unit axes (units already in order along
    them); otherwise `gather[p, u]` is the flat index of unit `u`'s `p`-th entry.
    """

    perm: tuple[int, ...] | None
    gather: np.ndarray | None
    positions: int
    unit_shape: tuple[int, ...]

    def __call__(self, x: Array, batch_ndim: int = 1) -> Array:
        batch = x.shape[:batch_ndim]
        if self.perm is not None:
            axes = (*range(batch_ndim), *(batch_ndim + a for a in self.perm))
            x = jnp.transpose(x, axes) if axes != tuple(range(x.ndim)) else x
            return x.reshape(*batch, self.positions, *self.unit_shape)
        assert self.gather is not None
        flat = x.reshape(*batch, -1)[..., jnp.asarray(self.gather)]
        return flat.reshape(*batch, self.positions, *self.unit_shape)


@dataclasses.dataclass(frozen=True)
class _Site:
    """One place where a group is observed: a call of its layer, or its layer inside a scan
    body (then observed at every iteration: the scan's iterations lead the value's axes)."""

    pre: int  # value id where the gradient enters the unit's activation (after per-unit norms)
    post: int  # value id of the unit's output as its consumers read it
    pre_layout: _Layout
    post_layout: _Layout


@dataclasses.dataclass(frozen=True)
class _Taps:
    sites: tuple[_Site, ...]


def _compress(owner: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    axes = []
    reduced = owner
    for a in range(owner.ndim):
        if not (owner == np.take(owner, [0], axis=a)).all():
            axes.append(a)
    for a in reversed(range(owner.ndim)):
        if a not in axes:
            reduced = np.take(reduced, 0, axis=a)
    return tuple(axes), np.asarray(reduced, dtype=np.int32)


def _owner_type(model: Any, path: tuple) -> type:
    obj: Any = model
    owner: Any = model
    for key in path[:-1]:
        if isinstance(key, jax.tree_util.GetAttrKey):
            obj = getattr(obj, key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            obj = cast(Any, obj)[key.idx]
        elif isinstance(key, jax.tree_util.DictKey):
            obj = cast(Any, obj)[key.key]
        else:
            break
        if isinstance(obj, eqx.Module):
            owner = obj
    return type(owner)


class Anatomy:
    """The neuron groups of a model, with the traced program they were read from.

    Build one with [`neurosurgery.anatomy`][]. Groups are plain values: iterate, count, index by
    name or position, filter, print [`summary`][neurosurgery.Anatomy.summary]. Before changing
    anything, [`element_masks`][neurosurgery.Anatomy.element_masks] shows which parameter entries
    a set of unit masks would touch.
    """

    def __init__(
        self,
        groups: tuple[NeuronGroup, ...],
        graph: Graph,
        taps: tuple[_Taps | None, ...],
        leaf_paths: tuple[str, ...],
        leaf_shapes: tuple[tuple[int, ...], ...],
        params_def: Any,
        example: tuple[tuple[int, ...], ...],
        model_type: str,
        unobserved: dict[str, str] | None = None,
    ):
        self.groups = groups
        self.leaf_paths = leaf_paths
        self.leaf_shapes = leaf_shapes
        self.model_type = model_type
        self._graph = graph
        self._taps = taps
        self._params_def = params_def
        self._example = example  # shapes of the example's array leaves, in call order
        #: why some groups cannot be observed (declared groups aside), by name
        self.unobserved = dict(unobserved or {})

    # ---- looking ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[NeuronGroup]:
        return iter(self.groups)

    def __getitem__(self, key: int | str) -> NeuronGroup:
        if isinstance(key, int):
            return self.groups[key]
        for g in self.groups:
            if g.name == key:
                return g
        raise KeyError(f"no neuron group named {key!r}; groups: {[g.name for g in self.groups]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def hidden(self) -> tuple[NeuronGroup, ...]:
        """Groups whose units stay inside the model."""
        return tuple(g for g in self.groups if g.hidden)

    @property
    def resettable(self) -> tuple[NeuronGroup, ...]:
        """Groups reset by default: hidden and not residual-stream channels."""
        return tuple(g for g in self.groups if g.resettable)

    @property
    def observed(self) -> tuple[NeuronGroup, ...]:
        """Groups whose activations and gradients an observation records (all but declared)."""
        return tuple(g for g, t in zip(self.groups, self._taps, strict=True) if t is not None)

    @property
    def ungrouped(self) -> dict[str, tuple[int, int]]:
        """Parameter leaves with entries in no group, as `{path: (entries in no group, size)}`:
        scalars such as a learned temperature, or parameters the call never reads. A reset
        never touches them."""
        covered = [np.zeros(s, bool) for s in self.leaf_shapes]
        for g in self.groups:
            for sl in (*g.incoming, *g.per_unit, *g.outgoing):
                covered[sl.leaf] |= sl.element_owner() != -1
        out = {}
        for path, cov in zip(self.leaf_paths, covered, strict=True):
            if not cov.all():
                out[path] = (int(cov.size - cov.sum()), int(cov.size))
        return out

    def filter(
        self,
        path: str | None = None,
        layer_type: type | tuple[type, ...] | None = None,
        *,
        hidden: bool | None = None,
        shared: bool | None = None,
        output: bool | None = None,
    ) -> tuple[NeuronGroup, ...]:
        """Groups matching every given criterion.

        Args:
            path: glob (`layers[*]`, `*blocks*`) or regular expression (`re:...`) on the name.
            layer_type: module class(es) owning the producing weight.
            hidden: keep groups whose units stay inside the model (or the others).
            shared: keep residual-stream groups (or the others).
            output: keep groups whose units leave the model (or the others).
        """

        def name_ok(name: str) -> bool:
            if path is None:
                return True
            if path.startswith("re:"):
                return re.search(path[3:], name) is not None
            return fnmatch.fnmatchcase(name, path.replace("[", "[[]"))

        types: tuple[type, ...] = (
            ()
            if layer_type is None
            else layer_type
            if isinstance(layer_type, tuple)
            else (layer_type,)
        )
        return tuple(
            g
            for g in self.groups
            if name_ok(g.name)
            and (layer_type is None or issubclass(g.layer_type, types))
            and (hidden is None or g.hidden == hidden)
            and (shared is None or g.shared == shared)
            and (output is None or g.output == output)
        )

    def summary(self) -> str:
        """A readable table of every group: units, kind and the leaves it owns."""
        rows = [("#", "group", "layer", "units", "kind", "incoming", "per-unit", "outgoing")]
        for g in self.groups:
            rows.append(
                (
                    str(g.index),
                    g.name,
                    g.layer_type.__name__,
                    "×".join(map(str, g.unit_shape)),
                    g.kind()
                    + (" normalised" if g.normalized and not g.output else "")
                    + (" entangled" if g.entangled_with and not g.shared else "")
                    + (" term-kept" if g.term_kept else "")
                    + (" shares-columns" if g.shares_columns else ""),
                    ", ".join(map(repr, g.incoming)) or "-",
                    ", ".join(map(repr, g.per_unit)) or "-",
                    ", ".join(map(repr, g.outgoing)) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_hidden = sum(g.n_units for g in self.hidden)
        head = (
            f"{self.model_type}: {len(self.groups)} neuron groups, {n_hidden} hidden units "
            f"({sum(g.n_units for g in self.resettable)} resettable by default)"
        )
        notes = [f"{g.name}: not reset by default: {g.no_reset}" for g in self.groups if g.no_reset]
        notes += [f"{name}: not observed ({why})" for name, why in self.unobserved.items()]
        if self.ungrouped:
            notes.append(
                "in no group (never reset): "
                + ", ".join(
                    f"{p} ({n} of {size} entries)" for p, (n, size) in self.ungrouped.items()
                )
            )
        tail = "".join(f"\n* {n}" for n in notes)
        return head + "\n" + "\n".join(lines) + tail

    def __repr__(self) -> str:
        return f"Anatomy({self.model_type}, groups={list(self.names)})"

    # ---- masks -----------------------------------------------------------------------------
    def unit_masks(self, value: bool = False) -> dict[str, Bool[Array, "..."]]:
        """A mask of every group's units, all `value`."""
        return {g.name: jnp.full(g.unit_shape, value) for g in self.groups}

    def element_masks(
        self,
        unit_masks: Mapping[str, Array],
        roles: tuple[str, ...] = ("incoming", "per_unit", "outgoing"),
    ) -> list[Bool[Array, "..."] | None]:
        """Per-leaf entry masks (leaf order, `None`: untouched) for flagged units.

        `unit_masks` maps group names to boolean arrays of the group's `unit_shape`; `roles`
        chooses which of each group's entries count. Use it to look at what a reset would
        change before changing anything.
        """
        _check_unit_masks(self, unit_masks)
        out: list[Any] = [None] * len(self.leaf_shapes)
        for name, mask in unit_masks.items():
            group = self[name]
            flat = jnp.concatenate([jnp.ravel(mask), jnp.zeros((1,), bool)])
            for role in roles:
                for s in getattr(group, role):
                    idx = np.where(s.units >= 0, s.units, group.n_units)
                    sel = flat[idx]
                    shape = [s.shape[a] if a in s.axes else 1 for a in range(len(s.shape))]
                    sel = jnp.transpose(sel, tuple(np.argsort(s.axes))).reshape(shape)
                    sel = jnp.broadcast_to(sel, s.shape)
                    out[s.leaf] = sel if out[s.leaf] is None else out[s.leaf] | sel
        return out

    # ---- internals used by observe and reset ------------------------------------------------
    def _leaves(self, model: PyTree) -> list[Any]:
        """The model's array leaves, after checking that they match this anatomy."""
        params = eqx.filter(model, _is_array_or_shape)
        leaves = jax.tree_util.tree_leaves(params)
        shapes = tuple(tuple(x.shape) for x in leaves)
        if shapes != self.leaf_shapes:
            i = _first_diff(shapes, self.leaf_shapes)
            where = ""
            if i is not None and i < len(self.leaf_paths):
                got = shapes[i] if i < len(shapes) else None
                where = (
                    f"; first difference at leaf {i}, {self.leaf_paths[i]}: "
                    f"{_shape_text(self.leaf_shapes[i])} in the anatomy, {_shape_text(got)} in "
                    "this model"
                )
            elif i is not None:
                where = f"; its leaves from leaf {i} on are extra, the first of {_shape_text(shapes[i])}"
            raise AnatomyError(
                f"The model does not match this anatomy (built for a {self.model_type} with "
                f"{len(self.leaf_shapes)} array leaves, got a {type(model).__name__} with "
                f"{len(shapes)}{where}). Build the anatomy from this model: "
                "`ns.anatomy(model, *example_args)`."
            )
        return leaves

    def _tree(self, leaves: list[Any]) -> PyTree:
        """Arrange a per-leaf list (leaf order) as the model's parameter tree."""
        return jax.tree_util.tree_unflatten(self._params_def, leaves)

    def _zeros(
        self, batch_shape: tuple[int, ...], sites: tuple[str, ...]
    ) -> dict[str, dict[str, tuple[Array, ...]]]:
        """Zero perturbations at each observed group's probe sites (`{site: {group: (zeros of
        each call site, ...)}}`)."""
        out: dict[str, dict[str, tuple[Array, ...]]] = {}
        graph = self._graph
        loops = [op for op in graph.all_ops() if op.name == "while"]
        if loops:
            raise AnatomyError(
                f"{self.model_type} runs a `lax.while_loop` ({loops[0].source}), which JAX "
                "cannot differentiate in reverse mode, so `ns.observe` cannot compute the "
                "loss's gradients. Use `lax.scan` (or `lax.fori_loop` with static bounds) in the "
                "model, or score it by its weights alone (`ns.WeightMagnitude` reads only "
                "`Observation.params`: build `ns.Observation({}, None, None, None, params)`)."
            )
        for site in sites:
            out[site] = {}
            for g, t in zip(self.groups, self._taps, strict=True):
                if t is None:
                    continue
                zeros = []
                for s in t.sites:
                    vid = s.pre if site == "preactivation" else s.post
                    shape = (*batch_shape, *graph.loops.get(vid, ()), *graph.shapes[vid])
                    zeros.append(jnp.zeros(shape, graph.dtypes[vid]))
                out[site][g.name] = tuple(zeros)
        return out

    def _tapped(
        self,
        model: PyTree,
        perturb: Mapping[str, Mapping[str, tuple[Array, ...]]] | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, tuple[Array, ...]]]:
        """Run the model on one example with perturbations added at the probe sites.

        Returns the model's output and each observed group's activation at each of its sites
        (the values' own layout). The gradient of a loss with respect to
        `perturb["preactivation"]` (`["activation"]`) is the gradient at the pre-activations
        (activations).
        """
        leaves = self._leaves(model)
        dyn_args = jax.tree_util.tree_leaves(eqx.filter((args, kwargs), eqx.is_array))
        pairs = [(g.name, t) for g, t in zip(self.groups, self._taps, strict=True) if t is not None]
        add: dict[int, Any] = {}
        for site_name in ("preactivation", "activation"):
            given = perturb.get(site_name, {}) if perturb is not None else {}
            for name, t in pairs:
                if name not in given:
                    continue
                for s, p in zip(t.sites, given[name], strict=True):
                    vid = s.pre if site_name == "preactivation" else s.post
                    add[vid] = p if vid not in add else add[vid] + p
        record = {s.post for _, t in pairs for s in t.sites}
        outs, got = evaluate(self._graph, [*leaves, *dyn_args], add, record)
        acts = {name: tuple(got[s.post] for s in t.sites) for name, t in pairs}
        return jax.tree_util.tree_unflatten(self._graph.out_tree, outs), acts

    def _layout(
        self, name: str, values: tuple[Array, ...], site: str, batch_ndim: int = 1
    ) -> Array:
        """Tapped values (leading batch axes; one per call site) as `(*batch, positions,
        *unit_shape)`, positions of all call sites (and scan iterations) concatenated."""
        taps = self._taps[self.names.index(name)]
        assert taps is not None
        parts = []
        for s, v in zip(taps.sites, values, strict=True):
            layout = s.pre_layout if site == "preactivation" else s.post_layout
            parts.append(layout(v, batch_ndim))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=batch_ndim)


def _is_array_or_shape(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _check_unit_masks(anatomy: Anatomy, unit_masks: Any) -> None:
    """Masks must name this anatomy's groups, have their unit shapes and be boolean."""
    if isinstance(unit_masks, tuple):
        raise AnatomyError(
            "Got a tuple where a dict of unit masks was expected; a metric's `score` returns "
            "`(scores, state)`: select from the scores, `masks = select(scores)`."
        )
    unknown = [name for name in unit_masks if name not in anatomy.names]
    if unknown:
        raise AnatomyError(
            f"Masks name groups {unknown} that this anatomy does not have; its groups are "
            f"{list(anatomy.names)}. Build masks from scores of this anatomy."
        )
    for name, mask in unit_masks.items():
        group = anatomy[name]
        if tuple(jnp.shape(mask)) != group.unit_shape:
            raise AnatomyError(
                f"The mask for group {name!r} has shape {tuple(jnp.shape(mask))} but the group "
                f"has units {group.unit_shape}. Build masks with `anatomy.unit_masks()` or from "
                "scores of this anatomy."
            )
        dtype = getattr(mask, "dtype", None)
        if dtype is None or jnp.dtype(dtype) != jnp.bool_:
            raise AnatomyError(
                f"The mask for group {name!r} is not boolean (dtype {dtype}); masks say which "
                "units to reset, True or False: build them with a selection rule "
                "(`ns.threshold(scores, tau)`) or compare, e.g. `mask > 0.5`."
            )


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "no leaf" if shape is None else f"shape {shape}"


def _first_diff(a: tuple, b: tuple) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _count_text(counts: np.ndarray, n: int) -> str:
    """How often each unit appears, in a few words: `units 0, 1 twice, 2–7 once`."""
    counts = np.pad(counts[:n], (0, max(0, n - counts.size)))
    parts = []
    for times in sorted(set(counts.tolist()), reverse=True):
        units = np.flatnonzero(counts == times)
        shown = ", ".join(str(u) for u in units[:4]) + (", ..." if units.size > 4 else "")
        word = {0: "never", 1: "once", 2: "twice"}.get(times, f"{times} times")
        parts.append(f"unit{'s' if units.size > 1 else ''} {shown} {word}")
    return "; ".join(parts)


def _make_layout(
    local: np.ndarray, shape: tuple[int, ...], n: int, unit_shape: tuple[int, ...]
) -> _Layout:
    """The layout of a value of `shape` whose unit index per element is `local` (compact,
    -1: no unit of the group)."""
    axes = [d for d in range(local.ndim) if local.shape[d] > 1]
    positions = [d for d in range(local.ndim) if d not in axes]
    reduced = local[tuple(slice(None) if d in axes else 0 for d in range(local.ndim))]
    if reduced.size == n and np.array_equal(np.ravel(reduced), np.arange(n)):
        count = int(np.prod([shape[d] for d in positions], dtype=int))
        return _Layout((*positions, *axes), None, count, unit_shape)
    flat = np.broadcast_to(local, shape).ravel()
    counts = np.bincount(flat[flat >= 0], minlength=n)
    if counts.size != n or not (counts == counts[0]).all() or counts[0] == 0:
        raise AnatomyError(
            f"a value of shape {shape} holds the group's {n} units (unit shape {unit_shape}) "
            f"unequally often: {_count_text(counts, n)}"
        )
    keep = np.flatnonzero(flat >= 0)
    order = keep[np.argsort(flat[keep], kind="stable")]
    return _Layout(None, order.reshape(n, -1).T.copy(), int(counts[0]), unit_shape)
