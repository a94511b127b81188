"""Calibrated partial resets (CPR, after the public JAX code of LucMc's "continual-learning"
repository, `continual_learning/optim/cpr.py`): every unit moved part of the way towards fresh
weights, by a fraction that a smooth gate of its running gradient score sets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._anatomy._anatomy import Anatomy
from .._anatomy._groups import NeuronGroup
from .._metrics import GraMa, Metric, init_state
from .._metrics._base import _check_decay
from .._metrics._observe import Observation
from .._registry import register_method
from .._surgery._optstate import scale_optimizer_state
from ._schedule import Schedule
from ._strategy import Operand, StepResult, _fresh_params, _when, updates_since
from ._units import spread


class CPRState(NamedTuple):
    """The state of [`CPR`][neurosurgery.CPR].

    Attributes:
        average: per group, the running average s̄ of each unit's score (1 at the start and
            after every partial reset: the layer mean of a normalised score).
        last: the update count of the previous call (-1 before the first).
    """

    average: dict[str, Array]
    last: Array


GATES = ("exp", "sigmoid")


def cpr_fraction(
    average: Float[Array, "..."],
    replacement_rate: float,
    sharpness: float,
    threshold: float,
    gate: str = "exp",
) -> Float[Array, "..."]:
    """The fraction f of the way a unit moves towards fresh weights: ρ for a running score at
    or below the threshold c, falling smoothly to 0 above it (the sharper, the faster):
    f = ρ · min(1, exp(−k (s̄ − c))) (`gate="exp"`) or ρ · min(1, 2 σ(−k (s̄ − c)))
    (`"sigmoid"`)."""
    _check_gate(gate)
    if gate == "exp":
        return replacement_rate * jnp.minimum(1.0, jnp.exp(-sharpness * (average - threshold)))
    return replacement_rate * jnp.minimum(
        1.0, 2.0 * jax.nn.sigmoid(-sharpness * (average - threshold))
    )


def _check_gate(gate: str) -> None:
    if gate not in GATES:
        raise ValueError(
            f"CPR: gate={gate!r} is unknown; use 'exp' (min(1, exp(-k (s - c))), the source's "
            "default) or 'sigmoid' (min(1, 2 sigmoid(-k (s - c))))"
        )


def _check_positive(option: str, value: float, meaning: str, upper: float | None = None) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
        and (upper is None or value <= upper)
    )
    if not ok:
        valid = "(0, 1]" if upper == 1.0 else "a finite number > 0"
        raise ValueError(f"CPR: {option}={value!r} is invalid: {meaning}, in {valid}")


@dataclasses.dataclass(frozen=True)
class CPR:
    """Calibrated partial resets: each hidden unit moved towards fresh weights by a fraction its
    running score sets (after LucMc's public JAX code, "continual-learning", `optim/cpr.py`).

    At every call the running average of each unit's `metric` score advances by the updates
    since the previous call, s̄_i ← η^Δ s̄_i + (1 − η^Δ) G_i (starting at 1, the layer mean of
    a normalised score; Δ counts the updates `(since, step]` at the first call, one without
    `since`). When the schedule is due, every unit i of every hidden, non-residual group moves
    by the fraction

        f_i = ρ · min(1, exp(−k (s̄_i − c)))   (`gate="exp"`, the source's default)
        f_i = ρ · min(1, 2 σ(−k (s̄_i − c)))   (`gate="sigmoid"`, also offered there)

    (ρ `replacement_rate`, k `sharpness`, c `threshold`: ρ for a score at or below c, smoothly
    less above it): its incoming weights become (1 − f_i) w + f_i w_fresh (fresh weights from
    `init`, drawn once per reset), its outgoing weights (1 − f_i) w (decayed towards zero by
    the same fraction), and the running averages start again at 1. Biases and per-unit
    parameters (norm scales) are kept, as in the source. Groups are operated in execution
    order, so a layer's incoming weights that are also the previous layer's outgoing weights
    are decayed first, then moved.

    Optimizer state: `optimizer_state="keep"` (default, as in the source) leaves it as it is;
    `"scale"` multiplies every parameter-shaped entry (Adam's moments, momentum) of a moved or
    decayed weight by the same factor (1 − f_i) as the weight's old value, so that f = 1
    would be a full reset of the entry; per-entry step counts are kept.

    Defaults: GraMa at the weight gradient (the source's score: mean |∂L/∂W_ij| over a unit's
    incoming weights, normalised by the layer mean), the exponential gate, η = 0.99, k = 16,
    c = 0.95, ρ = 0.012, a reset every 1,000 updates: the defaults of the source's `cpr`
    (commits 16c1df0 and 0780a95). `info` holds `moved/<group>` (the mean fraction f of the group's
    units moved now, 0 when not due), `score/<group>` (the mean running score) and `moved`.
    """

    replacement_rate: float = 0.012
    sharpness: float = 16.0
    threshold: float = 0.95
    decay: float = 0.99
    metric: Metric = dataclasses.field(default_factory=lambda: GraMa("weight"))
    schedule: Schedule = dataclasses.field(default_factory=lambda: Schedule(every=1000))
    include_shared: bool = False
    optimizer_state: str = "keep"
    gate: str = "exp"
    name: str = "cpr"
    observes: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        _check_positive(
            "replacement_rate",
            self.replacement_rate,
            "the largest fraction of the way to fresh weights a unit moves per reset",
            upper=1.0,
        )
        _check_positive("sharpness", self.sharpness, "how fast the gate falls above the threshold")
        _check_positive(
            "threshold", self.threshold, "the running score at or below which units move fully"
        )
        _check_decay("CPR", self.decay)
        _check_gate(self.gate)
        if self.optimizer_state not in ("keep", "scale"):
            raise ValueError(
                f"CPR: optimizer_state={self.optimizer_state!r} is unknown; use 'keep' (as it "
                "is) or 'scale' (moved entries scaled by 1 - f)"
            )
        if not isinstance(self.metric, Metric):
            raise TypeError(f"CPR needs a metric (with name, init and score), got {self.metric!r}")

    def groups(self, anatomy: Anatomy) -> tuple[NeuronGroup, ...]:
        """The groups CPR operates: observed hidden groups (residual-stream ones on request)."""
        return tuple(
            g
            for g in anatomy.observed
            if not g.output and not g.no_reset and (not g.shared or self.include_shared)
        )

    def init(self, anatomy: Anatomy) -> CPRState:
        return CPRState(
            {g.name: jnp.ones(g.unit_shape, jnp.float32) for g in self.groups(anatomy)},
            jnp.asarray(-1, jnp.int32),
        )

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: CPRState,
    ) -> StepResult:
        """Advance the running scores, and move every unit when `schedule.due(step, since)`."""
        model = operand.model
        key = operand.key
        step = operand.step
        init = operand.init
        optimizer = operand.optimizer
        opt_state = operand.opt_state
        since = operand.since
        if observation is None:
            raise ValueError("cpr scores units: pass the observation of this update")
        if (optimizer is None) != (opt_state is None):
            raise ValueError("Pass optimizer and opt_state together (or neither).")
        groups = [g for g in self.groups(anatomy) if g.name in state.average]
        step = jnp.asarray(step, jnp.int32)
        elapsed = updates_since(state.last, step, since).astype(jnp.float32)
        keep = jnp.asarray(self.decay, jnp.float32) ** elapsed
        fresh = init_state(self.metric, anatomy, observation.params)
        scores, _ = self.metric.score(anatomy, observation, fresh)
        average = {
            g.name: keep * state.average[g.name]
            + (1 - keep) * jnp.asarray(scores[g.name], jnp.float32)
            for g in groups
        }
        fraction = {
            k: cpr_fraction(v, self.replacement_rate, self.sharpness, self.threshold, self.gate)
            for k, v in average.items()
        }
        due = self.schedule.due(step, since)

        def act(model: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
            params, static = eqx.partition(model, eqx.is_array)
            leaves = anatomy._leaves(model)
            fresh = anatomy._leaves(_fresh_params(anatomy, model, init, key))
            old: list[Any] = [jnp.ones_like(x) if eqx.is_inexact_array(x) else None for x in leaves]
            for g in groups:
                f = fraction[g.name]
                for s in g.outgoing:
                    if s.kind == "weight":
                        factor = spread(s, g, (1 - f).astype(leaves[s.leaf].dtype), fill=1)
                        leaves[s.leaf] = leaves[s.leaf] * factor
                        old[s.leaf] = old[s.leaf] * factor
                for s in g.incoming:
                    if s.kind == "weight":
                        share = spread(s, g, f.astype(leaves[s.leaf].dtype))
                        leaves[s.leaf] = (1 - share) * leaves[s.leaf] + share * fresh[s.leaf]
                        old[s.leaf] = old[s.leaf] * (1 - share)
            new = eqx.combine(anatomy._tree(leaves), static)
            if optimizer is not None and self.optimizer_state == "scale":
                opt_state = scale_optimizer_state(optimizer, opt_state, params, anatomy._tree(old))
            return new, opt_state

        model, opt_state = _when(due, act, model, opt_state)
        info = {f"moved/{k}": jnp.where(due, jnp.mean(f), 0.0) for k, f in fraction.items()}
        info.update({f"score/{k}": jnp.mean(v) for k, v in average.items()})
        if fraction:
            units = sum(f.size for f in fraction.values())
            total = sum(jnp.sum(f) for f in fraction.values())
            info["moved"] = jnp.where(due, total / units, 0.0)
        else:
            info["moved"] = jnp.zeros((), jnp.float32)
        average = {k: jnp.where(due, jnp.ones_like(v), v) for k, v in average.items()}
        return StepResult(model, opt_state, CPRState(average, step), info)


@register_method("cpr")
def _cpr(
    replacement_rate: float = 0.012,
    sharpness: float = 16.0,
    threshold: float = 0.95,
    decay: float = 0.99,
    gate: str = "exp",
    every: int = 1000,
    start: int = 0,
    end: int | None = None,
    include_shared: bool = False,
    optimizer_state: str = "keep",
) -> CPR:
    """cpr: calibrated partial resets, every `every` updates each hidden unit moved towards
    fresh weights by ρ · min(1, exp(−sharpness · (s̄ − threshold))) (`gate="sigmoid"`:
    ρ · min(1, 2σ(−sharpness · (s̄ − threshold)))), s̄ its running GraMa (weight-gradient)
    score, and its outgoing weights decayed by the same fraction.

    Args:
        replacement_rate: the largest fraction of the way to fresh weights a unit moves per
            reset, in (0, 1].
        sharpness: how fast the gate falls above the threshold, > 0.
        threshold: running score at or below which a unit moves the full rate, > 0.
        decay: decay of the running score, in [0, 1).
        gate: the gate of the running score, exp (min(1, exp(-k (s - c)))) or sigmoid
            (min(1, 2 sigmoid(-k (s - c)))).
        every: gradient updates between partial resets.
        start: updates before which nothing happens.
        end: updates from which nothing happens (None: never).
        include_shared: also move residual-stream units.
        optimizer_state: keep the optimizer state, or scale moved entries by 1 - f (scale).
    """
    return CPR(
        replacement_rate,
        sharpness,
        threshold,
        decay,
        schedule=Schedule(every, start, end),
        include_shared=include_shared,
        optimizer_state=optimizer_state,
        gate=gate,
    )
