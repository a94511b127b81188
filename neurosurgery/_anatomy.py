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

from ._errors import AnatomyError
from ._graph import Graph, evaluate
from ._groups import NeuronGroup
from ._trace import Trace


@dataclasses.dataclass(frozen=True)
class _Pool:
    """How to average a tapped value down to one number per unit."""

    reduce_axes: tuple[int, ...]
    segments: np.ndarray | None  # None: the kept positions already are the units, in order
    unit_shape: tuple[int, ...]

    def __call__(self, x: Array, batch_ndim: int) -> Array:
        axes = tuple(batch_ndim + a for a in self.reduce_axes)
        m = jnp.mean(x, axis=axes) if axes else x
        batch = m.shape[:batch_ndim]
        if self.segments is None:
            return m.reshape(*batch, *self.unit_shape)
        flat = m.reshape(*batch, -1)
        seg = jnp.asarray(self.segments)
        n = int(np.prod(self.unit_shape, dtype=int))
        counts = np.bincount(self.segments[self.segments >= 0], minlength=n)
        onehot = jax.nn.one_hot(seg, n, dtype=flat.dtype)  # -1 rows are all zero
        pooled = flat @ onehot / jnp.asarray(np.maximum(counts, 1), flat.dtype)
        return pooled.reshape(*batch, *self.unit_shape)


@dataclasses.dataclass(frozen=True)
class _Taps:
    pre: int  # value id where the gradient enters the unit's activation (after per-unit norms)
    post: int  # value id of the unit's output as its consumers read it
    pre_pool: _Pool
    post_pool: _Pool
    pre_shape: tuple[int, ...]


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
    name or position, filter, print [`summary`][neurosurgery.Anatomy.summary].
    """

    def __init__(self, groups: tuple[NeuronGroup, ...], graph: Graph, taps: tuple[_Taps | None, ...],
                 leaf_paths: tuple[str, ...], leaf_shapes: tuple[tuple[int, ...], ...],
                 params_def: Any, n_params: int, model_type: str):  # fmt: skip
        self.groups = groups
        self._graph = graph
        self._taps = taps
        self.leaf_paths = leaf_paths
        self.leaf_shapes = leaf_shapes
        self._params_def = params_def
        self._n_params = n_params
        self.model_type = model_type

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

    def filter(self, path: str | None = None, layer_type: type | tuple[type, ...] | None = None,
               *, hidden: bool | None = None, shared: bool | None = None,
               output: bool | None = None) -> tuple[NeuronGroup, ...]:  # fmt: skip
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
            rows.append((
                str(g.index), g.name, g.layer_type.__name__, "×".join(map(str, g.unit_shape)),
                g.kind(), ", ".join(map(repr, g.incoming)) or "-",
                ", ".join(map(repr, g.per_unit)) or "-", ", ".join(map(repr, g.outgoing)) or "-",
            ))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_hidden = sum(g.n_units for g in self.hidden)
        head = (f"{self.model_type}: {len(self.groups)} neuron groups, {n_hidden} hidden units "
                f"({sum(g.n_units for g in self.resettable)} resettable by default)")  # fmt: skip
        return head + "\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return f"Anatomy({self.model_type}, groups={list(self.names)})"

    # ---- masks -----------------------------------------------------------------------------
    def check_model(self, model: PyTree) -> list[Array]:
        """The model's array leaves, after checking that they match this anatomy."""
        params = eqx.filter(model, eqx.is_array)
        leaves = jax.tree_util.tree_leaves(params)
        shapes = tuple(tuple(x.shape) for x in leaves)
        if shapes != self.leaf_shapes:
            raise AnatomyError(
                f"The model does not match this anatomy (built for a {self.model_type} with "
                f"{len(self.leaf_shapes)} array leaves, got {len(shapes)} leaves"
                + (f"; first mismatch at {self.leaf_paths[i]}" if (i := _first_diff(
                    shapes, self.leaf_shapes)) is not None and i < len(self.leaf_paths) else "")
                + "). Build the anatomy from this model: `ns.anatomy(model, *example_args)`."
            )  # fmt: skip
        return leaves

    def unit_masks(self, value: bool = False) -> dict[str, Bool[Array, "..."]]:
        """A mask of every group's units, all `value`."""
        return {g.name: jnp.full(g.unit_shape, value) for g in self.groups}

    def element_masks(self, unit_masks: Mapping[str, Bool[Array, "..."]],
                      roles: tuple[str, ...] = ("incoming", "per_unit", "outgoing"),
                      ) -> list[Bool[Array, "..."] | None]:  # fmt: skip
        """Per-leaf entry masks (leaf order, `None`: untouched) for flagged units.

        `unit_masks` maps group names to boolean arrays of the group's `unit_shape`.
        """
        for name, mask in unit_masks.items():
            group = self[name]
            if tuple(jnp.shape(mask)) != group.unit_shape:
                raise AnatomyError(
                    f"The mask for group {name!r} has shape {tuple(jnp.shape(mask))} but the group "
                    f"has units {group.unit_shape}. Build masks with `anatomy.unit_masks()` or from "
                    "scores of this anatomy."
                )
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

    def to_tree(self, leaves: list[Any]) -> PyTree:
        """Arrange a per-leaf list (leaf order) as the model's parameter tree."""
        return jax.tree_util.tree_unflatten(self._params_def, leaves)

    # ---- probes ----------------------------------------------------------------------------
    def zeros(self, batch_shape: tuple[int, ...] = (), sites: tuple[str, ...] = ("pre", "post")
              ) -> dict[str, dict[str, Array]]:  # fmt: skip
        """Zero perturbations for [`tapped`][neurosurgery.Anatomy.tapped].

        Returns `{"pre": {group: zeros}, "post": {group: zeros}}`: `pre` is each group's
        pre-activation (after any per-unit norm, before the activation), `post` its activation as
        the next layer reads it. Groups declared by hand (see
        [`DeclaredGroup`][neurosurgery.DeclaredGroup]) are not observed.
        """
        out: dict[str, dict[str, Array]] = {}
        for site in sites:
            if site not in ("pre", "post"):
                raise ValueError(f"unknown probe site {site!r}; use 'pre' and/or 'post'")
            out[site] = {}
            for g, t in zip(self.groups, self._taps, strict=True):
                if t is None:
                    continue
                vid = t.pre if site == "pre" else t.post
                shape = self._graph.shapes[vid]
                out[site][g.name] = jnp.zeros((*batch_shape, *shape), self._graph.dtypes[vid])
        return out

    def tapped(self, model: PyTree, perturb: Mapping[str, Mapping[str, Array]] | None,
               *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Array]]:  # fmt: skip
        """Run the model on one example with perturbations added at the probe sites.

        `perturb` is `None` or has the form of [`zeros()`][neurosurgery.Anatomy.zeros]. Returns the
        model's output and each observed group's activation. The gradient of a loss with respect
        to `perturb["pre"]` (`["post"]`) is the gradient at the pre-activations (activations);
        vmap over a batch with per-sample perturbations to get per-sample gradients from the same
        backward pass as the weights'. Static (non-array) arguments must equal the example's.
        """
        leaves = self.check_model(model)
        dyn_args = jax.tree_util.tree_leaves(eqx.filter((args, kwargs), eqx.is_array))
        pairs = [(g.name, t) for g, t in zip(self.groups, self._taps, strict=True) if t is not None]
        pre = dict(perturb.get("pre", {})) if perturb is not None else {}
        post = dict(perturb.get("post", {})) if perturb is not None else {}
        edits: dict[int, list[tuple[str, str]]] = {}
        for name, t in pairs:
            edits.setdefault(t.pre, []).append(("pre", name))
            edits.setdefault(t.post, []).append(("post", name))
        acts: dict[str, Array] = {}

        def edit(vid: int, value: Any) -> Any:
            for site, name in edits[vid]:  # pre before post where they coincide
                if site == "pre":
                    if name in pre:
                        value = value + pre[name].astype(value.dtype)
                else:
                    if name in post:
                        value = value + post[name].astype(value.dtype)
                    acts[name] = value
            return value

        outs = evaluate(self._graph, [*leaves, *dyn_args], edit, frozenset(edits))
        return jax.tree_util.tree_unflatten(self._graph.out_tree, outs), acts

    def pool(self, name: str, values: Array, where: str = "post", batch_ndim: int = 1) -> Array:
        """Average `values` (a tapped value, leading batch axes) to one number per unit."""
        taps = self._taps[self.names.index(name)]
        if taps is None:
            raise AnatomyError(
                f"Group {name!r} was declared by hand, so its activations are not observed; "
                "score it with a weight-based metric."
            )
        pooler = taps.post_pool if where == "post" else taps.pre_pool
        return pooler(values, batch_ndim)


def _first_diff(a: tuple, b: tuple) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _make_pool(trace: Trace, vid: int, first: int, unit_shape: tuple[int, ...]) -> _Pool:
    labels = trace.values[vid].units
    assert labels is not None
    n = int(np.prod(unit_shape, dtype=int))
    local = np.where((labels >= first) & (labels < first + n), labels - first, -1)
    axes, reduced = _compress(local)
    reduce_axes = tuple(a for a in range(local.ndim) if a not in axes)
    flat = reduced.ravel()
    if flat.size == n and np.array_equal(flat, np.arange(n)):
        return _Pool(reduce_axes, None, unit_shape)
    return _Pool(reduce_axes, flat, unit_shape)
