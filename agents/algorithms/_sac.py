"""Soft actor-critic: twin critics, tanh-Gaussian actor, automatic entropy tuning.

The agent is a frozen config plus pure functions over an explicit state pytree. Each network's
loss is an `Objective`, written once: the update steps on it and a surgery step observes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ..networks import MLP, NetworkConfig, draw_members, inject_heads
from ._agent import Batch, Objective
from ._checks import check_fields
from ._steps import (
    ActorCritic,
    actor_and_alpha_step,
    adam_optimizers,
    critic_step,
    params,
    soft_update,
    squashed_gaussian,
)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters; defaults are the paper's SAC table (CleanRL-style SAC)."""

    batch_size: int = 256
    """Transitions per gradient update."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the twin critics."""
    alpha_lr: float = 1e-3
    """Adam learning rate of log α (the entropy temperature)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target update rate: target ← τ·critic + (1−τ)·target, every update."""
    policy_delay: int = 2
    """Actor and α are updated on every `policy_delay`-th update, `policy_delay` times in a row."""
    init_alpha: float = 1.0
    """Initial entropy temperature α."""
    target_entropy_scale: float = 1.0
    """Target entropy = −scale·|A|."""
    l2_init: float = 0.0
    """L2-init (Kumar et al. 2023): pull of the actor's and critics' parameters towards their
    initial values with this strength, `ns.l2_init` first in their optimizers (0: off)."""
    actor: NetworkConfig = field(default_factory=NetworkConfig)
    """Actor network."""
    critic: NetworkConfig = field(default_factory=NetworkConfig)
    """Critic network (each of the two)."""

    def validate(self) -> None:
        check_fields(
            self,
            "sac",
            unit=("tau", "gamma"),
            at_least_one=("batch_size", "policy_delay"),
            positive=("actor_lr", "critic_lr", "alpha_lr", "init_alpha"),
            non_negative=("l2_init",),
        )
        self.actor.validate("sac.actor")
        self.critic.validate("sac.critic")


class Critic(eqx.Module):
    """Q(s, a) of one critic."""

    net: MLP

    def __init__(self, obs_size: int, action_size: int, config: NetworkConfig, key: PRNGKeyArray):
        self.net = MLP(obs_size + action_size, 1, config, key=key)

    def __call__(self, obs: Float[Array, " o"], action: Float[Array, " a"]) -> Float[Array, ""]:
        return self.net(jnp.concatenate([obs, action]))[0]


class TwinCritic(eqx.Module):
    """The twin critics: two `Critic`s, each its own network (not stacked on a member axis).

    Under `vmap` over a batch each member's layers lower to plain matrix products, the ones
    Brax's SAC runs: a `vmap` over stacked members gives batched products, and a CPU runs those
    and their gradients ~10 % slower; slicing stacked parameters apart inside the update costs
    a copy of every weight and gradient instead. A surgery step reads each member's layers as
    their own groups (`members[0].net.layers[0].linear`, …).
    """

    members: tuple[Critic, ...]

    def __init__(
        self, obs_size: int, action_size: int, config: NetworkConfig, key: PRNGKeyArray, n: int = 2
    ):
        self.members = draw_members(lambda k: Critic(obs_size, action_size, config, k), key, n)

    def __call__(self, obs: Float[Array, " o"], action: Float[Array, " a"]) -> Float[Array, " n"]:
        return jnp.stack([c(obs, action) for c in self.members])


class Actor(eqx.Module):
    """Tanh-Gaussian policy: mean and log σ (squashed into [LOG_STD_MIN, LOG_STD_MAX])."""

    net: MLP

    def __init__(self, obs_size: int, action_size: int, config: NetworkConfig, key: PRNGKeyArray):
        self.net = MLP(obs_size, 2 * action_size, config, key=key)

    def distribution(self, obs: Float[Array, " o"]) -> tuple[Array, Array]:
        mean, raw = jnp.split(self.net(obs), 2)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, obs: Float[Array, " o"], noise: Float[Array, " a"]) -> tuple[Array, Array]:
        """Reparameterised action tanh(μ + σ·noise) and its log-probability."""
        mean, log_std = self.distribution(obs)
        return squashed_gaussian(mean, log_std, noise)

    def mode(self, obs: Float[Array, " o"]) -> Float[Array, " a"]:
        return jnp.tanh(self.distribution(obs)[0])


class SACState(eqx.Module):
    """Everything SAC learns or counts; a pytree (vmappable over seeds, serialisable)."""

    actor: Actor
    critic: TwinCritic
    target_critic: TwinCritic
    log_alpha: Float[Array, ""]
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    updates: Array


def twin_q(critic: TwinCritic, obs: Array, action: Array) -> Float[Array, " 2"]:
    """Both critics' Q(s, a) for one sample."""
    return critic(obs, action)


@dataclass(frozen=True)
class SAC(ActorCritic):
    """SAC agent: `init`, `act`, `update` over `SACState`; `objectives` per network."""

    config: SACConfig
    obs_size: int
    action_size: int
    name: str = "sac"
    #: (metric, network) pairs: which network a non-finite loss metric points to
    loss_networks: tuple[tuple[str, str], ...] = (
        ("critic_loss", "critic"),
        ("actor_loss", "actor"),
        ("alpha_loss", "temperature"),
    )
    #: plasticity injection: the strategy whose injectable heads the networks below carry
    injection: Any = None
    #: the networks built with injectable heads (see `injection`)
    injected: tuple[str, ...] = ()

    @property
    def update_cycle(self) -> int:
        """Updates come in cycles of this length; `update` gets the position (static)."""
        return self.config.policy_delay

    @property
    def target_entropy(self) -> float:
        return -self.config.target_entropy_scale * self.action_size

    def _optimizers(self) -> tuple[optax.GradientTransformation, ...]:
        return adam_optimizers(self.config)

    def init(self, key: PRNGKeyArray) -> SACState:
        c = self.config
        k_actor, k_critic = jax.random.split(key)
        actor, critic = self.make_network("actor", k_actor), self.make_network("critic", k_critic)
        log_alpha = jnp.asarray(math.log(c.init_alpha), jnp.float32)
        opt_a, opt_c, opt_t = self._optimizers()
        return SACState(
            actor=actor,
            critic=critic,
            target_critic=critic,
            log_alpha=log_alpha,
            actor_opt=opt_a.init(params(actor)),
            critic_opt=opt_c.init(params(critic)),
            alpha_opt=opt_t.init(log_alpha),
            updates=jnp.zeros((), jnp.int32),
        )

    def make_network(self, name: str, key: PRNGKeyArray) -> Any:
        """A freshly initialised network: the source of re-drawn weights."""
        c, o, a = self.config, self.obs_size, self.action_size
        if name == "actor":
            network: Any = Actor(o, a, c.actor, key)
        elif name == "critic":
            network = TwinCritic(o, a, c.critic, key)
        else:
            raise ValueError(f"sac has no network {name!r}; its networks are critic, actor")
        if self.injection is not None and name in self.injected:
            network = inject_heads(self.injection, network)
        return network

    def act(
        self, state: SACState, obs: Float[Array, "n o"], key: PRNGKeyArray, deterministic: bool
    ) -> Float[Array, "n a"]:
        if deterministic:
            return jax.vmap(state.actor.mode)(obs)
        noise = jax.random.normal(key, (obs.shape[0], self.action_size), obs.dtype)
        return jax.vmap(state.actor.sample)(obs, noise)[0]

    # --- losses ------------------------------------------------------------------------------
    def critic_objective(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """Twin-critic TD loss per sample; the soft target is computed here (no gradient)."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        next_action, next_logp = jax.vmap(state.actor.sample)(batch.next_obs, noise)
        next_q = jax.vmap(twin_q, in_axes=(None, 0, 0))(
            state.target_critic, batch.next_obs, next_action
        )
        alpha = jnp.exp(state.log_alpha)
        soft_v = jnp.min(next_q, axis=-1) - alpha * next_logp
        target = batch.reward + self.config.gamma * (1.0 - batch.terminated) * soft_v
        target = jax.lax.stop_gradient(target)
        loss = lambda q, y: jnp.sum((q - y) ** 2)
        return Objective(state.critic, twin_q, (batch.obs, batch.action), loss, (target,))

    def actor_objective(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """α·log π(a|s) − min_k Q_k(s, a) per sample, a reparameterised from the noise; aux log π."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        alpha, critic = jnp.exp(state.log_alpha), state.critic

        def loss(out: tuple[Array, Array], eps: Array, obs: Array) -> tuple[Array, Array]:
            action, logp = squashed_gaussian(*out, eps)
            return alpha * logp - jnp.min(twin_q(critic, obs, action)), logp

        return Objective(
            state.actor, Actor.distribution, (batch.obs,), loss, (noise, batch.obs), has_aux=True
        )

    def objectives(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> dict[str, Objective]:
        k1, k2 = jax.random.split(key)
        return {
            "critic": self.critic_objective(state, batch, k1),
            "actor": self.actor_objective(state, batch, k2),
        }

    def networks(self, state: SACState) -> dict[str, Any]:
        """The parameters a finiteness check looks at, by network name."""
        return {"critic": state.critic, "actor": state.actor, "temperature": state.log_alpha}

    # --- update ------------------------------------------------------------------------------
    def update(
        self, state: SACState, batch: Batch, key: PRNGKeyArray, phase: int
    ) -> tuple[SACState, dict[str, Array]]:
        """One gradient update. `phase` (static) is the position in the policy-delay cycle."""
        c = self.config
        opt_a, opt_c, opt_t = self._optimizers()
        k_critic, k_actor = jax.random.split(key)

        state, metrics = critic_step(opt_c, self.critic_objective(state, batch, k_critic), state)

        if phase == 0:  # CleanRL-style: the delayed actor takes policy_delay steps in a row

            def actor_step(state: SACState, k: Array) -> tuple[SACState, dict[str, Array]]:
                return actor_and_alpha_step(self, state, batch, k, opt_a, opt_t)

            keys = jax.random.split(k_actor, c.policy_delay)
            state, actor_metrics = jax.lax.scan(actor_step, state, keys)
            metrics.update({k: v[-1] for k, v in actor_metrics.items()})

        state = eqx.tree_at(
            lambda s: (s.target_critic, s.updates),
            state,
            (soft_update(state.target_critic, state.critic, c.tau), state.updates + 1),
        )
        return state, metrics

    def scheduled(
        self, state: SACState, batch: Batch, key: PRNGKeyArray, updates: Array
    ) -> tuple[SACState, dict[str, Array]]:
        """SAC has no scheduled events."""
        del batch, key, updates
        return state, {}
