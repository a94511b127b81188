"""Continual backprop (Dohare et al., "Loss of plasticity in deep continual learning", Nature 2024):
replace a few of the lowest-utility mature units at every update."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._anatomy._anatomy import Anatomy
from .._anatomy._groups import NeuronGroup
from .._metrics import RunningAverage, per_unit_mean
from .._metrics._base import _check_decay
from .._metrics._observe import Observation
from .._metrics._utility import contribution
from .._registry import register_method
from .._surgery._reset import reset
from ._schedule import Schedule
from ._select import inactive_ratio
from ._strategy import Operand, StepResult, _when, unit_info, updates_since
from ._units import absorb_mean, check_consumer_biases


class CBPState(NamedTuple):
    """The state of [`CBP`][neurosurgery.CBP], per group.

    Attributes:
        utility: running average of each unit's contribution utility, and its age in updates.
        activation: running average of each unit's mean activation (for the bias correction).
        pending: replacements owed but not yet made, per ensemble member (a fraction below 1
            between replacements): ρ · (mature units) is added per update.
        last: the update count of the previous call (-1 before the first).
    """

    utility: RunningAverage
    activation: RunningAverage
    pending: dict[str, Array]
    last: Array


def _lowest(values: Array, eligible: Array, count: Array) -> Array:
    """The `count` (per member) eligible units of lowest value, ties to the lower index."""
    key = jnp.where(eligible, values, jnp.inf)
    rank = jnp.argsort(jnp.argsort(key, axis=-1, stable=True), axis=-1, stable=True)
    return eligible & (rank < count[..., None])


@dataclasses.dataclass(frozen=True)
class CBP:
    """Continual backprop (Dohare et al. 2024): generate-and-test on the hidden units.

    At every call (one per update, or further apart: the averages, ages and replacements owed
    advance by the updates since the previous call, whose count the state keeps; the first call
    counts the updates `(since, step]`, one without `since`):

    1. each unit's contribution utility u_i ← η u_i + (1 − η) E_x|h_i(x)| · Σ_k |w_ki| (its
       activation times the total magnitude of its outgoing weights) and its age advance, and
       the utility is read bias-corrected, u_i / (1 − η^age) (see
       [`Utility`][neurosurgery.Utility]);
    2. units older than `maturity` updates are eligible; ρ (`replacement_rate`) times their
       number is added to the layer's pending replacements, and when the schedule is due the
       whole part n = ⌊pending⌋ of it is replaced (n ≤ the eligible units), the rest carried;
    3. the n eligible units of lowest utility get fresh incoming weights (from `init`, as
       [`reset`][neurosurgery.reset] draws them), zero outgoing weights, age 0 and utility 0,
       and their optimizer-state entries are zeroed.

    With `bias_correction` (the paper's), each consumer's bias absorbs the replaced unit's mean
    contribution first, b_k ← b_k + w_ki · ā_i (ā_i: the running average of the unit's
    activation, bias-corrected), so that the consumers see the unit's average, not zero; the
    network's function is then kept exactly for units whose activation is constant, and the
    change on a sample is w_ki (ā_i − h_i(x)). Without it, the zeroed outgoing weights remove
    the unit's contribution, so the function is kept exactly for units whose activation was
    zero. Either way only in [`preserving`][neurosurgery.NeuronGroup.preserving] groups: behind
    a norm over the units, or in a group `entangled_with` another, a replacement moves the
    outputs. Every hidden group reset by default is operated ([`resettable`]
    [neurosurgery.NeuronGroup.resettable]; residual-stream channels and groups with a
    `no_reset` reason, such as attention query/key pairs, with `include_shared`); output units
    never.

    Defaults: η = 0.99, maturity 100 updates (the paper's), ρ = 1e-4 (per update).
    `info` holds `reset/<group>` (fraction of the group's units replaced now), `mature/<group>`
    (fraction eligible) and `reset`, as [`Resetter`][neurosurgery.Resetter]'s do.
    """

    replacement_rate: float = 1e-4
    maturity: int = 100
    decay: float = 0.99
    bias_correction: bool = True
    schedule: Schedule = dataclasses.field(default_factory=lambda: Schedule(every=1))
    include_shared: bool = False
    reset_count: bool = False
    name: str = "cbp"
    observes: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        rho = self.replacement_rate
        if not (isinstance(rho, int | float) and 0.0 < rho < 1.0):  # also rejects NaN
            raise ValueError(
                f"CBP: replacement_rate={rho!r} is invalid: it is the fraction of the mature "
                "units replaced per update, in (0, 1) (the paper uses 1e-4)"
            )
        m = self.maturity
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(
                f"CBP: maturity={m!r} is invalid: it is the age in updates (an integer >= 0) a "
                "unit must exceed before it can be replaced (the paper uses 100)"
            )
        _check_decay("CBP", self.decay)

    def groups(self, anatomy: Anatomy) -> tuple[NeuronGroup, ...]:
        """The groups CBP operates: observed groups reset by default (the others but outputs
        with `include_shared`)."""
        return tuple(
            g for g in anatomy.observed if not g.output and (g.resettable or self.include_shared)
        )

    def init(self, anatomy: Anatomy) -> CBPState:
        groups = self.groups(anatomy)
        if self.bias_correction:
            for g in groups:
                check_consumer_biases(anatomy, g)
        return CBPState(
            RunningAverage.zeros(anatomy, groups),
            RunningAverage.zeros(anatomy, groups),
            {g.name: jnp.zeros(g.members, jnp.float32) for g in groups},
            jnp.asarray(-1, jnp.int32),
        )

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: CBPState,
    ) -> StepResult:
        """Advance utilities and ages, and replace units when `schedule.due(step, since)`."""
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        if observation is None:
            raise ValueError("cbp scores units: pass the observation of this update")
        names = [g.name for g in self.groups(anatomy)]
        step = jnp.asarray(step, jnp.int32)
        elapsed = updates_since(state.last, step, since)
        values = contribution(anatomy, observation)
        means = per_unit_mean(observation.activations)
        utility = state.utility.advance({k: values[k] for k in names}, self.decay, elapsed)
        activation = state.activation.advance({k: means[k] for k in names}, self.decay, elapsed)
        utilities = utility.corrected(self.decay)
        due = self.schedule.due(step, since)
        chosen, pending, mature = {}, {}, {}
        for name in names:
            eligible = utility.ages[name] > self.maturity
            owed = state.pending[name] + self.replacement_rate * jnp.sum(
                eligible, axis=-1, dtype=jnp.float32
            ) * elapsed.astype(jnp.float32)
            count = jnp.where(due, jnp.floor(owed), 0.0)
            chosen[name] = _lowest(utilities[name], eligible, count.astype(jnp.int32))
            pending[name] = owed - jnp.sum(chosen[name], axis=-1, dtype=jnp.float32)
            mature[name] = eligible
        any_chosen = jnp.any(jnp.stack([jnp.any(m) for m in chosen.values()])) if names else False

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            if self.bias_correction:
                leaves = anatomy._leaves(model)
                corrected = activation.corrected(self.decay)
                for name in names:
                    mean = jnp.where(chosen[name], corrected[name], 0.0)
                    leaves = absorb_mean(anatomy, anatomy[name], mean, leaves)
                static = eqx.partition(model, eqx.is_array)[1]
                model = eqx.combine(anatomy._tree(leaves), static)
            result = reset(
                anatomy,
                model,
                chosen,
                key,
                init=init,
                include_shared=True,
                optimizer=optimizer,
                opt_state=opt_state,
                reset_count=self.reset_count,
            )
            return result.model, result.opt_state

        model, opt_state = _when(due & any_chosen, act, model, opt_state)
        new_state = CBPState(utility.restart(chosen), activation.restart(chosen), pending, step)
        info = unit_info(anatomy, {}, chosen)
        info.update({f"mature/{k}": jnp.mean(inactive_ratio(m)) for k, m in mature.items()})
        return StepResult(model, opt_state, new_state, info, chosen)


@register_method("cbp")
def _cbp(
    replacement_rate: float = 1e-4,
    maturity: int = 100,
    decay: float = 0.99,
    bias_correction: bool = True,
    every: int = 1,
    start: int = 0,
    end: int | None = None,
    include_shared: bool = False,
    reset_count: bool = False,
) -> CBP:
    """cbp: continual backprop, replacing `replacement_rate` of the units older than `maturity`
    updates per update, lowest utility first (replacements made every `every` updates).

    Args:
        replacement_rate: fraction of the mature units replaced per update, in (0, 1).
        maturity: updates a unit must have lived before it can be replaced.
        decay: decay of the running utility, in [0, 1).
        bias_correction: consumers' biases absorb a replaced unit's mean contribution.
        every: gradient updates between replacements.
        start: updates before which no replacement happens.
        end: updates from which no replacement happens (None: never).
        include_shared: also replace residual-stream units.
        reset_count: restart the per-entry Adam step counts of replaced entries (needs a
            per-entry Adam).
    """
    return CBP(
        replacement_rate,
        maturity,
        decay,
        bias_correction,
        Schedule(every, start, end),
        include_shared,
        reset_count,
    )
