"""DACER (Wang et al. 2024): a diffusion policy trained through its reverse chain, entropy by GMM.

The `Agent` protocol, as SAC. The actor is DACER's denoiser; an action is the reverse chain's output (20
DDPM ancestral steps, or a probability-flow ODE solved by Heun steps) plus N(0, 1)·α·0.15,
clipped.
The policy maximises min(Q1, Q2) by backpropagating through the whole chain. Every
`entropy_every` updates, `scheduled` estimates the behaviour policy's entropy by fitting Gaussian
mixtures to sampled actions, on device, and takes one Adam step of log α towards the target.

Critic: DSAC-T's distributional critic as in DACER's released code — each of two critics outputs a
Gaussian (mean, σ) of the return; the mean follows the expected target, σ a sampled target clipped
to ±3 σ̄, with gradients scaled by ω = σ̄² + ε (DSAC-T's variance-based gradient adjustment),
σ̄ a moving average of the batch-mean σ. DACER's target has no log π term: the policy has no
tractable density.
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

from ..networks import MLP, Denoiser, NetworkConfig
from ._agent import Batch, Objective
from ._checks import check_fields
from ._diffusion import VARIANCES, VPSchedule, ddpm_sample_calls, ode_sample_calls, vp_schedule
from ._gmm import fit_gmm, gmm_entropy
from ._steps import (
    ActorCritic,
    adam_optimizers,
    critic_step,
    objective_step,
    opt_update,
    params,
    soft_update,
)

SAMPLERS = ("ddpm", "ode")
MIN_STD = 0.01
#: ε of DSAC-T's loss as DACER's released code has it: ω = σ̄² + ε, denominators σ² + ε, σ³ + ε
DSAC_EPS = 0.1


@dataclass(frozen=True)
class DACERConfig:
    """DACER hyperparameters; defaults are the DACER paper's (GraMa paper, Tables 4–5)."""

    batch_size: int = 256
    """Transitions per gradient update."""
    actor_lr: float = 3e-4
    """Adam learning rate of the denoiser."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics."""
    alpha_lr: float = 3e-2
    """Adam learning rate of log α."""
    l2_init: float = 0.0
    """L2-init (Kumar et al. 2023): pull of the denoiser's and critics' parameters towards their
    initial values with this strength, `ns.l2_init` first in their optimizers (0: off)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target update rate (on policy steps); also the rate of the critics' mean-σ average."""
    policy_delay: int = 2
    """Denoiser, α and targets are updated on every `policy_delay`-th update."""
    reward_scale: float = 0.2
    """Rewards are multiplied by this in the critic target."""
    denoiser_width: int = 256
    """Hidden width of the denoiser MLP."""
    denoiser_depth: int = 3
    """Hidden layers of the denoiser MLP."""
    critic: NetworkConfig = field(default_factory=lambda: NetworkConfig(activation="gelu"))
    """Each critic's MLP trunk (outputs mean and σ of the return)."""
    sampler: str = "ddpm"
    """Reverse process: ddpm (discrete ancestral chain) or ode (probability-flow ODE, diffrax)."""
    ddpm_variance: str = "posterior"
    """Noise variance of the DDPM steps: posterior (β̃_t, DACER's) or beta (β_t)."""
    diffusion_steps: int = 20
    """Steps of the discrete VP schedule (and of the DDPM chain)."""
    ode_steps: int = 10
    """Heun steps of the ODE sampler (two denoiser calls each)."""
    beta_min: float = 0.1
    """VP schedule β_min."""
    beta_max: float = 10.0
    """VP schedule β_max."""
    init_alpha: float = 3.0
    """Initial α; exploration noise is N(0, 1)·α·noise_scale."""
    noise_scale: float = 0.15
    """Scale of the exploration noise relative to α."""
    target_entropy_scale: float = 0.9
    """Target entropy = −scale·|A|."""
    entropy_every: int = 10_000
    """Updates between entropy estimates and α steps (the first after the first update cycle)."""
    entropy_states: int = 16
    """Batch states at which actions are sampled for the estimate."""
    entropy_samples: int = 200
    """Actions sampled per state."""
    gmm_components: int = 3
    """Mixture components fitted per state."""
    gmm_iters: int = 50
    """EM iterations per fit."""
    target_clip: float = 3.0
    """The sampled target for σ is clipped to the critic mean ± target_clip·(batch-mean σ)."""

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"dacer.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.ddpm_variance not in VARIANCES:
            raise ValueError(
                f"dacer.ddpm_variance must be one of {VARIANCES}, got {self.ddpm_variance!r}"
            )
        ints = ("batch_size", "policy_delay", "denoiser_width", "denoiser_depth")
        ints += ("diffusion_steps", "ode_steps", "entropy_every", "entropy_states")
        ints += ("entropy_samples", "gmm_components", "gmm_iters")
        floats = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha", "reward_scale")
        floats += ("beta_min", "beta_max", "target_clip")
        check_fields(
            self,
            "dacer",
            unit=("tau", "gamma"),
            at_least_one=ints,
            positive=floats,
            non_negative=("noise_scale", "l2_init"),
        )
        if self.entropy_states > self.batch_size:
            raise ValueError("dacer.entropy_states must be <= dacer.batch_size")
        self.critic.validate("dacer.critic")


class GaussianCritic(eqx.Module):
    """Return distribution N(μ, σ²) of Q(s, a); σ = softplus + MIN_STD."""

    net: MLP

    def __init__(self, obs_size: int, action_size: int, config: NetworkConfig, key: PRNGKeyArray):
        self.net = MLP(obs_size + action_size, 2, config, key=key)

    def __call__(self, obs: Float[Array, " o"], action: Float[Array, " a"]) -> tuple[Array, Array]:
        mean, raw = self.net(jnp.concatenate([obs, action]))
        return mean, jax.nn.softplus(raw) + MIN_STD


class StaticFn(eqx.Module):
    """A function held as static structure, not as a pytree leaf: a state holding a bare
    function (as `eqx.nn.MLP` holds its activation) cannot pass through `jax.jit`."""

    fn: Any = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        return self.fn(x)


def jittable_denoiser(denoiser: Denoiser) -> Denoiser:
    """The denoiser with its MLP's activation functions wrapped in `StaticFn`."""
    mlp = denoiser.mlp
    return eqx.tree_at(
        lambda d: (d.mlp.activation, d.mlp.final_activation),
        denoiser,
        (StaticFn(mlp.activation), StaticFn(mlp.final_activation)),
    )


def dsac_loss(mean: Array, std: Array, yq: Array, yz: Array, omega: Array, bound: Array) -> Array:
    """DSAC-T surrogate of one sample over both critics: its gradient is ω(μ − y_q)/(σ² + ε) in μ
    and ω(σ² − (y_b − μ)²)/(σ³ + ε) in σ, y_b = y_z clipped to μ ± bound — the gradient of the
    Gaussian negative log-likelihood, log σ + (y − μ)²/2σ², scaled by ω and with ε added."""
    m, s = jax.lax.stop_gradient((mean, std))
    yb = m + jnp.clip(yz - m, -bound, bound)
    g_mean = (m - yq) / (s**2 + DSAC_EPS)
    g_std = (s**2 - (yb - m) ** 2) / (s**3 + DSAC_EPS)
    return jnp.sum(omega * (g_mean * mean + g_std * std))


def twin_gaussian(critic: GaussianCritic, obs: Array, action: Array) -> tuple[Array, Array]:
    """Both critics' (mean [2], σ [2]) for one sample."""
    return eqx.filter_vmap(lambda c: c(obs, action))(critic)


class DACERState(eqx.Module):
    """Everything DACER learns or counts; a pytree (vmappable over seeds, serialisable)."""

    actor: Denoiser
    critic: GaussianCritic  # two members stacked on a leading axis
    target_critic: GaussianCritic
    log_alpha: Float[Array, ""]
    entropy: Float[Array, ""]  # the latest GMM estimate of the behaviour policy's entropy
    mean_std: Float[Array, " 2"]  # σ̄ of each critic: moving average of the batch-mean σ (−1: none)
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    updates: Array


@dataclass(frozen=True)
class DACER(ActorCritic):
    """DACER agent: `init`, `act`, `update`, `scheduled` over `DACERState`; `objectives` per
    network."""

    config: DACERConfig
    obs_size: int
    action_size: int
    name: str = "dacer"
    #: (metric, network) pairs: which network a non-finite loss metric points to
    loss_networks: tuple[tuple[str, str], ...] = (
        ("critic_loss", "critic"),
        ("actor_loss", "actor"),
    )

    @property
    def update_cycle(self) -> int:
        return self.config.policy_delay

    @property
    def target_entropy(self) -> float:
        return -self.config.target_entropy_scale * self.action_size

    @property
    def schedule(self) -> VPSchedule:
        c = self.config
        return vp_schedule(c.diffusion_steps, c.beta_min, c.beta_max)

    def _optimizers(self) -> tuple[optax.GradientTransformation, ...]:
        return adam_optimizers(self.config)

    def init(self, key: PRNGKeyArray) -> DACERState:
        c = self.config
        k_actor, k_critic = jax.random.split(key)
        actor, critic = self.make_network("actor", k_actor), self.make_network("critic", k_critic)
        log_alpha = jnp.asarray(math.log(c.init_alpha), jnp.float32)
        opt_a, opt_c, opt_t = self._optimizers()
        return DACERState(
            actor=actor,
            critic=critic,
            target_critic=critic,
            log_alpha=log_alpha,
            entropy=jnp.asarray(self.target_entropy, jnp.float32),
            mean_std=jnp.full((2,), -1.0, jnp.float32),
            actor_opt=opt_a.init(params(actor)),
            critic_opt=opt_c.init(params(critic)),
            alpha_opt=opt_t.init(log_alpha),
            updates=jnp.zeros((), jnp.int32),
        )

    # --- sampling ----------------------------------------------------------------------------
    def chain_noise_shape(self) -> tuple[int, int]:
        """Shape of the per-sample noise of the reverse chain: x_T and one draw per step."""
        return self.config.diffusion_steps + 1, self.action_size

    def sample(
        self,
        actor: Denoiser,
        obs: Float[Array, " o"],
        noise: Float[Array, "T1 a"],
        shift: Float[Array, "n a"] | None = None,
    ) -> Float[Array, " a"]:
        """The reverse process for one state: x_T = noise[0], DDPM steps draw noise[1:]."""
        return self.sample_calls(actor, obs, noise, shift)[0]

    def sample_calls(
        self,
        actor: Denoiser,
        obs: Float[Array, " o"],
        noise: Float[Array, "T1 a"],
        shift: Float[Array, "n a"] | None = None,
    ) -> tuple[Array, Array, Array]:
        """`sample`, and the input (x, t) of each of the sampler's `n` denoiser calls, in call
        order (the DDPM chain calls it `diffusion_steps` times, the ODE sampler 2·`ode_steps` + 1
        times). `shift[j]`, if given, is added to call j's output: the gradient of a loss in
        `shift` is ∂L/∂ε̂ of each call."""

        def eps_fn(x: Array, t: Array, j: Array) -> Array:
            eps = actor(obs, x, t)
            return eps if shift is None else eps + shift[j]

        c = self.config
        if c.sampler == "ode":
            return ode_sample_calls(self.schedule, eps_fn, noise[0], c.ode_steps)
        return ddpm_sample_calls(
            self.schedule, eps_fn, noise[0], noise[1:], variance=c.ddpm_variance
        )

    @property
    def denoiser_calls(self) -> int:
        """How many times one action calls the denoiser."""
        c = self.config
        return 2 * c.ode_steps + 1 if c.sampler == "ode" else c.diffusion_steps

    def behaviour(self, state: DACERState, obs: Array, key: PRNGKeyArray) -> Array:
        """Exploration actions [n, a]: diffusion action + N(0, 1)·α·noise_scale, clipped."""
        k_chain, k_noise = jax.random.split(key)
        n = obs.shape[0]
        noise = jax.random.normal(k_chain, (n, *self.chain_noise_shape()), obs.dtype)
        action = jax.vmap(self.sample, in_axes=(None, 0, 0))(state.actor, obs, noise)
        extra = jax.random.normal(k_noise, action.shape, action.dtype)
        scale = jnp.exp(state.log_alpha) * self.config.noise_scale
        return jnp.clip(action + scale * extra, -1.0, 1.0)

    def act(
        self, state: DACERState, obs: Float[Array, "n o"], key: PRNGKeyArray, deterministic: bool
    ) -> Float[Array, "n a"]:
        """Exploration adds α-scaled noise; evaluation runs the chain without the extra noise."""
        if deterministic:
            noise = jax.random.normal(key, (obs.shape[0], *self.chain_noise_shape()), obs.dtype)
            return jax.vmap(self.sample, in_axes=(None, 0, 0))(state.actor, obs, noise)
        return self.behaviour(state, obs, key)

    # --- per-sample losses -------------------------------------------------------------------
    def critic_scales(self, state: DACERState, batch: Batch) -> tuple[Array, Array, Array]:
        """(ω, clip bound, σ̄) per critic for this batch: σ̄ ← (1 − τ)σ̄ + τ·(batch-mean σ), or the
        batch mean at first; ω = σ̄² + ε and bound = target_clip·σ̄ (DACER's released code)."""
        _, std = jax.vmap(twin_gaussian, in_axes=(None, 0, 0))(
            state.critic, batch.obs, batch.action
        )
        batch_std = jnp.mean(jax.lax.stop_gradient(std), axis=0)  # [2]
        tau = self.config.tau
        mean_std = jnp.where(
            state.mean_std < 0, batch_std, (1.0 - tau) * state.mean_std + tau * batch_std
        )
        return mean_std**2 + DSAC_EPS, self.config.target_clip * mean_std, mean_std

    def critic_targets(self, state: DACERState, batch: Batch, key: PRNGKeyArray) -> tuple:
        """(y_q, y_z) per sample: the target critic with the smaller mean at (s', a'), a' a
        behaviour action; y_q from its mean, y_z from a draw of its Gaussian (z clipped to ±3)."""
        c = self.config
        k_act, k_z = jax.random.split(key)
        next_action = self.behaviour(state, batch.next_obs, k_act)
        mean_t, std_t = jax.vmap(twin_gaussian, in_axes=(None, 0, 0))(
            state.target_critic, batch.next_obs, next_action
        )  # [b, 2]
        pick = jnp.argmin(mean_t, axis=1)
        mean_n = jnp.take_along_axis(mean_t, pick[:, None], 1)[:, 0]
        std_n = jnp.take_along_axis(std_t, pick[:, None], 1)[:, 0]
        z = jnp.clip(jax.random.normal(k_z, mean_n.shape, mean_n.dtype), -3.0, 3.0)
        not_done = c.gamma * (1.0 - batch.terminated)
        reward = c.reward_scale * batch.reward
        y_mean = jax.lax.stop_gradient(reward + not_done * mean_n)
        y_sample = jax.lax.stop_gradient(reward + not_done * (mean_n + std_n * z))
        return y_mean, y_sample

    def critic_objective(self, state: DACERState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """DSAC-T loss of both critics per sample (its gradient, not its value, is the point)."""
        y_mean, y_sample = self.critic_targets(state, batch, key)
        omega, bound, _ = self.critic_scales(state, batch)

        def loss(out: tuple[Array, Array], yq: Array, yz: Array) -> Array:
            return dsac_loss(out[0], out[1], yq, yz, omega, bound)

        inputs = (batch.obs, batch.action)
        return Objective(state.critic, twin_gaussian, inputs, loss, (y_mean, y_sample))

    def policy_loss(self, critic: GaussianCritic) -> Any:
        """The policy's loss for one state, given its action: −min(μ1, μ2)(s, a)."""
        return lambda action, obs: -jnp.min(twin_gaussian(critic, obs, action)[0])

    def actor_objective(self, state: DACERState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """The policy loss of the reverse chain's action, the chain driven by per-sample noise
        (what the update differentiates, through every denoiser call)."""
        shape = (batch.obs.shape[0], *self.chain_noise_shape())
        noise = jax.random.normal(key, shape, batch.obs.dtype)
        chain = lambda actor, obs, eps: self.sample(actor, obs, eps)
        loss = self.policy_loss(state.critic)
        return Objective(state.actor, chain, (batch.obs, noise), loss, (batch.obs,))

    def denoiser_objective(self, state: DACERState, batch: Batch, key: PRNGKeyArray) -> Objective:
        """The actor objective seen call by call: one sample per (state, denoiser call) of the
        chain, whose loss is linear in the call's output, n·⟨ε̂, ∂L/∂ε̂⟩ with n the calls per
        action, so that the batch loss has the chain's gradient at every unit of every call.
        This is what a surgery step maps and observes: the denoiser itself, not the chain."""
        actor = self.actor_objective(state, batch, key)
        (obs, noise), loss = actor.inputs, actor.loss
        b, n = obs.shape[0], self.denoiser_calls

        def chain_loss(shift: Array, obs: Array, eps: Array) -> tuple[Array, tuple[Array, Array]]:
            action, xs, ts = self.sample_calls(state.actor, obs, eps, shift)
            return loss(action, obs), (xs, ts)

        def calls(obs: Array, eps: Array) -> tuple[Array, Array, Array]:
            shift = jnp.zeros((n, self.action_size), eps.dtype)
            grads, (xs, ts) = jax.grad(chain_loss, has_aux=True)(shift, obs, eps)
            return xs, ts, grads

        xs, ts, grads = jax.lax.stop_gradient(jax.vmap(calls)(obs, noise))
        inputs = (jnp.repeat(obs, n, axis=0), xs.reshape(b * n, -1), ts.reshape(b * n))
        return Objective(
            state.actor,
            lambda m, o, x, t: m(o, x, t),
            inputs,
            lambda out, g: n * jnp.sum(out * g),
            (grads.reshape(b * n, -1),),
        )

    def objectives(
        self, state: DACERState, batch: Batch, key: PRNGKeyArray
    ) -> dict[str, Objective]:
        """Critics, and the denoiser call by call (see `denoiser_objective`)."""
        k1, k2 = jax.random.split(key)
        return {
            "critic": self.critic_objective(state, batch, k1),
            "actor": self.denoiser_objective(state, batch, k2),
        }

    def make_network(self, name: str, key: PRNGKeyArray) -> Any:
        """A freshly initialised network: the source of re-drawn weights."""
        c, o, a = self.config, self.obs_size, self.action_size
        if name == "actor":
            return jittable_denoiser(Denoiser(o, a, c.denoiser_width, c.denoiser_depth, key=key))
        if name == "critic":
            return eqx.filter_vmap(lambda k: GaussianCritic(o, a, c.critic, k))(
                jax.random.split(key, 2)
            )
        raise ValueError(f"dacer has no network {name!r}; its networks are critic, actor")

    def networks(self, state: DACERState) -> dict[str, Any]:
        """The parameters a finiteness check looks at, by network name."""
        return {"critic": state.critic, "actor": state.actor, "temperature": state.log_alpha}

    # --- update ------------------------------------------------------------------------------
    def update(
        self, state: DACERState, batch: Batch, key: PRNGKeyArray, phase: int
    ) -> tuple[DACERState, dict[str, Array]]:
        """Critic every update; denoiser and targets on the last phase of each cycle (α moves
        with the entropy estimate, in `scheduled`)."""
        c = self.config
        opt_a, opt_c, _ = self._optimizers()
        k_critic, k_actor = jax.random.split(key)

        _, _, mean_std = self.critic_scales(state, batch)
        state, metrics = critic_step(opt_c, self.critic_objective(state, batch, k_critic), state)
        state = eqx.tree_at(lambda s: s.mean_std, state, mean_std)
        metrics["critic_std"] = jnp.mean(mean_std)

        if phase == self.update_cycle - 1:
            objective = self.actor_objective(state, batch, k_actor)
            actor, actor_opt, actor_loss, _ = objective_step(opt_a, objective, state.actor_opt)
            target = soft_update(state.target_critic, state.critic, c.tau)
            state = eqx.tree_at(
                lambda s: (s.actor, s.actor_opt, s.target_critic),
                state,
                (actor, actor_opt, target),
            )
            metrics["actor_loss"] = actor_loss
        state = eqx.tree_at(lambda s: s.updates, state, state.updates + 1)
        return state, metrics

    def alpha_step(
        self, log_alpha: Array, opt_state: Any, entropy: Array
    ) -> tuple[Array, Any, Array]:
        """One Adam step of log α on −log α·(H_target − H): α rises while the entropy estimate
        is below the target, and falls while it is above."""
        opt_t = self._optimizers()[2]
        gap = self.target_entropy - entropy
        loss, g = jax.value_and_grad(lambda la: -la * gap)(log_alpha)
        upd, opt_state = opt_update(opt_t, g, opt_state, log_alpha)
        return eqx.apply_updates(log_alpha, upd), opt_state, loss

    # --- entropy -----------------------------------------------------------------------------
    def estimate_entropy(
        self, state: DACERState, obs: Float[Array, "n o"], key: PRNGKeyArray
    ) -> Float[Array, ""]:
        """Mean over states of the GMM entropy of `entropy_samples` behaviour actions each."""
        c = self.config

        def at_state(o: Array, k: Array) -> Array:
            k1, k2 = jax.random.split(k)
            actions = self.behaviour(state, jnp.broadcast_to(o, (c.entropy_samples, *o.shape)), k1)
            return gmm_entropy(fit_gmm(actions, k2, c.gmm_components, c.gmm_iters))

        return jnp.mean(jax.vmap(at_state)(obs, jax.random.split(key, obs.shape[0])))

    def scheduled(
        self, state: DACERState, batch: Batch, key: PRNGKeyArray, updates: Array
    ) -> tuple[DACERState, dict[str, Array]]:
        """After the first cycle and every `entropy_every` updates: a new entropy estimate, then
        one step of α towards the target entropy (as DACER's released code, which updates α only
        with a fresh estimate).

        `updates` (done so far) should be unbatched under vmap so that the branch stays a branch.
        """
        every, cycle = self.config.entropy_every, self.update_cycle
        due = ((updates // every) != ((updates - cycle) // every)) | (updates <= cycle)
        obs = batch.obs[: self.config.entropy_states]

        def refresh(s: DACERState) -> DACERState:
            entropy = self.estimate_entropy(s, obs, key)
            log_alpha, alpha_opt, _ = self.alpha_step(s.log_alpha, s.alpha_opt, entropy)
            return eqx.tree_at(
                lambda t: (t.entropy, t.log_alpha, t.alpha_opt), s, (entropy, log_alpha, alpha_opt)
            )

        state = jax.lax.cond(due, refresh, lambda s: s, state)
        return state, {"entropy_estimate": state.entropy, "alpha": jnp.exp(state.log_alpha)}
