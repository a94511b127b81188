"""Resets of flagged units in a model and its optimizer state."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, PRNGKeyArray, PyTree

from .._anatomy._anatomy import Anatomy, _check_unit_masks
from .._anatomy._groups import LeafSlice, NeuronGroup
from .._errors import AnatomyError
from ._init import Initializer
from ._optstate import Initable, reset_optimizer_state

#: where re-drawn weights come from: the model's constructor `make(key) -> model` (each layer's
#: own initializer), or a named distribution
Init = Callable[[PRNGKeyArray], Any] | Initializer


class ResetResult(NamedTuple):
    """What [`reset`][neurosurgery.reset] returns.

    Attributes:
        model: the model with the flagged units reset.
        opt_state: the optimizer state with their entries reset (`None` when none was given).
        applied: the unit masks that were applied: output groups (never reset), shared
            groups and groups with a `no_reset` reason (unless `include_shared`) left out.
    """

    model: PyTree
    opt_state: PyTree | None
    applied: dict[str, Bool[Array, "..."]]


def applied_masks(
    anatomy: Anatomy, masks: Mapping[str, Array], include_shared: bool
) -> dict[str, Array]:
    """The masks a reset applies: outputs never; residual-stream channels and groups with a
    `no_reset` reason (attention query/key pairs, ...) only on request."""
    _check_unit_masks(anatomy, masks)
    out = {}
    for name, mask in masks.items():
        group = anatomy[name]
        if group.output or ((group.shared or group.no_reset) and not include_shared):
            continue
        out[name] = jnp.asarray(mask)
    return out


def _is_model(x: Any) -> bool:
    """An Equinox module holding arrays (a model, not a constructor)."""
    return isinstance(x, eqx.Module) and bool(
        jax.tree_util.tree_leaves(eqx.filter(x, eqx.is_array))
    )


def fresh_model(anatomy: Anatomy, init: Any, key: PRNGKeyArray) -> PyTree:
    """`init(key)`, checked to be a model of this anatomy's shapes (for a constructor)."""
    if _is_model(init):
        raise TypeError(
            f"init is a model instance ({type(init).__name__}), not a constructor: a reset "
            "draws fresh weights by calling init(key). Pass the constructor, e.g. "
            f"`init=lambda key: {type(init).__name__}(..., key=key)`, or a named distribution, "
            "e.g. `init=ns.lecun_normal()`."
        )
    try:
        inspect.signature(init).bind(key)
    except TypeError as err:
        raise TypeError(
            f"init={init!r} cannot be called as init(key) ({err}). Pass the model's constructor, "
            "`init=lambda key: make_model(key)`, or a named distribution, e.g. "
            "`init=ns.lecun_normal()` or `init=ns.Initializer(jax.nn.initializers.he_uniform)`."
        ) from err
    except ValueError:  # no signature to check (a builtin): the call below will tell
        pass
    anatomy._leaves(eqx.filter_eval_shape(init, key))
    return init(key)


def reset(
    anatomy: Anatomy,
    model: PyTree,
    masks: Mapping[str, Array],
    key: PRNGKeyArray,
    *,
    init: Init,
    outgoing: str = "zero",
    outgoing_scale: float = 0.02,
    include_shared: bool = False,
    optimizer: Initable | None = None,
    opt_state: PyTree | None = None,
    reset_count: bool = False,
) -> ResetResult:
    """Reset the flagged units of `model` (and their entries of `opt_state`).

    For each flagged unit: incoming weights and bias re-drawn (`init`: the model's constructor,
    `make(key) -> model`, whose layers use their own initializers; or an
    [`Initializer`][neurosurgery.Initializer], with biases zeroed); per-unit parameters back to
    their initial values (from the constructor; with an initializer, scales to 1 and shifts to
    0); outgoing weights zeroed (`"zero"`: the re-drawn incoming weights cannot reach the
    outputs, so a unit that was dormant — zero activation — leaves the model's function
    unchanged at the moment of reset, in groups that are
    [`preserving`][neurosurgery.NeuronGroup.preserving]: not behind a norm over their units
    (`normalized`, where a re-drawn unit moves the statistics) and not `entangled_with` another
    group read through the same columns; a live unit's contribution is removed) or set to small
    random values (`"small"`: `outgoing_scale` × the consumer leaf's standard deviation ×
    N(0, 1)). Output groups are never reset; residual-stream (shared) groups and groups left out
    by default for another reason (`NeuronGroup.no_reset`: attention query/key pairs, units
    read through a constant weight or reaching the outputs only through a sum or max over
    units) only with `include_shared=True`. `key` is split once for
    the draw and the outgoing noise.

    Every entry of `opt_state` that belongs to a touched parameter entry is zeroed (Adam's moments,
    momentum, ...), found generically in any optax state; `reset_count=True` also restarts per-entry
    step counts (see [`adam_per_entry`][neurosurgery.adam_per_entry]). Unflagged entries stay
    bit-identical. Runs under `jax.jit` and `jax.vmap`: masks are arrays.

    Raises:
        AnatomyError: a mask names a group the anatomy lacks, has the wrong shape or is not
            boolean; `model` (or the constructor's model) does not match the anatomy.
    """
    if outgoing not in ("zero", "small"):
        raise ValueError(f"outgoing={outgoing!r} is unknown; use 'zero' or 'small'.")
    if (optimizer is None) != (opt_state is None):
        raise ValueError("Pass optimizer and opt_state together (or neither).")
    masks = applied_masks(anatomy, masks, include_shared)
    leaves = anatomy._leaves(model)
    k_init, k_noise = jax.random.split(key)
    roles = ("incoming", "per_unit", "outgoing")
    by_role = {role: anatomy.element_masks(masks, (role,)) for role in roles}
    if isinstance(init, Initializer):
        touched = {i for i, m in enumerate(by_role["incoming"]) if m is not None}
        source = _named_source(anatomy, init, k_init, leaves, touched)
    else:
        source = anatomy._leaves(fresh_model(anatomy, init, k_init))
    params, static = eqx.partition(model, eqx.is_array)
    noise_keys = jax.random.split(k_noise, len(leaves))
    new_leaves = []
    for i, leaf in enumerate(leaves):
        new = leaf
        for role in ("incoming", "per_unit"):
            mask = by_role[role][i]
            if mask is not None:
                new = jnp.where(mask, source[i], new)
        out_mask = by_role["outgoing"][i]
        if out_mask is not None:
            if outgoing == "zero":
                replacement = jnp.zeros_like(leaf)
            else:
                noise = jax.random.normal(noise_keys[i], leaf.shape, leaf.dtype)
                replacement = outgoing_scale * jnp.std(leaf) * noise
            new = jnp.where(out_mask, replacement, new)
        new_leaves.append(new)
    new_model = eqx.combine(anatomy._tree(new_leaves), static)
    if optimizer is None:
        return ResetResult(new_model, None, masks)
    union = []
    for i, leaf in enumerate(leaves):
        mask = jnp.zeros(leaf.shape, bool)
        for role in roles:
            part = by_role[role][i]
            if part is not None:
                mask = mask | part
        union.append(mask)
    new_state = reset_optimizer_state(
        optimizer, opt_state, params, anatomy._tree(union), reset_count=reset_count
    )
    return ResetResult(new_model, new_state, masks)


def _named_source(
    anatomy: Anatomy,
    init: Initializer,
    key: PRNGKeyArray,
    leaves: list[Array],
    draw: set[int] | None = None,
) -> list[Any]:
    """Per leaf, the values re-drawn entries take with a named initializer: a fresh draw for
    incoming weights (of the leaves in `draw`; all by default), zeros for biases and shifts,
    ones for scales."""
    owners: dict[int, tuple[NeuronGroup, LeafSlice]] = {}
    kinds: dict[int, str] = {}
    for g in anatomy.groups:
        for s in g.incoming:
            if s.kind == "weight":
                owners.setdefault(s.leaf, (g, s))
            kinds.setdefault(s.leaf, s.kind)
        for s in g.per_unit:
            kinds.setdefault(s.leaf, s.kind)
    keys = jax.random.split(key, len(leaves))
    out: list[Any] = []
    for i, leaf in enumerate(leaves):
        if i in owners and (draw is None or i in draw):
            group, s = owners[i]
            out.append(_draw(init, keys[i], leaf, s, len(group.members), anatomy.leaf_paths[i]))
        elif kinds.get(i) == "scale":
            out.append(jnp.ones_like(leaf))
        else:
            out.append(jnp.zeros_like(leaf))
    return out


def _draw(
    init: Initializer, key: PRNGKeyArray, leaf: Array, s: LeafSlice, n_members: int, path: str
) -> Array:
    """A fresh draw of a weight leaf whose units lie along `s.axes` (members drawn one by one)."""
    shape = leaf.shape[n_members:]
    unit_axes = tuple(a - n_members for a in s.axes if a >= n_members)
    try:
        draw = lambda k: init(k, shape, leaf.dtype, unit_axes=unit_axes)
        if not n_members:
            return draw(key)
        keys = jax.random.split(key, int(np.prod(leaf.shape[:n_members])))
        return jax.vmap(draw)(keys).reshape(leaf.shape)
    except (ValueError, TypeError) as err:
        raise AnatomyError(f"{init!r} cannot draw {path} (shape {leaf.shape}): {err}") from err
