"""Build an [`Anatomy`][neurosurgery.Anatomy] from a model and an example input."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._anatomy import Anatomy, _compress, _make_layout, _owner_type, _Taps
from ._declare import declared_groups, declaring_modules, make_opaque
from ._errors import AnatomyError
from ._graph import build_graph
from ._groups import LeafSlice, NeuronGroup
from ._trace import RawGroup, Trace, Tracer


def _call(model: Any, *args: Any, **kwargs: Any) -> Any:
    return model(*args, **kwargs)


def anatomy(
    model: Any,
    *example_args: Any,
    fn: Callable[..., Any] | None = None,
    **example_kwargs: Any,
) -> Anatomy:
    """Map a model to its neuron groups by tracing `fn(model, *example_args, **example_kwargs)`.

    Args:
        model: any Equinox module.
        *example_args: one example input (a single sample, as Equinox layers take it); any
            pytree. Extra arguments (a diffusion time step, a key) are passed the same way.
        fn: how to call the model; defaults to `model(*args, **kwargs)`. Use it for methods,
            e.g. `fn=lambda m, obs, act: m.q(obs, act)`, or for stacked ensembles,
            `fn=lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)`.

    Raises:
        AnatomyError: the model is not an Equinox module, rejects the example input, performs an
            operation on its units that the tracer cannot follow, or has no hidden units.
    """
    if not isinstance(model, eqx.Module):
        raise AnatomyError(
            f"anatomy() needs an Equinox module, got {type(model).__name__}. Wrap plain functions "
            "and parameters in an `eqx.Module` subclass whose fields hold the parameters."
        )
    call = fn if fn is not None else _call
    params, static = eqx.partition(model, eqx.is_array)
    path_leaves, params_def = jax.tree_util.tree_flatten_with_path(params)
    leaves = [x for _, x in path_leaves]
    paths = [jax.tree_util.keystr(p) for p, _ in path_leaves]
    arg_dyn, arg_static = eqx.partition((example_args, example_kwargs), eqx.is_array)
    flat_args, args_def = jax.tree_util.tree_flatten(arg_dyn)
    n = len(leaves)
    declaring = declaring_modules(model)

    def flat_fn(*flat: Any) -> Any:
        m = eqx.combine(jax.tree_util.tree_unflatten(params_def, flat[:n]), static)
        m = make_opaque(m, declaring)
        a, k = eqx.combine(jax.tree_util.tree_unflatten(args_def, flat[n:]), arg_static)
        return call(m, *a, **k)

    try:
        graph = build_graph(flat_fn, [*leaves, *flat_args])
    except Exception as err:
        shapes = jax.tree_util.tree_map(lambda x: getattr(x, "shape", x), example_args)
        raise AnatomyError(
            f"{type(model).__name__} rejects the example input {shapes}: "
            f"{type(err).__name__}: {err}. Pass one example input exactly as the model takes it "
            "(a single sample, not a batch, for Equinox layers), or give `fn=` to say how to call "
            "the model."
        ) from err
    offsets = list(np.cumsum([0] + [int(np.prod(x.shape, dtype=int)) for x in leaves])[:-1])
    tracer = Tracer(graph, [int(o) for o in offsets], n, paths)
    trace = tracer.run()
    owners = {i: _owner_type(model, p) for i, (p, _) in enumerate(path_leaves)}
    shapes = [tuple(x.shape) for x in leaves]
    groups, taps = _resolve(trace, tracer, offsets, paths, shapes, owners)
    declared = declared_groups(declaring, paths, shapes, len(groups))
    groups, taps = groups + declared, taps + [None] * len(declared)
    if not any(g.hidden for g in groups):
        raise AnatomyError(
            f"{type(model).__name__} has no hidden units: "
            + (
                "no dense or convolution layer with parameter weights was found in its computation"
                if not groups
                else "every layer feeds the output directly"
            )
            + ". There is nothing to score or reset; map a model with at least one hidden layer."
        )
    example = tuple(tuple(np.shape(x)) for x in flat_args)
    return Anatomy(
        tuple(groups),
        graph,
        tuple(taps),
        tuple(paths),
        tuple(shapes),
        params_def,
        example,
        type(model).__name__,
    )


def _expand(trace: Trace, pairs: list[tuple[np.ndarray, np.ndarray]]):
    """Yield (unit, param element) arrays with mixed labels expanded to their member units."""
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    labels = np.concatenate([p[0] for p in pairs]).astype(np.int64)
    elems = np.concatenate([p[1] for p in pairs]).astype(np.int64)
    key = np.sort((labels << 32) | elems)  # one sort of int64 keys, then drop repeats
    key = key[np.r_[True, key[1:] != key[:-1]]]
    labels, elems = key >> 32, key & 0xFFFFFFFF
    is_mix = np.zeros(int(labels.max()) + 1, bool)
    is_mix[[m for m in trace.mixes if m < is_mix.size]] = True
    plain = ~is_mix[labels]
    out_u, out_e = [labels[plain]], [elems[plain]]
    mixed = ~plain
    if mixed.any():
        ml, me = labels[mixed], elems[mixed]
        order = np.argsort(ml, kind="stable")
        ml, me = ml[order], me[order]
        starts = np.flatnonzero(np.r_[True, ml[1:] != ml[:-1]])
        ends = [*starts[1:], len(ml)]
        for s, e in zip(starts, ends, strict=True):
            for member in trace.mixes[int(ml[s])]:
                out_u.append(np.full(e - s, member, np.int64))
                out_e.append(me[s:e])
    return np.concatenate(out_u), np.concatenate(out_e)


def _resolve(
    trace: Trace,
    tracer: Tracer,
    offsets: list,
    paths: list[str],
    shapes: list[tuple[int, ...]],
    owners: dict[int, type],
):
    offsets_arr = np.asarray(offsets, np.int64)
    unit_group = np.full(tracer.next_label, -1, np.int64)
    for u, g in tracer.unit_group.items():
        unit_group[u] = g
    firsts = np.array([g.first for g in trace.groups], np.int64)

    def slices(pairs: list, drop_shared: bool, kind: str) -> dict[int, list[LeafSlice]]:
        units, elems = _expand(trace, pairs)
        result: dict[int, list[LeafSlice]] = defaultdict(list)
        if units.size == 0:
            return result
        gids = unit_group[units]
        local = units - firsts[gids]
        leaf = np.searchsorted(offsets_arr, elems, side="right") - 1
        flat = elems - offsets_arr[leaf]
        # Sort by (group, leaf); each run of equal keys is one leaf slice of one group.
        key = gids * (len(shapes) + 1) + leaf
        order = np.argsort(key, kind="stable")
        key, gids, local, leaf, flat = (
            key[order],
            gids[order],
            local[order],
            leaf[order],
            flat[order],
        )
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = [*starts[1:], len(key)]
        for s, e in zip(starts, ends, strict=True):
            g, lf = gids[s], leaf[s]
            owner = np.full(int(np.prod(shapes[lf], dtype=int)), -1, np.int64)
            f, u = flat[s:e], local[s:e]
            if drop_shared:
                # An entry that meets several units of one group (a scalar slope) is not per-unit.
                counts = np.bincount(f, minlength=owner.size)
                keep = counts[f] == 1
                f, u = f[keep], u[keep]
                if f.size == 0:
                    continue
            owner[f] = u
            axes, units_map = _compress(owner.reshape(shapes[lf]))
            result[int(g)].append(LeafSlice(paths[lf], int(lf), shapes[lf], axes, units_map, kind))
        return result

    def merged(*parts: dict[int, list[LeafSlice]]) -> dict[int, list[LeafSlice]]:
        out: dict[int, list[LeafSlice]] = defaultdict(list)
        for part in parts:
            for g, items in part.items():
                out[g].extend(items)
        return out

    incoming = merged(slices(trace.incoming, False, "weight"), slices(trace.bias, False, "bias"))
    per_unit = merged(slices(trace.scale, True, "scale"), slices(trace.per_unit, True, "shift"))
    outgoing = slices(trace.outgoing, False, "weight")
    mixed_units: dict[int, set[int]] = defaultdict(set)
    for members in trace.mixes.values():
        gs = {int(unit_group[u]) for u in members}
        for g in gs:
            mixed_units[g] |= gs - {g}
    output_groups = {int(unit_group[u]) for u in trace.output_labels}
    names = _names(trace.groups, paths)
    groups, taps = [], []
    for i, raw in enumerate(trace.groups):
        groups.append(
            NeuronGroup(
                names[i],
                i,
                raw.unit_shape,
                owners.get(raw.weight_leaf, object),
                tuple(incoming.get(i, ())),
                tuple(per_unit.get(i, ())),
                tuple(outgoing.get(i, ())),
                shared=bool(mixed_units.get(i)),
                output=i in output_groups,
                shared_with=tuple(sorted(names[j] for j in mixed_units.get(i, ()))),
                normalized=raw.normalized,
            )
        )
        taps.append(_taps(trace, i, raw))
    return groups, taps


def _names(raw: list[RawGroup], paths: list[str]) -> list[str]:
    base = []
    for g in raw:
        p = paths[g.weight_leaf].lstrip(".")
        for suffix in (".weight", ".kernel", ".w"):
            if p.endswith(suffix):
                p = p[: -len(suffix)]
                break
        base.append(p or "root")
    seen: dict[str, int] = defaultdict(int)
    out = []
    for b in base:
        out.append(b if base.count(b) == 1 else f"{b}@{seen[b]}")
        seen[b] += 1
    return out


def _taps(trace: Trace, index: int, raw: RawGroup) -> _Taps:
    """Where to read a group's activation and inject its pre-activation gradient."""
    chain = raw.chain
    sinks = trace.sinks.get(index) or [raw.output]
    post = max(sinks)
    ancestors: set[int] = set()
    stack = [post]
    while stack:
        v = stack.pop()
        if v in ancestors:
            continue
        ancestors.add(v)
        stack.extend(chain[v][1])

    def reaches_start(avoid: int) -> bool:
        seen, todo = set(), [post]
        while todo:
            v = todo.pop()
            if v == avoid or v in seen:
                continue
            if v == raw.output:
                return True
            seen.add(v)
            todo.extend(chain[v][1])
        return False

    def kind(v: int) -> str:
        k, preds = chain[v]
        while k == "pass" and preds:
            k, preds = chain[preds[0]]
        return k

    candidates = [v for v in ancestors if kind(v) in ("producer", "pre")]
    dominating = [v for v in candidates if v == raw.output or not reaches_start(v)]
    pre = max(dominating)
    return _Taps(
        pre,
        post,
        _make_layout(trace, pre, raw.first, raw.unit_shape),
        _make_layout(trace, post, raw.first, raw.unit_shape),
    )
