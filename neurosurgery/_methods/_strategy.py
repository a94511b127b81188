"""Strategies: what to reset and when, as frozen configs with pure `init` and `step`.

A strategy acts on one network. `init(anatomy)` gives its state; `step(anatomy, operand,
observation, state)` scores the update's observation (if it needs one), decides, and acts on
the operand's network only when its schedule is due: the fresh weights
are drawn and the reset runs inside a `lax.cond`, so a training step that is not due pays for
neither. Everything runs under `jax.jit` and `jax.vmap` (pass the update count unbatched, so the
branch stays a branch).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from .._anatomy._anatomy import Anatomy
from .._metrics import Dormant, GraMa, Metric, Scores, after_reset, init_state
from .._metrics._observe import Observation
from .._registry import register_method
from .._surgery._init import Initializer
from .._surgery._optstate import Initable
from .._surgery._reset import Init, _named_source, applied_masks, fresh_model, reset
from ._schedule import Schedule, When
from ._select import Selection, inactive_ratio, network_inactive_ratio

Count = Int[Array, ""] | int


class Operand(NamedTuple):
    """One network as a strategy's `step` receives it, and what the step may use to change it.

    Attributes:
        model: the network (an Equinox module, or any pytree the anatomy was traced from).
        key: the key of this step's randomness (fresh weights, perturbations).
        step: the update count the schedule reads; pass it unbatched under `jax.vmap`, so
            that a step that is not due stays a skipped branch.
        init: where fresh weights come from: the network's constructor (`key -> network`)
            or a named initializer ([`ns.lecun_normal()`][neurosurgery.lecun_normal], ...).
        optimizer: the network's optimizer (anything with optax's `init`), to reset the
            moments of replaced weights; `None` leaves optimizer state out.
        opt_state: its state (given with `optimizer`, or neither).
        since: an update count to count the schedule from (e.g. where a run resumed into a
            new phase); `None`: from 0.

    A step returns the changed network and optimizer state in its
    [`StepResult`][neurosurgery.StepResult]; use `operand._replace(model=...)` to hand a
    changed network on (as [`Chain`][neurosurgery.Chain] does between its members).
    """

    model: PyTree
    key: PRNGKeyArray
    step: Count
    init: Init
    optimizer: Initable | None = None
    opt_state: PyTree | None = None
    since: Count | None = None


class StepResult(NamedTuple):
    """What a strategy's `step` returns.

    Attributes:
        model: the network after the step.
        opt_state: its optimizer state (`None` when none was given).
        state: the strategy's new state.
        info: flat slash-keyed figures of this step (see each strategy).
        replaced: group name → boolean mask (`unit_shape`) of the units whose weights this
            step replaced (all False where nothing was due), for the metrics that keep
            per-unit state ([`after_reset`][neurosurgery.after_reset]); `None` for a strategy
            that moves weights without replacing units (shrink-and-perturb, CPR, injection).
    """

    model: PyTree
    opt_state: PyTree | None
    state: Any
    info: dict[str, Array]
    replaced: dict[str, Array] | None = None


@runtime_checkable
class Strategy(Protocol):
    """What a reset strategy provides (see [`Resetter`][neurosurgery.Resetter])."""

    @property
    def name(self) -> str: ...

    @property
    def schedule(self) -> When:
        """When the strategy acts (a [`Schedule`][neurosurgery.Schedule], or anything with its
        `due`)."""
        ...

    @property
    def observes(self) -> bool:
        """Whether `step` reads the observation (a trainer skips observing when none does)."""
        ...

    def init(self, anatomy: Anatomy) -> Any:
        """The strategy's starting state; `init(anatomy, params)` where it needs the network's
        parameters (a trainer passes them through [`init_state`][neurosurgery.init_state])."""
        ...

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        """One update's step: score `observation` if the strategy observes, and act on
        `operand.model` (and its optimizer state) when `schedule.due(operand.step,
        operand.since)`; `state` is what `init` returned or the previous step's."""
        ...


def check_step(strategy: Any, where: str) -> None:
    """Raise TypeError if `strategy.step` cannot be called as `step(anatomy, operand,
    observation, state)`, e.g. a strategy written for the earlier signature, which took the
    network, key and update count as arguments and `init=` by keyword."""
    try:
        params = list(inspect.signature(strategy.step).parameters.values())
    except (TypeError, ValueError):  # not introspectable: its first call will tell
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(positional) < 4 or len(required) > 4 or keywords:
        name = getattr(strategy, "name", type(strategy).__name__)
        raise TypeError(
            f"{where}: the step of strategy {name!r} takes ({', '.join(p.name for p in params)}),"
            " but a strategy's step takes (anatomy, operand, observation, state): the network, "
            "key, update count, fresh-weight constructor and optimizer come in one ns.Operand. "
            "A step written for the earlier signature (anatomy, model, observation, state, key, "
            "step, *, init, optimizer, opt_state, since) reads them as operand.model, "
            "operand.key, operand.step, operand.init, operand.optimizer, operand.opt_state and "
            "operand.since"
        )


def updates_since(last: Array, step: Array, since: Count | None) -> Array:
    """Updates a stateful strategy's running averages advance by at `step` (int32): since its
    previous call (`last`, -1 before the first), or on the first call since `since` (1 when not
    given)."""
    first = jnp.asarray(1 if since is None else step - since, jnp.int32)
    return jnp.where(last < 0, first, step - last)


def _when(
    due: Array, act: Callable[[PyTree, Any], tuple[PyTree, Any]], model: PyTree, opt_state: Any
) -> tuple[PyTree, Any]:
    """`act(model, opt_state)` if `due`, else both unchanged; only arrays cross the branch."""
    params, static = eqx.partition(model, eqx.is_array)

    def run(params: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
        new, opt_state = act(eqx.combine(params, static), opt_state)
        return eqx.filter(new, eqx.is_array), opt_state

    params, opt_state = jax.lax.cond(due, run, lambda p, o: (p, o), params, opt_state)
    return eqx.combine(params, static), opt_state


@dataclasses.dataclass(frozen=True)
class Resetter:
    """Unit resets guided by a metric: score, select, and reset the flagged units when due.

    Attributes:
        metric: any [`Metric`][neurosurgery.Metric].
        select: a callable from scores to masks (a [`Selection`][neurosurgery.Selection], or e.g.
            `lambda s: ns.bottom_fraction(s, 0.05)`).
        schedule: when to reset.
        outgoing, outgoing_scale, include_shared, reset_count: as in
            [`reset`][neurosurgery.reset].
        label: the strategy's name in logs (default: `reset_<metric name>`).

    `info` holds `flagged/<group>` (fraction of the group's units flagged, due or not),
    `reset/<group>` (fraction reset now), and `flagged`/`reset` over the whole network (hidden
    units, and resettable units, weighted by their number).
    """

    metric: Metric
    select: Callable[[Scores], Mapping[str, Array]] = dataclasses.field(default_factory=Selection)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    outgoing: str = "zero"
    outgoing_scale: float = 0.02
    include_shared: bool = False
    reset_count: bool = False
    label: str | None = None
    observes: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.metric, Metric):
            raise TypeError(
                f"Resetter needs a metric (with name, init and score), got {self.metric!r}"
            )
        if self.outgoing not in ("zero", "small"):
            raise ValueError(f"outgoing={self.outgoing!r} is unknown; use 'zero' or 'small'.")

    @property
    def name(self) -> str:
        return self.label or f"reset_{self.metric.name}"

    def init(self, anatomy: Anatomy, params: PyTree | None = None) -> Any:
        return init_state(self.metric, anatomy, params)

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        """Score, select, and reset when `schedule.due(step, since)`."""
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        if observation is None:
            raise ValueError(f"{self.name} scores units: pass the observation of this update")
        scores, state = self.metric.score(anatomy, observation, state)
        flagged = dict(self.select(scores))
        applied = applied_masks(anatomy, flagged, self.include_shared)
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            result = reset(
                anatomy,
                model,
                applied,
                key,
                init=init,
                outgoing=self.outgoing,
                outgoing_scale=self.outgoing_scale,
                include_shared=True,
                optimizer=optimizer,
                opt_state=opt_state,
                reset_count=self.reset_count,
            )
            return result.model, result.opt_state

        model, opt_state = _when(due, act, model, opt_state)
        now = {k: m & due for k, m in applied.items()}
        state = after_reset(self.metric, state, now)  # replaced units start afresh
        return StepResult(model, opt_state, state, unit_info(anatomy, flagged, now), now)


def unit_info(
    anatomy: Anatomy, flagged: Mapping[str, Array], now: Mapping[str, Array]
) -> dict[str, Array]:
    """A unit-level strategy's figures: `flagged/<group>` and `reset/<group>` (fractions of the
    group's units), and `flagged` and `reset` over the network (weighted by units)."""
    hidden = {k: m for k, m in flagged.items() if not anatomy[k].output}
    info = {f"flagged/{k}": jnp.mean(inactive_ratio(m)) for k, m in hidden.items()}
    info.update({f"reset/{k}": jnp.mean(inactive_ratio(m)) for k, m in now.items()})
    if hidden:
        info["flagged"] = jnp.mean(network_inactive_ratio(hidden))
    info["reset"] = jnp.mean(network_inactive_ratio(now)) if now else jnp.zeros((), jnp.float32)
    return info


def _fresh_params(anatomy: Anatomy, model: PyTree, init: Init, key: PRNGKeyArray) -> PyTree:
    """A fresh copy of `model`'s arrays: from the constructor, or drawn by a named initializer."""
    if isinstance(init, Initializer):
        return anatomy._tree(_named_source(anatomy, init, key, anatomy._leaves(model)))
    return eqx.filter(fresh_model(anatomy, init, key), eqx.is_array)


def _unit_reset(metric: Metric, name: str) -> Callable[..., Strategy]:
    def make(
        tau: float = 0.0,
        every: int = 1000,
        start: int = 0,
        end: int | None = None,
        max_fraction: float | None = None,
        outgoing: str = "zero",
        outgoing_scale: float = 0.02,
        include_shared: bool = False,
        reset_count: bool = False,
    ) -> Strategy:
        select = (
            Selection("threshold", tau)
            if max_fraction is None
            else Selection("capped", tau, max_fraction=max_fraction)
        )
        return Resetter(
            metric,
            select,
            Schedule(every, start, end),
            outgoing,
            outgoing_scale,
            include_shared,
            reset_count,
            label=name,
        )

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"""{name}: every `every` updates, re-draw the units whose {metric.name} score
    is <= tau (at most `max_fraction` of a layer at once).

    Args:
        tau: score threshold: a unit whose score is <= tau is reset.
        every: gradient updates between resets.
        start: updates before which no reset happens.
        end: updates from which no reset happens (None: never).
        max_fraction: largest fraction of a layer's units reset at once (None: no limit).
        outgoing: outgoing weights of reset units: zero or small.
        outgoing_scale: scale of small outgoing weights.
        include_shared: also reset residual-stream units.
        reset_count: restart the per-entry Adam step counts of reset entries (needs a
            per-entry Adam).
    """
    return make


for _metric, _name in (
    (Dormant(), "redo"),
    (GraMa("preactivation"), "regrama"),
    (GraMa("activation"), "regrama_activation"),
    (GraMa("weight"), "regrama_weight"),
):
    register_method(_name)(_unit_reset(_metric, _name))
