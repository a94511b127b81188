"""Several strategies on one network, composed: `ns.Chain((regrama, shrink_perturb))`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jaxtyping import Array, PyTree

from .._anatomy._anatomy import Anatomy
from .._metrics import init_state
from .._metrics._observe import Observation
from ._injection import PlasticityInjection
from ._schedule import AnyDue
from ._strategy import Operand, StepResult, Strategy, check_step


@dataclasses.dataclass(frozen=True)
class Chain:
    """Strategies applied one after the other to the same network at every step.

    Each member keeps its own state and schedule and acts when its own schedule is due; the
    model and optimizer state one member returns are what the next one acts on. Every member
    reads the observation of the model before the step (the trainer observes once), so a
    member that scores units right after another changed them at the same update sees the
    scores from before that change. Give the members schedules that do not coincide where this
    matters (e.g. `every=1000` and `start=500`).

    `info` holds each member's figures under its name (`regrama/reset`, `shrink_perturb/reset`).
    The schedule is due when any member's is. Plasticity injection cannot be a member: it
    needs the network built injectable for it alone.

    Attributes:
        strategies: the members, in the order they act (at least two, distinct names).
        label: the chain's name (default: the members' names joined by `+`).
    """

    strategies: tuple[Strategy, ...]
    label: str | None = None

    def __post_init__(self) -> None:
        strategies = tuple(self.strategies)
        object.__setattr__(self, "strategies", strategies)
        if len(strategies) < 2:
            raise ValueError(
                f"Chain needs at least two strategies, got {len(strategies)}; use the strategy "
                "itself when there is one"
            )
        for i, s in enumerate(strategies):
            if not isinstance(s, Strategy) or isinstance(s, type):
                raise TypeError(
                    f"Chain: member {i} ({s!r}) is not a strategy (name, schedule, observes, "
                    "init, step); build it first, e.g. ns.strategy('regrama')"
                )
            check_step(s, f"Chain: member {i}")
            if isinstance(s, PlasticityInjection):
                raise ValueError(
                    f"Chain: member {i} is plasticity injection, which cannot be composed: the "
                    "network must be built injectable for it (ns.injectable); run it on its own"
                )
        names = [s.name for s in strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"Chain: the member name(s) {', '.join(repeated)} appear more than once, so "
                "their figures would collide; give one of them another label"
            )

    @property
    def name(self) -> str:
        return self.label or "+".join(s.name for s in self.strategies)

    @property
    def schedule(self) -> AnyDue:
        return AnyDue(tuple(s.schedule for s in self.strategies))

    @property
    def observes(self) -> bool:
        return any(s.observes for s in self.strategies)

    def init(self, anatomy: Anatomy, params: PyTree | None = None) -> tuple[Any, ...]:
        return tuple(init_state(s, anatomy, params) for s in self.strategies)

    def step(
        self,
        anatomy: Anatomy,
        operand: Operand,
        observation: Observation | None,
        state: Any,
    ) -> StepResult:
        """Each member's `step` in turn (member `i` gets `fold_in(key, i)`)."""
        model = operand.model
        key = operand.key
        opt_state = operand.opt_state
        if not isinstance(state, tuple) or len(state) != len(self.strategies):
            raise ValueError(
                f"Chain {self.name}: state must be the tuple of the members' states that "
                f"init(anatomy) returns ({len(self.strategies)} entries)"
            )
        states, info = [], {}
        replaced: dict[str, Array] | None = None
        for i, (member, member_state) in enumerate(zip(self.strategies, state, strict=True)):
            member_operand = operand._replace(
                model=model, opt_state=opt_state, key=jax.random.fold_in(key, i)
            )
            result = member.step(anatomy, member_operand, observation, member_state)
            model, opt_state = result.model, result.opt_state
            states.append(result.state)
            info.update({f"{member.name}/{k}": v for k, v in result.info.items()})
            if result.replaced is not None:
                replaced = dict(replaced or {})
                for k, m in result.replaced.items():
                    replaced[k] = m if k not in replaced else replaced[k] | m
        return StepResult(model, opt_state, tuple(states), info, replaced)
