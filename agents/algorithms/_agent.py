"""What every algorithm gives the trainer: the `Agent` protocol, its replay `Batch`, and the
`Objective` each network's loss is written as, once, for the update and for neuron surgery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


class Batch(NamedTuple):
    """Replay transitions; `next_obs` is the observation reached (final_obs), never a reset one."""

    obs: Float[Array, "b o"]
    action: Float[Array, "b a"]
    reward: Float[Array, " b"]
    next_obs: Float[Array, "b o"]
    terminated: Float[Array, " b"]


class Objective(NamedTuple):
    """One network's loss on a batch, written once.

    The batch loss is the mean over samples of `loss(call(model, *inputs_i), *targets_i)`:
    `call` runs the network on one sample, `loss` scores its output against that sample's
    targets (computed beforehand, without gradient). The update differentiates
    [`batch_loss`][agents.Objective.batch_loss]; a surgery step maps the network with `call` and
    observes [`loss_of_outputs`][agents.Objective.loss_of_outputs], the same function of the
    network's batched outputs (`ns.observe(anatomy, model, objective.loss_of_outputs, *inputs)`).
    With `has_aux`, `loss` returns `(value, aux)` and the aux is averaged too.
    """

    model: Any
    call: Callable[..., Any]
    inputs: tuple[Any, ...]
    loss: Callable[..., Any]
    targets: tuple[Any, ...] = ()
    has_aux: bool = False

    def _mean(self, out: Any) -> Any:
        if self.has_aux:
            value, aux = out
            return jnp.mean(value), jax.tree.map(jnp.mean, aux)
        return jnp.mean(out)

    def batch_loss(self, model: Any) -> Any:
        """The mean loss of `model` on the batch (with `has_aux`: `(loss, aux)`)."""
        n = len(self.inputs)
        one = lambda *args: self.loss(self.call(model, *args[:n]), *args[n:])
        return self._mean(jax.vmap(one)(*self.inputs, *self.targets))

    def loss_of_outputs(self, outputs: Any) -> Any:
        """The mean loss given the network's batched outputs."""
        return self._mean(jax.vmap(self.loss)(outputs, *self.targets))


@runtime_checkable
class Agent(Protocol):
    """What the trainer needs from an algorithm (SAC, BRO and DACER implement it).

    An agent is a frozen config plus pure functions over an explicit state pytree. Networks are
    named (`"critic"`, `"actor"`, ...): `objectives` gives each one's loss for a surgery step,
    `make_network` a freshly initialised copy (the source of re-drawn weights), `optimizer` and
    `opt_state` its optimizer, and `replace_network` puts a changed network back.
    """

    @property
    def config(self) -> Any:
        """The agent's hyperparameters (a frozen dataclass with `batch_size`)."""
        ...

    @property
    def name(self) -> str: ...

    @property
    def loss_networks(self) -> tuple[tuple[str, str], ...]:
        """(metric, network) pairs: which network a non-finite loss metric points to."""
        ...

    @property
    def update_cycle(self) -> int:
        """Updates come in cycles of this length; `update` gets the position (static)."""
        ...

    @property
    def surgery_networks(self) -> tuple[str, ...]:
        """The networks `objectives` offers to surgery."""
        ...

    def init(self, key: PRNGKeyArray) -> Any: ...

    def act(
        self, state: Any, obs: Float[Array, "n o"], key: PRNGKeyArray, deterministic: bool
    ) -> Float[Array, "n a"]: ...

    def update(
        self, state: Any, batch: Batch, key: PRNGKeyArray, phase: int
    ) -> tuple[Any, dict[str, Array]]: ...

    def scheduled(
        self, state: Any, batch: Batch, key: PRNGKeyArray, updates: Array
    ) -> tuple[Any, dict[str, Array]]:
        """Events on the agent's own schedule (BRO's full resets, DACER's entropy estimate),
        after each update cycle; `updates` (done so far) is unbatched under vmap."""
        ...

    def objectives(self, state: Any, batch: Batch, key: PRNGKeyArray) -> dict[str, Objective]: ...

    def networks(self, state: Any) -> dict[str, PyTree]:
        """Every learned parameter set by name, for finiteness checks."""
        ...

    def make_network(self, name: str, key: PRNGKeyArray) -> Any: ...

    def optimizer(self, name: str) -> optax.GradientTransformation: ...

    def opt_state(self, state: Any, name: str) -> Any: ...

    def replace_network(self, state: Any, name: str, model: Any, opt_state: Any) -> Any: ...
