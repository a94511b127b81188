"""Whole-network baselines: shrink-and-perturb and a full reset to fresh initial weights.

Both act on every floating-point array leaf of a pytree (an Equinox model, `eqx.filter(model,
eqx.is_array)`, a dict of arrays); every other leaf (activation functions, integer counters, ...)
is kept from `params`. `fresh_params` is a freshly initialised copy of the same network, e.g. the
model built again with a new key: the caller owns the initialisation, so any architecture works.

The strategies `ShrinkPerturb` and `FullReset` apply them on a schedule, and register as the
methods `shrink_perturb` and `full_reset`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree, Real, ScalarLike

from .._anatomy._anatomy import Anatomy
from .._metrics import EmptyState
from .._metrics._observe import Observation
from .._registry import register_method
from .._surgery._optstate import Initable
from .._treecheck import describe, first_path_difference, flatten_with_paths
from ._schedule import Schedule
from ._strategy import Operand, StepResult, Strategy, _fresh_params, _when

__all__ = ["FullReset", "ShrinkPerturb", "full_reset", "shrink_and_perturb"]

T = TypeVar("T")

_FIX = "build fresh_params the same way as params (the same constructor and filter, with a new key)"


def _check_pair(params: Any, fresh_params: Any) -> None:
    """Raise `ValueError` unless the two trees share structure and floating leaf shapes/dtypes."""
    p_paths, p_leaves, p_def = flatten_with_paths(params, none_is_leaf=True)
    f_paths, f_leaves, f_def = flatten_with_paths(fresh_params, none_is_leaf=True)
    if p_paths != f_paths:
        in_fresh, in_params = first_path_difference(f_paths, p_paths)
        raise ValueError(
            "fresh_params does not match params: the first difference is "
            f"fresh_params{in_fresh} where params has params{in_params}; {_FIX}"
        )
    for path, p, f in zip(p_paths, p_leaves, f_leaves, strict=True):
        if eqx.is_inexact_array(p) or eqx.is_inexact_array(f):
            same_kind = eqx.is_inexact_array(p) and eqx.is_inexact_array(f)
            if not same_kind or p.shape != f.shape or p.dtype != f.dtype:
                raise ValueError(
                    f"fresh_params{path} is {describe(f)} but params{path} is {describe(p)}; {_FIX}"
                )
    if p_def != f_def:
        raise ValueError(
            "fresh_params does not match params: same leaf paths but different node types or "
            f"static fields ({f_def} versus {p_def}); {_FIX}"
        )


def _check_coefficient(name: str, value: ScalarLike, upper: float | None) -> None:
    """Check a Python/NumPy coefficient; traced values cannot be checked and pass through."""
    try:
        number = float(np.asarray(value))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not math.isfinite(number) or number < 0 or (upper is not None and number > upper):
        allowed = f"in [0, {upper}]" if upper is not None else "a finite number >= 0"
        raise ValueError(f"{name}={number!r} is invalid: it must be {allowed}")


def shrink_and_perturb(
    params: T, fresh_params: T, shrink: Real[ScalarLike, ""], perturb: Real[ScalarLike, ""]
) -> T:
    """Shrink the weights towards zero and add a fraction of fresh initial weights.

    `θ ← shrink·θ + perturb·θ_fresh` on every floating-point array leaf (Ash & Adams 2020). The
    shrink lowers the weight norm that makes warm-started networks generalise badly; the fresh
    noise restores gradient diversity. `shrink=1, perturb=0` leaves the values unchanged and
    `shrink=0, perturb=1` is a full reset.

    Args:
        params: The current parameters (any pytree, e.g. an Equinox model).
        fresh_params: A freshly initialised copy with the same structure.
        shrink: Factor on the current weights, in `[0, 1]`.
        perturb: Factor on the fresh weights, `>= 0`. Both are checked when given as Python or
            NumPy numbers; traced values (inside `jit`/`vmap`) are used as is.

    Returns:
        A tree like `params` with the new floating-point leaves (each in its own dtype).

    Raises:
        ValueError: If the trees differ in structure or in a floating leaf's shape or dtype (the
            message names the first such path), or a coefficient is out of range.
    """
    _check_coefficient("shrink", shrink, upper=1.0)
    _check_coefficient("perturb", perturb, upper=None)
    _check_pair(params, fresh_params)

    def mix(p: Any, f: Any) -> Any:
        if not eqx.is_inexact_array(p):
            return p
        dtype = p.dtype
        return jnp.asarray(shrink, dtype) * p + jnp.asarray(perturb, dtype) * f

    return jax.tree.map(mix, params, fresh_params)


def full_reset(params: T, fresh_params: T) -> T:
    """Replace every floating-point array leaf with its fresh counterpart (BRO's full resets).

    The arrays of `fresh_params` are returned as they are (bit-identical); other leaves are kept
    from `params`. Checking the structure first turns "re-created the wrong network" into a clear
    error instead of a silently different model.

    Args:
        params: The current parameters (any pytree, e.g. an Equinox model).
        fresh_params: A freshly initialised copy with the same structure.

    Returns:
        A tree like `params` holding the fresh floating-point arrays.

    Raises:
        ValueError: If the trees differ in structure or in a floating leaf's shape or dtype.
    """
    _check_pair(params, fresh_params)
    return jax.tree.map(lambda p, f: f if eqx.is_inexact_array(p) else p, params, fresh_params)


def _optimizer_action(
    optimizer: Initable | None, opt_state: Any, params: PyTree, reset_optimizer: bool
) -> Any:
    if optimizer is None or not reset_optimizer:
        return opt_state
    return optimizer.init(params)


@dataclasses.dataclass(frozen=True)
class ShrinkPerturb:
    """Shrink-and-perturb on a schedule (Ash & Adams 2020): `θ ← shrink·θ + perturb·θ_fresh`
    on every floating-point leaf, θ_fresh from `init`. The optimizer state is kept unless
    `reset_optimizer` (then it starts afresh). `info["reset"]` is 1 where it acted."""

    shrink: float = 0.8
    perturb: float = 0.2
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    reset_optimizer: bool = False
    name: str = "shrink_perturb"
    observes: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        # the whole-network function checks its coefficients; run it once on scalars
        shrink_and_perturb(jnp.zeros(()), jnp.zeros(()), self.shrink, self.perturb)

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            params, static = eqx.partition(model, eqx.is_array)
            fresh = _fresh_params(anatomy, model, init, key)
            new = shrink_and_perturb(params, fresh, self.shrink, self.perturb)
            opt_state = _optimizer_action(optimizer, opt_state, new, self.reset_optimizer)
            return eqx.combine(new, static), opt_state

        model, opt_state = _when(due, act, model, opt_state)
        return StepResult(model, opt_state, state, {"reset": due.astype(jnp.float32)})


@dataclasses.dataclass(frozen=True)
class FullReset:
    """Every floating-point leaf replaced by fresh initial weights on a schedule, as BRO does
    (Nauman et al. 2024; BRO also resets its temperature and optimism, which are not part of a
    network). The optimizer state starts afresh unless `reset_optimizer=False`.
    `info["reset"]` is 1 where it acted."""

    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    reset_optimizer: bool = True
    name: str = "full_reset"
    observes: bool = dataclasses.field(default=False, init=False)

    def init(self, anatomy: Anatomy) -> EmptyState:
        return EmptyState()

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            params, static = eqx.partition(model, eqx.is_array)
            new = full_reset(params, _fresh_params(anatomy, model, init, key))
            opt_state = _optimizer_action(optimizer, opt_state, new, self.reset_optimizer)
            return eqx.combine(new, static), opt_state

        model, opt_state = _when(due, act, model, opt_state)
        replaced = {g.name: jnp.full(g.unit_shape, due) for g in anatomy.groups}
        return StepResult(model, opt_state, state, {"reset": due.astype(jnp.float32)}, replaced)


@register_method("shrink_perturb")
def _shrink_perturb(
    shrink: float = 0.8,
    perturb: float = 0.2,
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
    reset_optimizer: bool = False,
) -> Strategy:
    """shrink_perturb: θ ← shrink·θ + perturb·θ_fresh every `every` updates.

    Args:
        shrink: factor on the current weights.
        perturb: factor on fresh weights.
        every: gradient updates between resets.
        start: updates before which no reset happens.
        end: updates from which no reset happens (None: never).
        reset_optimizer: start the optimizer state afresh at each reset.
    """
    return ShrinkPerturb(shrink, perturb, Schedule(every, start, end), reset_optimizer)


@register_method("full_reset")
def _full_reset(
    every: int | None = None,
    at: tuple[int, ...] = (),
    start: int = 0,
    end: int | None = None,
    reset_optimizer: bool = True,
) -> Strategy:
    """full_reset: fresh initial weights every `every` updates or at the update counts `at`.

    Args:
        every: gradient updates between resets (or give `at`).
        at: the update counts of the resets (instead of every).
        start: updates before which no reset happens.
        end: updates from which no reset happens (None: never).
        reset_optimizer: start the optimizer state afresh at each reset.
    """
    if (every is None) == (not at):
        raise ValueError("full_reset: give either every (updates between resets) or at (counts)")
    schedule = Schedule.at(*at) if at else Schedule(every, start, end)
    return FullReset(schedule, reset_optimizer)
