"""Build an [`Anatomy`][neurosurgery.Anatomy] from a model and an example input."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import AnatomyError
from ._anatomy import Anatomy, _compress, _owner_type
from ._declare import declared_groups, declaring_modules, make_opaque
from ._graph import Graph, build_graph, evaluate
from ._groups import LeafSlice, NeuronGroup
from ._owners import LabelMap, owners
from ._resolve import FinalGroup, one_to_one, resolve
from ._taps import taps
from ._trace import Tracer, collective_error

PAIRED = (
    "its units meet those of {partner} in a product of two activations (as attention's queries "
    "and keys meet in the scores, unit i with unit i): a reset re-draws them and zeroes the "
    "partners' rows, which removes the pair's term but changes what the product weighs once "
    "training resumes"
)


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
            pytree. Extra arguments (a diffusion time step, a PRNG key, a layer's
            `eqx.nn.State`) are passed the same way.
        fn: how to call the model; defaults to `model(*args, **kwargs)`. Use it for methods,
            e.g. `fn=lambda m, obs, act: m.q(obs, act)`, for stacked ensembles,
            `fn=lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)`, or for stateful layers,
            `fn=lambda m, x, state: m(x, state)[0]`.

    Raises:
        AnatomyError: the model is not an Equinox module, rejects the example input, performs an
            operation on its units (or its parameters) that the tracer cannot follow, gives a
            parameter entry two owners that cannot be told apart, or has no hidden units.
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
        if "unbound axis name" in str(err):
            raise collective_error(f"a collective (JAX: {err})") from err
        shapes = jax.tree_util.tree_map(lambda x: getattr(x, "shape", x), example_args)
        raise AnatomyError(
            f"{type(model).__name__} rejects the example input {shapes}: "
            f"{type(err).__name__}: {err}. Pass one example input exactly as the model takes it "
            "(a single sample, not a batch, for Equinox layers), or give `fn=` to say how to call "
            "the model."
        ) from err
    shapes = [tuple(x.shape) for x in leaves]
    offsets = [int(o) for o in np.cumsum([0] + [int(np.prod(s, dtype=int)) for s in shapes])[:-1]]
    tracer = Tracer(graph, offsets, shapes, paths).run()
    _, comp_of, _, finals, partners = resolve(tracer, paths)
    lm = LabelMap(tracer, comp_of, finals)
    owned = owners(tracer, lm, finals, partners)
    owner_types = {i: _owner_type(model, p) for i, (p, _) in enumerate(path_leaves)}
    group_taps, why = taps(tracer, lm, finals)
    normalized = _normalized(tracer, lm, finals, graph, [*leaves, *flat_args])
    index = {c: i for i, fg in enumerate(finals) for c in fg.comps}
    for g, fg in enumerate(finals):  # a pair's reset goes through the partner's values
        partner = {index[p] for c in fg.comps for p in partners.get(c, ()) if p in index}
        if partner & normalized:
            normalized.add(g)
    groups = _groups(tracer, lm, finals, owned, paths, shapes, owner_types, partners, normalized)
    groups = _check_pairs(tracer, groups, graph, [*leaves, *flat_args])
    groups = _check_crowded(groups, graph, [*leaves, *flat_args], len(leaves))
    declared = declared_groups(declaring, paths, shapes, len(groups))
    all_groups = groups + declared
    taps_all = [*group_taps, *([None] * len(declared))]
    if not any(g.hidden for g in all_groups):
        used = {s.leaf for g in all_groups for s in (*g.incoming, *g.per_unit, *g.outgoing)}
        unused = [f"`{paths[i]}`" for i in range(len(paths)) if i not in used]
        found = (
            "no dense or convolution layer with parameter weights was found in its computation"
            if not all_groups
            else "every layer found in it feeds the output directly"
        )
        if unused:
            found += (
                f" (parameters in no layer: {', '.join(unused)}; a weight computed from "
                "parameters by an operation the tracer cannot follow to a layer (a reduction, "
                "a decomposition) is read as no layer's weight: declare the module's groups "
                "with `__neuron_groups__`, see `neurosurgery.DeclaredGroup`)"
            )
        raise AnatomyError(
            f"{type(model).__name__} has no hidden units: {found}. There is nothing to score or "
            "reset; map a model with at least one hidden layer."
        )
    example = tuple(tuple(np.shape(x)) for x in flat_args)
    unobserved = {finals[g].name: w for g, w in why.items()}
    return Anatomy(
        tuple(all_groups),
        graph,
        tuple(taps_all),
        tuple(paths),
        tuple(shapes),
        params_def,
        example,
        type(model).__name__,
        unobserved,
    )


def _groups(t: Tracer, lm, finals, owned, paths, shapes, owner_types, partners, normalized):
    output = lm.groups_of(np.array(sorted(t.output_labels()), np.int64))
    shared: dict[int, set[int]] = defaultdict(set)
    n = len(finals)
    for kind, a, b, _ in t.meetings:
        if kind in ("add", "either") or (kind == "layer" and not one_to_one(a, b)):
            met = lm.indicator(a, n).T.astype(np.int64) @ lm.indicator(b, n).astype(np.int64)
            for g, h in zip(*np.nonzero(met), strict=True):
                if g != h:
                    shared[int(g)].add(int(h))
                    shared[int(h)].add(int(g))
    weightless: dict[int, str] = {}
    for labels, op, what in t.weightless:
        for g in lm.groups_of(labels):
            weightless.setdefault(
                g,
                f"its units are read by {t.where(op)} through {what} (not a parameter of this "
                "model), so no outgoing weight can be zeroed and a reset changes the outputs",
            )
    for labels, op in t.reduced:  # units that reach the outputs only through a reduction
        for g in lm.groups_of(labels):
            if g in output or g in weightless:
                continue
            reached: set[int] = set()
            for (role, _, _), own in owned.get(g, {}).items():
                if role == "outgoing":
                    own = np.asarray(own)
                    reached.update(np.unique(own[own >= 0]).tolist())
            local = lm.local(np.unique(labels), g)
            if any(int(u) not in reached for u in local[local >= 0]):
                weightless[g] = (
                    f"some of its units reach the outputs only through {t.where(op)}, which "
                    "combines units (a sum, max or product over them), and not through outgoing "
                    "weights: none can be zeroed, so a reset changes the outputs"
                )
    crowded: dict[int, str] = {}
    for labels, op in t.crowded:
        for g in lm.groups_of(labels):
            crowded.setdefault(
                g,
                f"its units are read by {t.where(op)} through columns that read other values at "
                "other positions (e.g. a class token concatenated before the tokens), so "
                "zeroing its outgoing entries removes those values' terms too and a reset "
                "changes the outputs",
            )
    index = {c: i for i, fg in enumerate(finals) for c in fg.comps}
    order = {"weight": 0, "bias": 1, "scale": 2, "shift": 3}
    groups = []
    for g, fg in enumerate(finals):
        roles: dict[str, list[LeafSlice]] = defaultdict(list)
        items = sorted(owned.get(g, {}).items(), key=lambda kv: (order[kv[0][1]], kv[0][2]))
        for (role, kind, leaf), own in items:
            axes, units = _compress(np.asarray(own, np.int64))
            roles[role].append(LeafSlice(paths[leaf], leaf, shapes[leaf], axes, units, kind))
        partner_groups = sorted(
            {index[p] for c in fg.comps for p in partners.get(c, ()) if p in index}
        )
        paired = tuple(finals[h].name for h in partner_groups)
        note = weightless.get(g, "") or fg.kept or crowded.get(g, "")
        if fg.role and not note:
            note = PAIRED.format(partner=", ".join(f"`{name}`" for name in paired))
        groups.append(
            NeuronGroup(
                fg.name,
                g,
                fg.unit_shape,
                owner_types.get(t.groups[fg.raw[0]].leaf, object),
                tuple(roles["incoming"]),
                tuple(roles["per_unit"]),
                tuple(roles["outgoing"]),
                shared=bool(shared.get(g)),
                output=g in output,
                shared_with=tuple(sorted(finals[h].name for h in shared.get(g, ()))),
                normalized=g in normalized,
                paired_with=paired,
                term_kept=fg.kept,
                shares_columns=crowded.get(g, ""),
                no_reset=note,
            )
        )
    return _entangle(groups)


KEPT = (
    "zeroing its outgoing entries (the rows of its partners `{partner}`) does not remove its "
    "units' term from the outputs: the operations between those rows and the product at "
    "{where} do not map zero to zero (e.g. a softmax over positions makes a zeroed row 1/n). "
    "Re-drawn units reach the outputs, so a reset changes the function"
)


def _check_pairs(t: Tracer, groups: list[NeuronGroup], graph: Graph, args) -> list[NeuronGroup]:
    """Paired (query/key) groups: their outgoing entries are their partners' rows, and whether
    zeroing those rows removes the pair's term depends on what lies between the rows and the
    product. Run the traced program with the outgoing entries of every other unit zeroed, with
    and without those units' own entries re-drawn, on a random input of the example's shapes:
    where the outputs move, the group is marked `term_kept` (not function-preserving)."""
    if not any(g.paired_with for g in groups):
        return groups
    # values, also where the anatomy is built under a trace (e.g. inside `eval_shape`): abstract
    # leaves and inputs are replaced by random draws of their shapes
    with jax.ensure_compile_time_eval():
        return [_check_pair(t, g, graph, args) for g in groups]


def _check_crowded(groups: list[NeuronGroup], graph: Graph, args, n: int) -> list[NeuronGroup]:
    """Groups whose readers' columns read other values at positions where the units are not
    (`shares_columns`): the positions may hold zeros only (a signal padded before a transform).
    Run the traced program with the group's units silenced (incoming entries zeroed), with and
    without their outgoing entries zeroed, on a random input: where the outputs do not move,
    the columns read nothing else and the mark is lifted."""
    if not any(g.shares_columns for g in groups):
        return groups
    with jax.ensure_compile_time_eval():
        leaves, xs = _random_args(args, n)
        out = []
        for g in groups:
            if not g.shares_columns:
                out.append(g)
                continue
            silent, cut = list(leaves), list(leaves)
            for part, targets in ((g.incoming, (silent, cut)), (g.outgoing, (cut,))):
                for sl in part:
                    own = sl.element_owner() >= 0
                    for target in targets:
                        x = target[sl.leaf]
                        target[sl.leaf] = jnp.where(own, jnp.zeros_like(x), x)
            if _outputs_move(graph, [*silent, *xs], [*cut, *xs]):
                out.append(g)
            else:
                note = "" if g.no_reset == g.shares_columns else g.no_reset
                out.append(dataclasses.replace(g, shares_columns="", no_reset=note))
        return out


def _random_args(args, n: int) -> tuple[list[jax.Array], list[Any]]:
    """The model's `n` leaves (random draws where abstract) and a random input of the
    example's shapes: the example is often all zeros, which hides terms."""
    leaves = [jnp.asarray(_draw(x, i)) for i, x in enumerate(args[:n])]
    return leaves, [_draw(x, n + i, always=True) for i, x in enumerate(args[n:])]


def _outputs_move(graph: Graph, first: list[Any], second: list[Any]) -> bool:
    """Whether the traced program's floating outputs differ by more than 1e-6 of their scale
    between two sets of arguments (non-finite outputs say nothing)."""
    before, _ = evaluate(graph, first, {})
    after, _ = evaluate(graph, second, {})
    for a, b in zip(before, after, strict=True):
        if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(a), initial=0.0)) + 1e-30
        finite = np.isfinite(a).all() and np.isfinite(b).all()
        if finite and float(np.max(np.abs(a - b), initial=0.0)) > 1e-6 * scale:
            return True
    return False


def _concrete(x: Any) -> bool:
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return True


def _draw(x: Any, i: int, always: bool = False) -> Any:
    """`x`, or a random draw of its shape where it is abstract (or `always`, for floats)."""
    abstract = not _concrete(x)
    if not (always or abstract):
        return x
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.random.key(i) if abstract else x
    if not jnp.issubdtype(dtype, jnp.floating):
        return np.zeros(jnp.shape(x), dtype) if abstract else x
    return np.random.default_rng(i).standard_normal(jnp.shape(x)).astype(dtype)


def _check_pair(t: Tracer, g: NeuronGroup, graph: Graph, args) -> NeuronGroup:
    if not g.paired_with or g.output or g.normalized or g.entangled_with or g.term_kept:
        return g
    leaves, xs = _random_args(args, len(t.leaf_shapes))
    zero = [np.zeros(s, bool) for s in t.leaf_shapes]
    move = [np.zeros(s, bool) for s in t.leaf_shapes]
    for part, masks in ((g.outgoing, zero), ((*g.incoming, *g.per_unit), move)):
        for sl in part:
            own = sl.element_owner()
            masks[sl.leaf] |= (own >= 0) & (own % 2 == 0)
    key = jax.random.key(0)
    zeroed, moved = [], []
    for i, (x, z, m) in enumerate(zip(leaves, zero, move, strict=True)):
        x = jnp.where(z, jnp.zeros_like(x), x)
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        zeroed.append(x)
        moved.append(jnp.where(m, x + noise * (jnp.std(x) + 1), x))
    if not _outputs_move(graph, [*zeroed, *xs], [*moved, *xs]):
        return g
    where = sorted({t.where(op) for _, _, op in _pairs_of(t, g)}) or ["the product"]
    note = KEPT.format(partner="`, `".join(g.paired_with), where=", ".join(where))
    return dataclasses.replace(g, term_kept=note, no_reset=note)


def _pairs_of(t: Tracer, g: NeuronGroup):
    """The recorded products (pairs) whose operands carry the group's incoming rows."""
    mine = {sl.leaf for sl in g.incoming}
    for a, b, op in t.pairs:
        labels = np.concatenate([np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)])
        leaves = {
            t.groups[t.unit_group[m]].leaf
            for lab in labels
            for m in t.members(int(lab))
            if m in t.unit_group
        }
        if leaves & mine:
            yield a, b, op


def _entangle(groups: list[NeuronGroup]) -> list[NeuronGroup]:
    """Mark groups whose outgoing entries are also another group's outgoing entries (one
    layer reads the units of both, e.g. a layer applied to its own output or to two producers)."""
    masks: list[dict[int, np.ndarray]] = []
    for g in groups:
        mine: dict[int, np.ndarray] = {}
        # a query (key) group's outgoing entries are its partner's incoming rows, not weight
        # columns of a consumer: they meet no other group's outgoing columns
        for s in () if g.paired_with else g.outgoing:
            m = s.element_owner() >= 0
            mine[s.leaf] = mine[s.leaf] | m if s.leaf in mine else m
        masks.append(mine)
    out = []
    for i, g in enumerate(groups):
        others = tuple(
            h.name
            for j, h in enumerate(groups)
            if j != i
            and any(
                leaf in masks[j] and bool((m & masks[j][leaf]).any())
                for leaf, m in masks[i].items()
            )
        )
        out.append(dataclasses.replace(g, entangled_with=others) if others else g)
    return out


def _normalized(t: Tracer, lm: LabelMap, finals: list[FinalGroup], graph: Graph, args) -> set[int]:
    """Groups a statistic over their units acts on: reductions over units, and weights
    normalised by a statistic of the whole weight (checked by re-drawing half the units)."""
    out: set[int] = set()
    for labels, _ in t.reduced:
        out |= lm.groups_of(labels)
    for gid, raw in enumerate(t.groups):
        if not raw.weights:
            continue
        mine = lm.groups_of(np.arange(raw.first, raw.first + raw.size))
        if mine <= out:
            continue
        if any(v in graph.loops for v, _ in raw.weights) or _moves_others(t, gid, graph, args):
            out |= mine
    return out


def _moves_others(t: Tracer, gid: int, graph: Graph, args: list[Any]) -> bool:
    """Re-draw the incoming entries of every other unit of raw group `gid`: does the computed
    weight change for the units left alone?"""
    raw = t.groups[gid]
    lo, hi = raw.first, raw.first + raw.size
    n = len(t.leaf_shapes)
    masks = [np.zeros(s, bool) for s in t.leaf_shapes]
    for rel in t.rels:
        if rel.role != "incoming":
            continue
        if rel.owner is not None:
            own = np.broadcast_to(rel.owner, t.leaf_shapes[rel.leaf])
            masks[rel.leaf] |= (own >= lo) & (own < hi) & ((own - lo) % 2 == 0)
        else:
            assert rel.flat is not None and rel.labels is not None
            sel = (rel.labels >= lo) & (rel.labels < hi) & ((rel.labels - lo) % 2 == 0)
            masks[rel.leaf].reshape(-1)[rel.flat[sel]] = True
    leaves = list(args[:n])
    key = jax.random.key(0)
    moved = []
    for i, (leaf, mask) in enumerate(zip(leaves, masks, strict=True)):
        noise = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
        moved.append(jnp.where(mask, leaf + noise * (jnp.std(leaf) + 1), leaf))
    record = {v for v, _ in raw.weights}
    _, before = evaluate(graph, args, {}, record)
    _, after = evaluate(graph, [*moved, *args[n:]], {}, record)
    for vid, labels in raw.weights:
        local = np.broadcast_to(labels - lo, graph.shapes[vid])
        kept = (local % 2 == 1) | (local < 0)
        a, b = np.asarray(before[vid]), np.asarray(after[vid])
        scale = float(np.max(np.abs(a))) + 1e-30
        if kept.any() and float(np.max(np.abs(a - b)[kept])) > 1e-6 * scale:
            return True
    return False
