"""Soft actor-critic: twin critics, tanh-Gaussian actor, automatic entropy tuning.

The agent is a frozen config plus pure functions over an explicit state pytree. Each loss is
written per sample (`Probe`), so the update and any surgery step that needs per-sample gradients
(GraMa) read the same forward inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_fields
from ._mlp import MLP, NetworkConfig

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
    actor: NetworkConfig = field(default_factory=NetworkConfig)
    """Actor network."""
    critic: NetworkConfig = field(default_factory=NetworkConfig)
    """Critic network (each of the two)."""

    def validate(self) -> None:
        check_fields(
            self, "sac", unit=("tau", "gamma"), at_least_one=("batch_size", "policy_delay"),
            positive=("actor_lr", "critic_lr", "alpha_lr", "init_alpha"),
        )  # fmt: skip
        self.actor.validate("sac.actor")
        self.critic.validate("sac.critic")


class Batch(NamedTuple):
    """Replay transitions; `next_obs` is the observation reached (final_obs), never a reset one."""

    obs: Float[Array, "b o"]
    action: Float[Array, "b a"]
    reward: Float[Array, " b"]
    next_obs: Float[Array, "b o"]
    terminated: Float[Array, " b"]


class Probe(NamedTuple):
    """A network, its per-sample inputs and its per-sample loss: batch loss = mean of `loss`."""

    model: eqx.Module
    inputs: tuple[Array, ...]
    loss: Callable[..., Array]


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

    def __init__(self, obs_size: int, action_size: int, config: NetworkConfig,
                 key: PRNGKeyArray, n: int = 2):  # fmt: skip
        keys = jax.random.split(key, n)
        self.members = tuple(Critic(obs_size, action_size, config, k) for k in keys)

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


def squashed_gaussian(mean: Array, log_std: Array, noise: Array) -> tuple[Array, Array]:
    """tanh(u), u = mean + exp(log_std)·noise, with log π(a) = log N(u) − Σ log(1 − tanh(u)²)."""
    u = mean + jnp.exp(log_std) * noise
    log_normal = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    log_det = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_normal - log_det)


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


def _params(model: Any) -> Any:
    return eqx.filter(model, eqx.is_array)


def twin_q(critic: TwinCritic, obs: Array, action: Array) -> Float[Array, " 2"]:
    """Both critics' Q(s, a) for one sample."""
    return critic(obs, action)


class ActorCriticNetworks:
    """Surgery access for agents whose state holds `actor`/`actor_opt` and `critic`/`critic_opt`
    and whose `_optimizers()` returns (actor, critic, temperature) optimizers."""

    def network_optimizer(self, state: Any, name: str) -> tuple[Any, Any]:
        opt_a, opt_c, _ = self._optimizers()  # type: ignore[attr-defined]
        return (opt_a, state.actor_opt) if name == "actor" else (opt_c, state.critic_opt)

    def replace_network(self, state: Any, name: str, model: Any, opt_state: Any) -> Any:
        if name == "actor":
            return eqx.tree_at(lambda s: (s.actor, s.actor_opt), state, (model, opt_state))
        return eqx.tree_at(lambda s: (s.critic, s.critic_opt), state, (model, opt_state))


@dataclass(frozen=True)
class SAC(ActorCriticNetworks):
    """SAC agent: `init`, `act`, `update` over `SACState`; `probes` expose per-sample losses."""

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

    @property
    def update_cycle(self) -> int:
        """Updates come in cycles of this length; `update` gets the position (static)."""
        return self.config.policy_delay

    @property
    def target_entropy(self) -> float:
        return -self.config.target_entropy_scale * self.action_size

    def _optimizers(self) -> tuple[optax.GradientTransformation, ...]:
        c = self.config
        return optax.adam(c.actor_lr), optax.adam(c.critic_lr), optax.adam(c.alpha_lr)

    def init(self, key: PRNGKeyArray) -> SACState:
        c, o, a = self.config, self.obs_size, self.action_size
        k_actor, k_critic = jax.random.split(key)
        actor = Actor(o, a, c.actor, k_actor)
        critic = TwinCritic(o, a, c.critic, k_critic)
        log_alpha = jnp.asarray(math.log(c.init_alpha), jnp.float32)
        opt_a, opt_c, opt_t = self._optimizers()
        return SACState(
            actor=actor,
            critic=critic,
            target_critic=critic,
            log_alpha=log_alpha,
            actor_opt=opt_a.init(_params(actor)),
            critic_opt=opt_c.init(_params(critic)),
            alpha_opt=opt_t.init(log_alpha),
            updates=jnp.zeros((), jnp.int32),
        )

    def act(
        self, state: SACState, obs: Float[Array, "n o"], key: PRNGKeyArray, deterministic: bool
    ) -> Float[Array, "n a"]:
        if deterministic:
            return jax.vmap(state.actor.mode)(obs)
        noise = jax.random.normal(key, (obs.shape[0], self.action_size), obs.dtype)
        return jax.vmap(state.actor.sample)(obs, noise)[0]

    # --- per-sample losses -------------------------------------------------------------------
    def critic_probe(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> Probe:
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

        def loss(critic: TwinCritic, obs: Array, action: Array, y: Array) -> Array:
            return jnp.sum((twin_q(critic, obs, action) - y) ** 2)

        return Probe(state.critic, (batch.obs, batch.action, target), loss)

    def actor_probe(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> Probe:
        """α·log π(a|s) − min_k Q_k(s, a) per sample, a reparameterised from the noise input."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        alpha = jnp.exp(state.log_alpha)
        critic = state.critic

        def loss(actor: Actor, obs: Array, eps: Array) -> Array:
            action, logp = actor.sample(obs, eps)
            return alpha * logp - jnp.min(twin_q(critic, obs, action))

        return Probe(state.actor, (batch.obs, noise), loss)

    def probes(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> dict[str, Probe]:
        k1, k2 = jax.random.split(key)
        return {
            "critic": self.critic_probe(state, batch, k1),
            "actor": self.actor_probe(state, batch, k2),
        }

    # --- neuron surgery ------------------------------------------------------------------------
    def surgery_targets(self, state: SACState, batch: Batch, key: PRNGKeyArray) -> dict[str, Any]:
        """Critic and actor as a surgery step sees them: call, batched inputs, the update's loss
        as a function of the batched outputs."""
        from ._neurons import SurgeryTarget

        target = self.critic_probe(state, batch, key).inputs[2]
        critic = SurgeryTarget(
            state.critic, twin_q, (batch.obs, batch.action),
            lambda q: jnp.mean(jnp.sum((q - target[:, None]) ** 2, axis=-1)),
        )  # fmt: skip
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        alpha, frozen_critic = jnp.exp(state.log_alpha), state.critic

        def actor_loss(out: tuple[Array, Array]) -> Array:
            action, logp = jax.vmap(squashed_gaussian)(out[0], out[1], noise)
            q = jax.vmap(twin_q, in_axes=(None, 0, 0))(frozen_critic, batch.obs, action)
            return jnp.mean(alpha * logp - jnp.min(q, axis=-1))

        actor = SurgeryTarget(state.actor, Actor.distribution, (batch.obs,), actor_loss)
        return {"critic": critic, "actor": actor}

    def fresh_network(self, name: str, key: PRNGKeyArray) -> Any:
        """A freshly initialised network: the source of re-drawn weights."""
        c, o, a = self.config, self.obs_size, self.action_size
        if name == "actor":
            return Actor(o, a, c.actor, key)
        return TwinCritic(o, a, c.critic, key)

    def networks(self, state: SACState) -> dict[str, Any]:
        """The parameters a finiteness check or a surgery step looks at, by network name."""
        return {"critic": state.critic, "actor": state.actor, "temperature": state.log_alpha}

    # --- update ------------------------------------------------------------------------------
    def update(
        self, state: SACState, batch: Batch, key: PRNGKeyArray, phase: int
    ) -> tuple[SACState, dict[str, Array]]:
        """One gradient update. `phase` (static) is the position in the policy-delay cycle."""
        c = self.config
        opt_a, opt_c, opt_t = self._optimizers()
        k_critic, k_actor = jax.random.split(key)

        state, metrics = critic_step(opt_c, self.critic_probe(state, batch, k_critic), state)

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


def critic_step(opt: optax.GradientTransformation, probe: Probe, state: Any) -> tuple[Any, dict]:
    """One optimizer step of `state.critic` (and `state.critic_opt`) on the mean of a critic
    probe's per-sample loss; metrics: the loss and the mean of the probe's target input."""
    critic_loss, grads = _mean_loss_and_grad(probe)
    upd, critic_opt = _opt_update(opt, grads, state.critic_opt, _params(state.critic))
    critic = eqx.apply_updates(state.critic, upd)
    state = eqx.tree_at(lambda s: (s.critic, s.critic_opt), state, (critic, critic_opt))
    return state, {"critic_loss": critic_loss, "q_mean": jnp.mean(probe.inputs[2])}


def soft_update(target: Any, online: Any, tau: float) -> Any:
    """Polyak averaging of a target network: (1 − τ)·target + τ·online, leaf by leaf."""
    mixed = jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, _params(target), _params(online))
    return eqx.combine(mixed, target)


def actor_and_alpha_step(agent: Any, state: Any, batch: Batch, key: PRNGKeyArray,
                         opt_a: optax.GradientTransformation,
                         opt_t: optax.GradientTransformation) -> tuple[Any, dict]:  # fmt: skip
    """A tanh-Gaussian actor's step on `agent.actor_probe`, then the temperature's step towards
    `agent.target_entropy` (SAC and BRO's conservative actor)."""
    probe = agent.actor_probe(state, batch, key)

    def batch_loss(actor: Any) -> tuple[Array, Array]:
        per_sample = jax.vmap(probe.loss, in_axes=(None, 0, 0))(actor, *probe.inputs)
        _, logp = jax.vmap(actor.sample)(*probe.inputs)
        return jnp.mean(per_sample), jnp.mean(logp)

    (actor_loss, logp), grads = eqx.filter_value_and_grad(batch_loss, has_aux=True)(state.actor)
    upd, actor_opt = _opt_update(opt_a, grads, state.actor_opt, _params(state.actor))
    actor = eqx.apply_updates(state.actor, upd)
    logp = jax.lax.stop_gradient(logp)

    def alpha_loss_fn(log_alpha: Array) -> Array:
        return -jnp.exp(log_alpha) * (logp + agent.target_entropy)

    alpha_loss, g = jax.value_and_grad(alpha_loss_fn)(state.log_alpha)
    upd_t, alpha_opt = _opt_update(opt_t, g, state.alpha_opt, state.log_alpha)
    log_alpha = eqx.apply_updates(state.log_alpha, upd_t)
    state = eqx.tree_at(
        lambda s: (s.actor, s.actor_opt, s.log_alpha, s.alpha_opt),
        state,
        (actor, actor_opt, log_alpha, alpha_opt),
    )
    metrics = {
        "actor_loss": actor_loss,
        "alpha_loss": alpha_loss,
        "alpha": jnp.exp(log_alpha),
        "entropy": -logp,
    }
    return state, metrics


def _opt_update(opt: optax.GradientTransformation, grads: Any, state: Any, params: Any):
    """`opt.update` under standard dtype promotion (optax mixes Python floats and int counts)."""
    with jax.numpy_dtype_promotion("standard"):
        return opt.update(grads, state, params)


def _mean_loss_and_grad(probe: Probe) -> tuple[Array, Any]:
    n_inputs = len(probe.inputs)

    def batch_loss(model: Any) -> Array:
        in_axes = (None,) + (0,) * n_inputs
        return jnp.mean(jax.vmap(probe.loss, in_axes=in_axes)(model, *probe.inputs))

    return eqx.filter_value_and_grad(batch_loss)(probe.model)
