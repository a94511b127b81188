"""BRO (Nauman et al. 2024): BroNet critics with quantile heads, optimistic exploration, full resets.

The `Agent` protocol, as SAC: a frozen config plus pure `init`/`act`/`update` over an explicit
state pytree, each network's loss an `Objective`. `scheduled` runs BRO's full-reset schedule; the
trainer calls it between update cycles with the (unbatched) update count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ..networks import BroNet, BroTwinCritic
from ._agent import Batch, Objective
from ._checks import check_fields
from ._quantile import quantile_huber
from ._steps import (
    _known,
    actor_and_alpha_step,
    critic_step,
    objective_step,
    opt_update,
    params,
    soft_update,
    squashed_gaussian,
    with_l2_init,
)

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0
#: log β and log λ are squashed into this range (BRO's released code)
ADJUST_LOG_MIN, ADJUST_LOG_MAX = -10.0, 7.5
#: BRO's full resets (env steps) at replay ratio 10 (the paper's runs end at 1M; the released
#: code continues the schedule); at lower ratios only the first one.
FULL_RESETS_RR10 = (15_000, 50_000, 250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000)


@dataclass(frozen=True)
class BROConfig:
    """BRO hyperparameters; defaults are the BRO paper's (replay ratio comes from the trainer)."""

    batch_size: int = 128
    """Transitions per gradient update."""
    actor_lr: float = 3e-4
    """AdamW learning rate of both actors."""
    critic_lr: float = 3e-4
    """AdamW learning rate of the twin critics."""
    weight_decay: float = 1e-4
    """AdamW weight decay of actors and critics."""
    l2_init: float = 0.0
    """L2-init (Kumar et al. 2023): pull of the actors' and critics' parameters towards their
    initial values with this strength, `ns.l2_init` first in their optimizers (0: off)."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α (b1 = `adjust_b1`)."""
    init_alpha: float = 1.0
    """Initial entropy temperature α."""
    target_entropy_scale: float = 0.5
    """Target entropy = −scale·|A|."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target update rate, every update."""
    critic_width: int = 512
    """BroNet width of each critic."""
    critic_blocks: int = 2
    """BroNet residual blocks of each critic (1–4)."""
    n_quantiles: int = 100
    """Quantiles of each critic's return distribution."""
    kappa: float = 1.0
    """Huber threshold κ of the quantile loss."""
    actor_width: int = 256
    """BroNet width of both actors."""
    actor_blocks: int = 1
    """BroNet residual blocks of both actors (1–4)."""
    optimism: bool = True
    """Explore with the optimistic actor π_o; otherwise with the conservative actor π_c."""
    init_optimism: float = 1.0
    """Initial optimism β (weight of the critics' disagreement |Q1−Q2|/2)."""
    init_kl_weight: float = 0.25
    """Initial KL weight λ of the mean-shift KL between π_o and π_c."""
    adjust_lr: float = 3e-5
    """Adam learning rate of β and λ's raw parameters (log value = tanh-squashed raw value)."""
    adjust_b1: float = 0.5
    """Adam b1 of the temperature, β and λ."""
    kl_target: float = 0.05
    """Target of the mean-shift KL per action dimension."""
    std_multiplier: float = 0.75
    """σ_o = std_multiplier · σ_c."""
    full_resets: tuple[int, ...] | None = None
    """Env steps of full resets; None: BRO's schedule (RR ≥ 10: 15k…750k, else 15k); (): none."""

    @classmethod
    def grama(cls) -> BROConfig:
        """The GraMa paper's BRO-net setting: width 256 everywhere, actor lr 1e-4, critic lr 1e-3."""
        return cls(critic_width=256, actor_width=256, actor_lr=1e-4, critic_lr=1e-3)

    def validate(self) -> None:
        positive = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha", "kappa", "init_optimism")
        positive += ("init_kl_weight", "adjust_lr", "std_multiplier")
        check_fields(
            self,
            "bro",
            unit=("tau", "gamma"),
            at_least_one=("batch_size", "critic_width", "actor_width", "n_quantiles"),
            positive=positive,
            non_negative=("weight_decay", "kl_target", "l2_init"),
        )
        for name in ("critic_blocks", "actor_blocks"):
            if not 1 <= getattr(self, name) <= 4:
                raise ValueError(f"bro.{name} must be in 1..4, got {getattr(self, name)}")
        for name in ("init_optimism", "init_kl_weight"):
            if not ADJUST_LOG_MIN < math.log(getattr(self, name)) < ADJUST_LOG_MAX:
                raise ValueError(
                    f"bro.{name} must be in (e^{ADJUST_LOG_MIN:g}, e^{ADJUST_LOG_MAX:g}), "
                    f"got {getattr(self, name)}"
                )
        if self.full_resets is not None and any(s <= 0 for s in self.full_resets):
            raise ValueError(f"bro.full_resets must be positive env steps, got {self.full_resets}")


def gaussian_kl(
    mean_p: Array, log_std_p: Array, mean_q: Array, log_std_q: Array
) -> Float[Array, ""]:
    """KL(N_p ‖ N_q) of diagonal Gaussians, summed over dimensions (equal to the KL of the
    tanh-squashed distributions, tanh being a bijection)."""
    var_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    mahalanobis = (mean_p - mean_q) ** 2 * jnp.exp(-2.0 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + 0.5 * (var_ratio + mahalanobis) - 0.5)


def shift_kl(mean_o: Array, mean_c: Array, log_std_c: Array) -> Float[Array, ""]:
    """BRO's optimism KL: KL(N(μ_o, σ_c) ‖ N(μ_c, σ_c)) = Σ (μ_o − μ_c)² / 2σ_c².

    π_o's narrower σ (a fixed multiple of σ_c) is left out, as in BRO's released code: with it,
    the KL would have a floor of 0.069 per dimension at σ_o = 0.75 σ_c, above the target 0.05.
    """
    return gaussian_kl(mean_o, log_std_c, mean_c, log_std_c)


def squash_log(raw: Array) -> Array:
    """log β or log λ from its raw parameter: tanh-squashed into [−10, 7.5]."""
    span = ADJUST_LOG_MAX - ADJUST_LOG_MIN
    return ADJUST_LOG_MIN + 0.5 * span * (jnp.tanh(raw) + 1.0)


def unsquash_log(log_value: float) -> float:
    """The raw parameter whose `squash_log` is `log_value`."""
    span = ADJUST_LOG_MAX - ADJUST_LOG_MIN
    return math.atanh(2.0 * (log_value - ADJUST_LOG_MIN) / span - 1.0)


class BroActor(eqx.Module):
    """Conservative actor π_c: tanh-Gaussian, log σ squashed into [−10, 2].

    One output layer holds the mean rows (orthogonal, gain √2) and the log σ rows (their own
    orthogonal draw, gain 1), the gains of BRO's two output layers.
    """

    net: BroNet

    def __init__(
        self, obs_size: int, action_size: int, width: int, blocks: int, *, key: PRNGKeyArray
    ):
        k_net, k_std = jax.random.split(key)
        net = BroNet(obs_size, 2 * action_size, width, blocks, head_scale=math.sqrt(2), key=k_net)
        w_std = jax.nn.initializers.orthogonal(1.0)(k_std, (action_size, width), jnp.float32)
        weight = net.head.weight.at[:, action_size:].set(w_std.T)  # stored (in, out)
        self.net = eqx.tree_at(lambda n: n.head.weight, net, weight)

    def distribution(self, obs: Float[Array, " o"]) -> tuple[Array, Array]:
        out = self.net(obs)
        half = out.shape[0] // 2
        mean, raw = out[:half], out[half:]  # slices, which the anatomy's tracer follows
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, obs: Float[Array, " o"], noise: Float[Array, " a"]) -> tuple[Array, Array]:
        return squashed_gaussian(*self.distribution(obs), noise)

    def mode(self, obs: Float[Array, " o"]) -> Float[Array, " a"]:
        return jnp.tanh(self.distribution(obs)[0])


class OptimisticActor(eqx.Module):
    """π_o: a BroNet on [obs, μ_c] whose output shifts π_c's mean; σ_o = multiplier · σ_c.

    The output layer starts at zero, so π_o starts as π_c with a narrower σ. (BRO's released
    code draws it orthogonal with gain 0.01, without bias; with σ_c as small as e⁻⁸ at
    initialisation, such a shift can put the KL in the hundreds per dimension.)
    """

    net: BroNet

    def __init__(
        self, obs_size: int, action_size: int, width: int, blocks: int, *, key: PRNGKeyArray
    ):
        net = BroNet(obs_size + action_size, action_size, width, blocks, key=key)
        self.net = eqx.tree_at(lambda n: n.head.weight, net, jnp.zeros_like(net.head.weight))

    def distribution(
        self,
        obs: Float[Array, " o"],
        mean_c: Float[Array, " a"],
        log_std_c: Float[Array, " a"],
        std_multiplier: float,
    ) -> tuple[Array, Array]:
        shift = self.net(jnp.concatenate([obs, mean_c]))
        return mean_c + shift, log_std_c + math.log(std_multiplier)


class BROState(eqx.Module):
    """Everything BRO learns or counts; a pytree (vmappable over seeds, serialisable)."""

    actor: BroActor
    optimistic_actor: OptimisticActor
    critic: BroTwinCritic
    target_critic: BroTwinCritic
    log_alpha: Float[Array, ""]
    adjust: Float[Array, " 2"]  # raw parameters of β (optimism) and λ (KL weight): `squash_log`
    actor_opt: optax.OptState
    optimistic_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    adjust_opt: optax.OptState
    updates: Array


def twin_quantiles(critic: BroTwinCritic, obs: Array, action: Array) -> Float[Array, "2 n"]:
    """Both critics' quantiles for one sample."""
    return critic(obs, action)


@dataclass(frozen=True)
class BRO:
    """BRO agent: `init`, `act`, `update`, `scheduled` over `BROState`; `objectives` per network.

    `replay_ratio` and `learning_starts` (from the trainer) turn the full-reset env steps into
    update counts.
    """

    config: BROConfig
    obs_size: int
    action_size: int
    replay_ratio: float = 2.0
    learning_starts: int = 2500
    name: str = "bro"
    #: (metric, network) pairs: which network a non-finite loss metric points to
    loss_networks: tuple[tuple[str, str], ...] = (
        ("critic_loss", "critic"),
        ("actor_loss", "actor"),
        ("alpha_loss", "temperature"),
        ("optimistic_loss", "optimistic_actor"),
    )
    update_cycle: int = 1
    surgery_networks: tuple[str, ...] = ("critic", "actor", "optimistic_actor")
    #: the layout of `BROState` that checkpoints record: 2 since the critics are two networks
    #: with (in, out) weights (a resume refuses a checkpoint of another layout)
    state_layout: ClassVar[int] = 2

    @property
    def target_entropy(self) -> float:
        return -self.config.target_entropy_scale * self.action_size

    @property
    def reset_env_steps(self) -> tuple[int, ...]:
        if self.config.full_resets is not None:
            return tuple(self.config.full_resets)
        return FULL_RESETS_RR10 if self.replay_ratio >= 10 else FULL_RESETS_RR10[:1]

    @property
    def reset_updates(self) -> tuple[int, ...]:
        """Update counts of the full resets: updates begin after `learning_starts` env steps."""
        steps = [s - self.learning_starts for s in self.reset_env_steps]
        return tuple(sorted({round(s * self.replay_ratio) for s in steps if s > 0}))

    def _optimizers(self) -> tuple[optax.GradientTransformation, ...]:
        c = self.config
        actor = with_l2_init(optax.adamw(c.actor_lr, weight_decay=c.weight_decay), c.l2_init)
        critic = with_l2_init(optax.adamw(c.critic_lr, weight_decay=c.weight_decay), c.l2_init)
        alpha = optax.adam(c.alpha_lr, b1=c.adjust_b1)
        adjust = optax.adam(c.adjust_lr, b1=c.adjust_b1)
        return actor, critic, alpha, adjust

    def init(self, key: PRNGKeyArray) -> BROState:
        c, o, a = self.config, self.obs_size, self.action_size
        k_actor, k_opt, k_critic = jax.random.split(key, 3)
        actor = BroActor(o, a, c.actor_width, c.actor_blocks, key=k_actor)
        optimistic = OptimisticActor(o, a, c.actor_width, c.actor_blocks, key=k_opt)
        critic = BroTwinCritic(o, a, c.critic_width, c.critic_blocks, c.n_quantiles, key=k_critic)
        log_alpha = jnp.asarray(math.log(c.init_alpha), jnp.float32)
        adjust = jnp.asarray(
            [unsquash_log(math.log(c.init_optimism)), unsquash_log(math.log(c.init_kl_weight))],
            jnp.float32,
        )
        opt_a, opt_c, opt_t, opt_j = self._optimizers()
        return BROState(
            actor=actor,
            optimistic_actor=optimistic,
            critic=critic,
            target_critic=critic,
            log_alpha=log_alpha,
            adjust=adjust,
            actor_opt=opt_a.init(params(actor)),
            optimistic_opt=opt_a.init(params(optimistic)),
            critic_opt=opt_c.init(params(critic)),
            alpha_opt=opt_t.init(log_alpha),
            adjust_opt=opt_j.init(adjust),
            updates=jnp.zeros((), jnp.int32),
        )

    # --- acting ------------------------------------------------------------------------------
    def optimistic_sample(
        self, actor: BroActor, optimistic: OptimisticActor, obs: Array, noise: Array
    ) -> tuple[Array, Array, Array]:
        """An action of π_o, its log-probability and the mean-shift KL (`shift_kl`, summed over
        dimensions); π_c is held fixed."""
        mean_c, log_std_c = jax.lax.stop_gradient(actor.distribution(obs))
        mean_o, log_std_o = optimistic.distribution(
            obs, mean_c, log_std_c, self.config.std_multiplier
        )
        action, logp = squashed_gaussian(mean_o, log_std_o, noise)
        return action, logp, shift_kl(mean_o, mean_c, log_std_c)

    def optimism_weights(self, adjust: Array) -> tuple[Array, Array]:
        """(β, λ) from their raw parameters."""
        beta, kl_weight = jnp.exp(squash_log(adjust))
        return beta, kl_weight

    def act(
        self, state: BROState, obs: Float[Array, "n o"], key: PRNGKeyArray, deterministic: bool
    ) -> Float[Array, "n a"]:
        """Exploration samples π_o (π_c without optimism); evaluation takes π_c's mode."""
        if deterministic:
            return jax.vmap(state.actor.mode)(obs)
        noise = jax.random.normal(key, (obs.shape[0], self.action_size), obs.dtype)
        if self.config.optimism:
            sample = lambda o, n: self.optimistic_sample(state.actor, state.optimistic_actor, o, n)
            return jax.vmap(sample)(obs, noise)[0]
        return jax.vmap(state.actor.sample)(obs, noise)[0]

    # --- losses ------------------------------------------------------------------------------
    def critic_target(self, state: BROState, batch: Batch, key: PRNGKeyArray) -> Array:
        """Target quantiles [b, n]: r + γ(1−d)(mean of both target critics − α log π_c)."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        next_action, next_logp = jax.vmap(state.actor.sample)(batch.next_obs, noise)
        next_q = jax.vmap(twin_quantiles, in_axes=(None, 0, 0))(
            state.target_critic, batch.next_obs, next_action
        )
        soft = jnp.mean(next_q, axis=1) - jnp.exp(state.log_alpha) * next_logp[:, None]
        target = (
            batch.reward[:, None] + self.config.gamma * (1.0 - batch.terminated[:, None]) * soft
        )
        return jax.lax.stop_gradient(target)

    def critic_objective(self, state: BROState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """Quantile-Huber loss of both critics per sample, against the shared target quantiles."""
        kappa = self.config.kappa

        def loss(q: Array, target: Array) -> Array:
            return jnp.sum(jax.vmap(lambda p: quantile_huber(p, target, kappa))(q))

        target = self.critic_target(state, batch, key)
        return Objective(state.critic, twin_quantiles, (batch.obs, batch.action), loss, (target,))

    def actor_objective(self, state: BROState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """α·log π_c(a|s) − Q̄(s, a), Q̄ the mean over both critics and all quantiles; aux log π."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        alpha, critic = jnp.exp(state.log_alpha), state.critic

        def loss(out: tuple[Array, Array], eps: Array, obs: Array) -> tuple[Array, Array]:
            action, logp = squashed_gaussian(*out, eps)
            return alpha * logp - jnp.mean(twin_quantiles(critic, obs, action)), logp

        return Objective(
            state.actor, BroActor.distribution, (batch.obs,), loss, (noise, batch.obs), True
        )

    def optimistic_objective(self, state: BROState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """−(Q̄ + β·|Q1 − Q2|/2) + λ·KL per sample, a drawn from π_o, KL the mean-shift KL
        (aux); π_c's mean and σ enter π_o as inputs, held fixed."""
        noise = jax.random.normal(key, batch.action.shape, batch.action.dtype)
        beta, kl_weight = self.optimism_weights(state.adjust)
        critic, mult = state.critic, self.config.std_multiplier
        mean_c, log_std_c = jax.lax.stop_gradient(jax.vmap(state.actor.distribution)(batch.obs))

        def call(optimistic: OptimisticActor, obs: Array, mean: Array, log_std: Array):
            return optimistic.distribution(obs, mean, log_std, mult)

        def loss(
            out: tuple[Array, Array], eps: Array, obs: Array, mean: Array, log_std: Array
        ) -> tuple[Array, Array]:
            action, _ = squashed_gaussian(*out, eps)
            kl = shift_kl(out[0], mean, log_std)
            q = jnp.mean(twin_quantiles(critic, obs, action), axis=-1)
            return -(jnp.mean(q) + beta * jnp.abs(q[0] - q[1]) / 2) + kl_weight * kl, kl

        inputs = (batch.obs, mean_c, log_std_c)
        return Objective(state.optimistic_actor, call, inputs, loss, (noise, *inputs), True)

    def objectives(self, state: BROState, batch: Batch, key: PRNGKeyArray) -> dict[str, Objective]:
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "critic": self.critic_objective(state, batch, k1),
            "actor": self.actor_objective(state, batch, k2),
            "optimistic_actor": self.optimistic_objective(state, batch, k3),
        }

    # --- networks by name ----------------------------------------------------------------------
    def make_network(self, name: str, key: PRNGKeyArray) -> Any:
        """A freshly initialised network: the source of re-drawn weights."""
        c, o, a = self.config, self.obs_size, self.action_size
        if _known(self, name) == "actor":
            return BroActor(o, a, c.actor_width, c.actor_blocks, key=key)
        if name == "optimistic_actor":
            return OptimisticActor(o, a, c.actor_width, c.actor_blocks, key=key)
        return BroTwinCritic(o, a, c.critic_width, c.critic_blocks, c.n_quantiles, key=key)

    def optimizer(self, name: str) -> optax.GradientTransformation:
        opt_a, opt_c, _, _ = self._optimizers()
        return opt_c if _known(self, name) == "critic" else opt_a

    def opt_state(self, state: BROState, name: str) -> Any:
        states = {
            "actor": state.actor_opt,
            "critic": state.critic_opt,
            "optimistic_actor": state.optimistic_opt,
        }
        return states[_known(self, name)]

    def replace_network(self, state: BROState, name: str, model: Any, opt_state: Any) -> BROState:
        fields = {
            "actor": lambda s: (s.actor, s.actor_opt),
            "critic": lambda s: (s.critic, s.critic_opt),
            "optimistic_actor": lambda s: (s.optimistic_actor, s.optimistic_opt),
        }
        return eqx.tree_at(fields[_known(self, name)], state, (model, opt_state))

    def networks(self, state: BROState) -> dict[str, Any]:
        """The parameters a finiteness check looks at, by network name."""
        return {
            "critic": state.critic,
            "actor": state.actor,
            "optimistic_actor": state.optimistic_actor,
            "temperature": state.log_alpha,
            "optimism": state.adjust,
        }

    # --- update ------------------------------------------------------------------------------
    def update(
        self, state: BROState, batch: Batch, key: PRNGKeyArray, phase: int
    ) -> tuple[BROState, dict[str, Array]]:
        """One gradient update of the critics, π_c and α, π_o and (β, λ), then the targets."""
        del phase  # every network is updated every step
        c = self.config
        opt_a, opt_c, opt_t, opt_j = self._optimizers()
        k_critic, k_actor, k_opt = jax.random.split(key, 3)

        state, metrics = critic_step(opt_c, self.critic_objective(state, batch, k_critic), state)
        state, m = actor_and_alpha_step(self, state, batch, k_actor, opt_a, opt_t)
        metrics.update(m)
        if c.optimism:
            state, m = self._optimistic_and_adjust(state, batch, k_opt, opt_a, opt_j)
            metrics.update(m)

        state = eqx.tree_at(
            lambda s: (s.target_critic, s.updates),
            state,
            (soft_update(state.target_critic, state.critic, c.tau), state.updates + 1),
        )
        return state, metrics

    def _optimistic_and_adjust(self, state, batch, key, opt_a, opt_j):
        objective = self.optimistic_objective(state, batch, key)
        optimistic, optimistic_opt, loss, kl = objective_step(
            opt_a, objective, state.optimistic_opt
        )
        kl = jax.lax.stop_gradient(kl) / self.action_size  # per action dimension
        adjust, adjust_opt, adjust_loss = self.adjust_step(
            opt_j, state.adjust, state.adjust_opt, kl
        )
        state = eqx.tree_at(
            lambda s: (s.optimistic_actor, s.optimistic_opt, s.adjust, s.adjust_opt),
            state,
            (optimistic, optimistic_opt, adjust, adjust_opt),
        )
        beta, kl_weight = self.optimism_weights(adjust)
        metrics = {
            "optimistic_loss": loss,
            "optimism_kl": kl,
            "optimism_beta": beta,
            "optimism_kl_weight": kl_weight,
            "adjust_loss": adjust_loss,
        }
        return state, metrics

    def adjust_step(
        self, opt: optax.GradientTransformation, adjust: Array, opt_state: Any, kl: Array
    ) -> tuple[Array, Any, Array]:
        """One Adam step of β and λ's raw parameters on the losses β·(KL − target) and
        −λ·(KL − target), KL per action dimension: above the target, β falls and λ rises."""
        excess = kl - self.config.kl_target
        sign = jnp.asarray([1.0, -1.0], jnp.float32)
        loss_fn = lambda raw: jnp.sum(sign * jnp.exp(squash_log(raw))) * excess
        loss, g = jax.value_and_grad(loss_fn)(adjust)
        upd, opt_state = opt_update(opt, g, opt_state, adjust)
        return eqx.apply_updates(adjust, upd), opt_state, loss

    # --- scheduled events --------------------------------------------------------------------
    def scheduled(
        self, state: BROState, batch: Batch, key: PRNGKeyArray, updates: Array
    ) -> tuple[BROState, dict[str, Array]]:
        """BRO's full reset when `updates` (done so far) passed a reset point in the last cycle.

        Networks, targets, optimizer states, α, β and λ are drawn afresh; the update count (and,
        outside the agent, the replay buffer) is kept. Pass `updates` unbatched under vmap so
        that the branch stays a branch.
        """
        del batch
        points = self.reset_updates
        if not points:
            return state, {"full_reset": jnp.zeros((), jnp.float32)}
        p = jnp.asarray(points, jnp.int32)
        due = jnp.any((p > updates - self.update_cycle) & (p <= updates))

        def reset(s: BROState) -> BROState:
            return eqx.tree_at(lambda t: t.updates, self.init(key), s.updates)

        state = jax.lax.cond(due, reset, lambda s: s, state)
        return state, {"full_reset": due.astype(jnp.float32)}
