"""Resets of flagged units in a model and its optimizer state, and the strategies built on them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree

from ._anatomy import Anatomy
from ._errors import AnatomyError
from ._init import Initializer
from ._metrics import Metric, Scores
from ._observe import Observation
from ._optstate import Initable, reset_optimizer_state
from ._select import (
    _check_fraction,
    _check_tau,
    bottom_fraction,
    capped_threshold,
    inactive_ratio,
    threshold,
)


def _resettable_masks(anatomy: Anatomy, masks: Mapping[str, Array], include_shared: bool
                      ) -> dict[str, Array]:  # fmt: skip
    unknown = [name for name in masks if name not in anatomy.names]
    if unknown:
        raise AnatomyError(
            f"Masks name groups {unknown} that this anatomy does not have; its groups are "
            f"{list(anatomy.names)}. Build masks from scores of this anatomy."
        )
    out = {}
    for name, mask in masks.items():
        group = anatomy[name]
        if group.output or (group.shared and not include_shared):
            continue  # outputs are never reset; residual-stream channels only on request
        out[name] = jnp.asarray(mask, bool)
    return out


def _draw_named(init: Initializer, key: PRNGKeyArray, leaf: Array, slices: list, anatomy: Anatomy
                ) -> Array:  # fmt: skip
    """A fresh leaf from a named initializer (weights) or zeros (biases)."""
    s = slices[0]
    if s.kind != "weight":
        return jnp.zeros_like(leaf)
    group = next(g for g in anatomy.groups if s in g.incoming)
    n_members = len(group.members)
    shape = leaf.shape[n_members:]
    unit_axes = tuple(a - n_members for a in s.axes if a >= n_members)
    fan_in_axes = tuple(a for a in range(len(shape)) if a not in unit_axes)
    draw = lambda k: init(k, shape, leaf.dtype, fan_in_axes=fan_in_axes, fan_out_axes=unit_axes)
    if n_members:
        keys = jax.random.split(key, int(np.prod(leaf.shape[:n_members])))
        return jax.vmap(draw)(keys).reshape(leaf.shape)
    return draw(key)


def reset(
    anatomy: Anatomy,
    model: PyTree,
    masks: Mapping[str, Bool[Array, "..."]],
    key: PRNGKeyArray,
    *,
    fresh: PyTree | None = None,
    init: Initializer | None = None,
    outgoing: str = "zero",
    outgoing_scale: float = 0.02,
    include_shared: bool = False,
    optimizer: Initable | None = None,
    opt_state: PyTree | None = None,
    reset_count: bool = False,
) -> tuple[PyTree, PyTree | None]:
    """Reset the flagged units of `model` (and their entries of `opt_state`).

    For each flagged unit: incoming weights and bias re-drawn (from `fresh`, a freshly initialised
    model of the same architecture — each layer's own initializer — or from the named `init`, with
    biases zeroed); per-unit parameters back to their initial values (from `fresh`, else scales to
    1 and shifts to 0); outgoing weights zeroed (`"zero"`: the re-drawn incoming weights cannot
    reach the outputs, so a unit that was dormant — zero activation — leaves the model's function
    unchanged at the moment of reset; a live unit's contribution is removed) or set to small random
    values (`"small"`: `outgoing_scale` × the consumer
    leaf's standard deviation × N(0, 1)). Output groups are never reset; residual-stream (shared)
    groups only with `include_shared=True`.

    Every entry of `opt_state` that belongs to a touched parameter entry is zeroed (Adam's moments,
    momentum, ...), found generically in any optax state; `reset_count=True` also restarts per-entry
    step counts (see [`adam_per_entry`][neurosurgery.adam_per_entry]). Unflagged entries stay
    bit-identical. Runs under `jax.jit` and `jax.vmap`: masks are arrays.

    Returns:
        `(model, opt_state)`; `opt_state` is `None` when none was given.
    """
    if outgoing not in ("zero", "small"):
        raise ValueError(f"outgoing={outgoing!r} is unknown; use 'zero' or 'small'.")
    if fresh is None and init is None:
        raise ValueError(
            "reset() needs the initial distribution of the weights it re-draws: pass "
            "fresh=make_model(key) (each layer's own initializer) or init=ns.lecun_normal() (or "
            "another named initializer)."
        )
    if (optimizer is None) != (opt_state is None):
        raise ValueError("Pass optimizer and opt_state together (or neither).")
    masks = _resettable_masks(anatomy, masks, include_shared)
    leaves = anatomy.check_model(model)
    fresh_leaves = anatomy.check_model(fresh) if fresh is not None else None
    params, static = eqx.partition(model, eqx.is_array)
    in_masks = anatomy.element_masks(masks, ("incoming",))
    pu_masks = anatomy.element_masks(masks, ("per_unit",))
    out_masks = anatomy.element_masks(masks, ("outgoing",))
    slices: dict[int, dict[str, list]] = {}
    for g in anatomy.groups:
        for role in ("incoming", "per_unit", "outgoing"):
            for s in getattr(g, role):
                slices.setdefault(s.leaf, {}).setdefault(role, []).append(s)
    keys = jax.random.split(key, 2 * len(leaves))
    new_leaves = []
    for i, leaf in enumerate(leaves):
        new = leaf
        in_mask, pu_mask, out_mask = in_masks[i], pu_masks[i], out_masks[i]
        if in_mask is not None:
            source = fresh_leaves[i] if fresh_leaves is not None else _draw_named(
                init, keys[2 * i], leaf, slices[i]["incoming"], anatomy)  # type: ignore[arg-type]  # fmt: skip
            new = jnp.where(in_mask, source, new)
        if pu_mask is not None:
            if fresh_leaves is not None:
                source = fresh_leaves[i]
            else:
                one = slices[i]["per_unit"][0].kind == "scale"
                source = jnp.ones_like(leaf) if one else jnp.zeros_like(leaf)
            new = jnp.where(pu_mask, source, new)
        if out_mask is not None:
            if outgoing == "zero":
                source = jnp.zeros_like(leaf)
            else:
                noise = jax.random.normal(keys[2 * i + 1], leaf.shape, leaf.dtype)
                source = outgoing_scale * jnp.std(leaf) * noise
            new = jnp.where(out_mask, source, new)
        new_leaves.append(new)
    new_model = eqx.combine(anatomy.to_tree(new_leaves), static)
    if optimizer is None:
        return new_model, None
    union = []
    for i, leaf in enumerate(leaves):
        parts = [m for m in (in_masks[i], pu_masks[i], out_masks[i]) if m is not None]
        mask = jnp.zeros(leaf.shape, bool)
        for m in parts:
            mask = mask | m
        union.append(mask)
    new_state = reset_optimizer_state(optimizer, opt_state, params, anatomy.to_tree(union),
                                      reset_count=reset_count)  # fmt: skip
    return new_model, new_state


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which units a score flags: `"threshold"` (score ≤ τ), `"fraction"` (the lowest
    `fraction` of each layer) or `"capped"` (score ≤ τ, at most `max_fraction` of each layer)."""

    mode: str = "threshold"
    tau: float = 0.0
    fraction: float = 0.0
    max_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("threshold", "fraction", "capped"):
            raise ValueError(
                f"selection mode {self.mode!r} is unknown; use threshold, fraction or capped"
            )
        _check_tau(self.tau)
        _check_fraction("fraction", self.fraction)
        _check_fraction("max_fraction", self.max_fraction)

    def __call__(self, scores: Scores) -> dict[str, Array]:
        if self.mode == "threshold":
            return {k: threshold(v, self.tau) for k, v in scores.items()}
        if self.mode == "fraction":
            return {k: bottom_fraction(v, self.fraction) for k, v in scores.items()}
        return {k: capped_threshold(v, self.tau, self.max_fraction) for k, v in scores.items()}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Every `every` updates, from update `start` (inclusive) to `end` (exclusive, `None`: never)."""

    every: int = 1000
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1 or self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(
                f"Schedule(every={self.every}, start={self.start}, end={self.end}) is empty or "
                "invalid: every must be >= 1, start >= 0 and end > start."
            )

    def due(self, step: Int[Array, ""] | int) -> Bool[Array, ""]:
        step = jnp.asarray(step)
        ok = (step > self.start) & ((step - self.start) % self.every == 0)
        return ok if self.end is None else ok & (step < self.end)


@dataclasses.dataclass(frozen=True)
class Resetter:
    """A reset strategy: a metric, a selection rule, a schedule and how to reset.

    `init(anatomy)` gives the metric's state; `step(...)` scores an observation, flags units and
    resets them when the schedule is due (masks are emptied otherwise, so model and optimizer
    state stay bit-identical): one pure function, usable inside `jax.jit` and `jax.vmap`.
    """

    metric: Metric
    select: Selection = Selection()
    schedule: Schedule = Schedule()
    outgoing: str = "zero"
    outgoing_scale: float = 0.02
    init_weights: Initializer | None = None
    include_shared: bool = False
    reset_count: bool = False

    def init(self, anatomy: Anatomy) -> Any:
        return self.metric.init(anatomy)

    def step(self, anatomy: Anatomy, model: PyTree, observation: Observation, state: Any,
             key: PRNGKeyArray, step: Int[Array, ""] | int, *, fresh: PyTree | None = None,
             optimizer: Initable | None = None, opt_state: PyTree | None = None,
             ) -> tuple[PyTree, PyTree | None, Any, dict[str, Array]]:  # fmt: skip
        """Score, select, reset if due. Returns `(model, opt_state, state, info)`.

        `info` holds flat slash-keyed figures: `reset/<group>` (fraction of the group's units
        reset now) and `inactive/<group>` (fraction flagged, due or not).
        """
        scores, state = self.metric.score(anatomy, observation, state)
        flagged = self.select(scores)
        due = self.schedule.due(step)
        masks = {k: m & due for k, m in flagged.items()}
        model, opt_state = reset(
            anatomy, model, masks, key, fresh=fresh, init=self.init_weights,
            outgoing=self.outgoing, outgoing_scale=self.outgoing_scale,
            include_shared=self.include_shared, optimizer=optimizer, opt_state=opt_state,
            reset_count=self.reset_count,
        )  # fmt: skip
        applied = _resettable_masks(anatomy, masks, self.include_shared)
        info = {f"inactive/{k}": jnp.mean(inactive_ratio(m)) for k, m in flagged.items()}
        info.update({f"reset/{k}": jnp.mean(inactive_ratio(m)) for k, m in applied.items()})
        return model, opt_state, state, info


def redo(tau: float = 0.0, every: int = 1000, **options: Any) -> Resetter:
    """ReDo (Sokar et al. 2023): reset τ-dormant units every `every` updates."""
    from ._metrics import Dormant

    return _strategy(Dormant(), tau, every, options)


def regrama(tau: float = 0.0, every: int = 1000, source: str = "preactivation", **options: Any
            ) -> Resetter:  # fmt: skip
    """ReGraMa (Liu et al. 2025): reset GraMa-inactive units every `every` updates."""
    from ._metrics import GraMa

    return _strategy(GraMa(source), tau, every, options)  # type: ignore[arg-type]


def _strategy(metric: Metric, tau: float, every: int, options: dict[str, Any]) -> Resetter:
    max_fraction = options.pop("max_fraction", None)
    start, end = options.pop("start", 0), options.pop("end", None)
    select = Selection("capped", tau, max_fraction=max_fraction) if max_fraction is not None else (
        Selection("threshold", tau))  # fmt: skip
    return Resetter(metric, select, Schedule(every, start, end), **options)
