"""Plasticity injection (Nikishin et al., "Deep reinforcement learning with plasticity
injection", NeurIPS 2023): at a scheduled update the head of a network gets a fresh trainable
copy added and a frozen copy of that fresh head subtracted, h = h_θ + h_θ' − sg(h_θ'₀), so the
output is unchanged at injection, and the old head is frozen.

A training state (vmapped over seeds, checkpointed, carried through `lax.cond`) keeps a fixed
structure, so the injected head's parameters exist from the start: `injectable` wraps a module
in an `Injected` that holds zeros for the new and the frozen head and an inactive gate; the injection writes the fresh head into both
and opens the gate. Shapes never change, so optimizer states, checkpoints and compiled
programs stay valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._anatomy._anatomy import Anatomy
from .._anatomy._build import anatomy as build_anatomy
from .._errors import AnatomyError
from .._metrics import EmptyState
from .._metrics._observe import Observation
from .._registry import register_method
from .._surgery._init import Initializer
from .._surgery._optstate import reset_optimizer_state
from .._surgery._reset import fresh_model
from ._schedule import Schedule
from ._strategy import Operand, StepResult, _when


@jax.custom_vjp
def _frozen_when(value: Array, active: Array) -> Array:
    """`value`, with no gradient where `active` is 1 (the old head after injection)."""
    return value


def _frozen_fwd(value: Array, active: Array) -> tuple[Array, Array]:
    return value, active


def _frozen_bwd(active: Array, g: Array) -> tuple[Array, Array]:
    return g * (1 - active).astype(g.dtype), jnp.zeros_like(active)


_frozen_when.defvjp(_frozen_fwd, _frozen_bwd)


class Injected(eqx.Module):
    """A module with an injectable head: `module(x)` until injection, then
    `module_θ(x) + module_θ'(x) − sg(module_θ'₀(x))` (with `call`: `call(module_θ, x) + ...`).

    Attributes:
        module: the wrapped module; its head entries are the old head θ (frozen after
            injection: no gradient reaches them, gradients still flow through them below).
        fresh: the new head θ', trainable after injection (zeros before).
        frozen: θ'₀, the fresh head as it was drawn (never trained: its term has no gradient).
        active: 0 before injection, 1 after (a float, so that a Polyak-averaged target copy
            passes from one to the other smoothly).
        head: which of `module`'s array leaves (in leaf order) form the head.
        head_paths: their paths, for messages.
        call: how the module is called, `call(module, *args)` (e.g. a stacked ensemble's
            `eqx.filter_vmap`); None: `module(*args)`.

    The three terms are three evaluations of the module with the head leaves substituted, so
    after injection a call costs three forward passes (XLA shares what the three have in
    common); before it, one (a `lax.cond` on the gate skips the other two).
    """

    module: Any
    fresh: tuple[Array, ...]
    frozen: tuple[Array, ...]
    active: Float[Array, ""]
    head: tuple[int, ...] = eqx.field(static=True)
    head_paths: tuple[str, ...] = eqx.field(static=True)
    call: Callable[..., Any] | None = eqx.field(static=True, default=None)

    def _apply(self, module: Any, *args: Any, **kwargs: Any) -> Any:
        return module(*args, **kwargs) if self.call is None else self.call(module, *args, **kwargs)

    def _with_head(self, values: tuple[Array, ...] | list[Array]) -> Any:
        params, static = eqx.partition(self.module, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        for i, v in zip(self.head, values, strict=True):
            leaves[i] = v
        return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # the gate is set by the injection, never trained: no gradient reaches it
        active = jax.lax.stop_gradient(self.active)
        leaves = jax.tree_util.tree_leaves(eqx.filter(self.module, eqx.is_array))
        old = [_frozen_when(leaves[i], active) for i in self.head]
        y_old = self._apply(self._with_head(old), *args, **kwargs)

        def injected(fresh: tuple[Array, ...], frozen: tuple[Array, ...]) -> Any:
            y_new = self._apply(self._with_head(fresh), *args, **kwargs)
            y_frozen = jax.lax.stop_gradient(self._apply(self._with_head(frozen), *args, **kwargs))
            return jax.tree.map(
                lambda o, n, f: o + active.astype(o.dtype) * (n - f), y_old, y_new, y_frozen
            )

        # Until injection the two extra terms are exactly zero (active = 0) and so is their
        # gradient: the branch skips their forward and backward passes at run time. Under a
        # batched gate (vmapped copies) the cond becomes a select and both are computed.
        return jax.lax.cond(active == 0, lambda _f, _z: y_old, injected, self.fresh, self.frozen)


def _head_groups(anatomy: Anatomy, layers: int | None, groups: tuple[str, ...] | None):
    if groups is not None:
        missing = [g for g in groups if g not in anatomy.names]
        if missing or not groups:
            raise ValueError(
                f"plasticity injection: the injection target {', '.join(missing) or '()'} is "
                f"not a neuron group of this {anatomy.model_type}; its groups are "
                f"{', '.join(anatomy.names)}"
            )
        return tuple(anatomy[g] for g in groups)
    candidates = [g for g in anatomy.groups if not g.shared]
    if (
        isinstance(layers, bool)
        or not isinstance(layers, int)
        or not 1 <= layers <= len(candidates)
    ):
        raise ValueError(
            f"plasticity injection: layers={layers!r} is invalid: the number of last layers "
            f"that form the head, from 1 to {len(candidates)} for this {anatomy.model_type} "
            f"(its non-residual groups: {', '.join(g.name for g in candidates)}); or name the "
            "groups"
        )
    return tuple(candidates[-layers:])


def injectable(
    module: Any,
    *example_args: Any,
    layers: int | None = 2,
    groups: tuple[str, ...] | None = None,
    fn: Callable[..., Any] | None = None,
    **example_kwargs: Any,
) -> Injected:
    """`module` wrapped for plasticity injection, its head found by the anatomy.

    The head is the incoming weights, biases and per-unit parameters of the last `layers`
    non-residual neuron groups (execution order; output layer included), or of the named
    `groups`. Every head leaf must belong to the head entirely (a leaf shared with other
    groups, such as stacked ensemble members, cannot be substituted alone). Until
    [`PlasticityInjection`][neurosurgery.PlasticityInjection] injects, the wrapper computes
    exactly `module(*args)`.

    `fn(module, *args)` says how the module is called where that is not `module(*args)`, as for
    [`anatomy`][neurosurgery.anatomy]: e.g. a stacked ensemble (members built with
    `eqx.filter_vmap`), `fn = lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)`, whose head is
    then every member's head. The wrapper keeps `fn` (a static field) and calls the module
    through it, so the wrapper itself is called as `wrapped(*args)`. Give the constructor that
    rebuilds the network (`init`) the same `fn` object, not a new lambda per call: the fresh
    network must have the same structure.

    Raises:
        ValueError: an injection target the anatomy cannot find (the message names the groups
            there are), or a bad `layers`.
        AnatomyError: the module cannot be mapped, or a head leaf is only partly in the head.
    """
    anatomy = build_anatomy(module, *example_args, fn=fn, **example_kwargs)
    chosen = _head_groups(anatomy, layers, groups)
    owned: dict[int, np.ndarray] = {}
    for g in chosen:
        for s in (*g.incoming, *g.per_unit):
            mask = owned.setdefault(s.leaf, np.zeros(anatomy.leaf_shapes[s.leaf], bool))
            mask |= s.element_owner() != -1
    for i, mask in owned.items():
        if not mask.all():
            raise AnatomyError(
                f"plasticity injection: {anatomy.leaf_paths[i]} is only partly in the head "
                f"({', '.join(g.name for g in chosen)}): {int(mask.sum())} of {mask.size} "
                "entries; choose groups whose parameters are whole leaves (a separate layer "
                "per member instead of stacked members)"
            )
    head = tuple(sorted(owned))
    leaves = anatomy._leaves(module)
    zeros = tuple(jnp.zeros_like(leaves[i]) for i in head)
    return Injected(
        module,
        zeros,
        zeros,
        jnp.zeros((), jnp.float32),
        head,
        tuple(anatomy.leaf_paths[i] for i in head),
        fn,
    )


def _is_injected(x: Any) -> bool:
    return isinstance(x, Injected)


def injected_parts(model: PyTree) -> list[Injected]:
    """The `Injected` parts of `model`, in leaf order."""
    return [x for x in jax.tree_util.tree_leaves(model, is_leaf=_is_injected) if _is_injected(x)]


def _replace_parts(model: PyTree, parts: list[Any]) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=_is_injected)
    it = iter(parts)
    leaves = [next(it) if _is_injected(x) else x for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _moves_idle_parameters(optimizer: Any) -> bool:
    """Whether a zero gradient moves a parameter (weight decay): a frozen head would drift."""
    update = getattr(optimizer, "update", None)
    if update is None:
        return False
    with jax.ensure_compile_time_eval(), jax.numpy_dtype_promotion("standard"):
        p = jnp.ones((), jnp.float32)
        moved, _ = update(jnp.zeros((), jnp.float32), optimizer.init(p), p)
        return bool(jnp.any(moved != 0))


@dataclasses.dataclass(frozen=True)
class PlasticityInjection:
    """Plasticity injection at update `at` (Nikishin et al., NeurIPS 2023).

    Every [`Injected`][neurosurgery.Injected] part of the network (build it with
    [`wrap`][neurosurgery.PlasticityInjection.wrap] or [`injectable`][neurosurgery.injectable]:
    its parameters must exist from the start) gets, when the schedule is due, a fresh head θ'
    drawn by the network's constructor `init` (the same entries of `init(key)`), written into
    both its new and its frozen copy, and its gate opened: the output h_θ + h_θ' − sg(h_θ'₀) is
    the old output at that moment (exactly: the last two terms are the same computation), the
    old head θ is frozen, θ' trains, and the layers below keep training (their gradient then
    comes through both heads). The optimizer-state entries of the old, new and frozen heads
    are zeroed, so that the frozen ones never move again (Adam with a zero gradient and zero
    moments gives a zero update) and the new head starts afresh; an optimizer that moves
    parameters with a zero gradient (weight decay) would make the frozen heads drift and is
    refused. One injection per part (the schedule is a single update count). `info["injected"]`
    is the fraction of the parts injected so far.
    """

    at: int = 100_000
    layers: int | None = 2
    groups: tuple[str, ...] | None = None
    name: str = "injection"
    observes: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 1:
            raise ValueError(
                f"PlasticityInjection: at={self.at!r} is invalid: the update count of the "
                "injection, an integer >= 1"
            )
        if self.groups is None and (
            isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1
        ):
            raise ValueError(
                f"PlasticityInjection: layers={self.layers!r} is invalid: the number of last "
                "layers that form the head, an integer >= 1 (or name the groups)"
            )

    @property
    def schedule(self) -> Schedule:
        return Schedule.at(self.at)

    def wrap(
        self,
        module: Any,
        *example_args: Any,
        fn: Callable[..., Any] | None = None,
        **example_kwargs: Any,
    ) -> Injected:
        """`module` made injectable with this strategy's head (see `injectable`; `fn`: how the
        module is called, e.g. a stacked ensemble's vmap)."""
        return injectable(
            module, *example_args, layers=self.layers, groups=self.groups, fn=fn, **example_kwargs
        )

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        """Inject when `schedule.due(step, since)`."""
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        parts = injected_parts(model)
        if not parts:
            raise ValueError(
                f"plasticity injection: the {type(model).__name__} has no ns.Injected part. A "
                "training state keeps its structure, so the injected head must exist from the "
                "start: build the network with its head wrapped, `strategy.wrap(module, "
                "*example)` (or ns.injectable)"
            )
        if isinstance(init, Initializer):
            raise TypeError(
                "plasticity injection draws the fresh head from the network's constructor: pass "
                "init=make (the function that builds the network from a key), not a named "
                "initializer"
            )
        if (optimizer is None) != (opt_state is None):
            raise ValueError("Pass optimizer and opt_state together (or neither).")
        if optimizer is not None and _moves_idle_parameters(optimizer):
            raise ValueError(
                "plasticity injection: this optimizer changes parameters whose gradient is zero "
                "(weight decay), so the frozen heads would drift and the network's function "
                "with them; exclude the Injected parts' `module` head and `frozen` entries from "
                "the decay (optax.masked) or use an optimizer without weight decay"
            )
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            fresh_parts = injected_parts(fresh_model(anatomy, init, key))
            new_parts = []
            for part, drawn in zip(injected_parts(model), fresh_parts, strict=True):
                leaves = jax.tree_util.tree_leaves(eqx.filter(drawn.module, eqx.is_array))
                head = tuple(leaves[i] for i in part.head)
                new_parts.append(
                    eqx.tree_at(
                        lambda p: (p.fresh, p.frozen, p.active),
                        part,
                        (head, head, jnp.ones_like(part.active)),
                    )
                )
            new = _replace_parts(model, new_parts)
            if optimizer is None:
                return new, opt_state
            params = eqx.filter(model, eqx.is_array)
            masks = jax.tree.map(
                lambda x: jnp.zeros(jnp.shape(x), bool) if eqx.is_array(x) else None, params
            )
            mask_parts = []
            for part in injected_parts(masks):
                leaves, treedef = jax.tree_util.tree_flatten(part.module)
                for i in part.head:
                    leaves[i] = jnp.ones(leaves[i].shape, bool)
                mask_parts.append(
                    eqx.tree_at(
                        lambda p: (p.module, p.fresh, p.frozen),
                        part,
                        (
                            jax.tree_util.tree_unflatten(treedef, leaves),
                            tuple(jnp.ones(f.shape, bool) for f in part.fresh),
                            tuple(jnp.ones(f.shape, bool) for f in part.frozen),
                        ),
                    )
                )
            masks = _replace_parts(masks, mask_parts)
            return new, reset_optimizer_state(optimizer, opt_state, params, masks)

        model, opt_state = _when(due, act, model, opt_state)
        active = jnp.stack([p.active for p in injected_parts(model)])
        return StepResult(model, opt_state, state, {"injected": jnp.mean(active)})


@register_method("injection")
def _injection(at: tuple[int, ...] = (100_000,), layers: int = 2) -> PlasticityInjection:
    """injection: plasticity injection at the update count `at` (one), into the last `layers`
    layers of each network built injectable.

    Args:
        at: the one update count of the injection.
        layers: how many last layers of each network form the injected head.
    """
    if len(at) != 1:
        raise ValueError(
            f"injection: at={tuple(at)!r} is invalid: plasticity injection happens once, at one "
            "update count (e.g. --reset.at 50000)"
        )
    return PlasticityInjection(int(at[0]), layers)
