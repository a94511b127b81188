"""Steps the algorithms share: an optimizer step on an `Objective`, target averaging, the
tanh-Gaussian policy with its temperature, and access to actor and critic by name."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

import neurosurgery as ns

from ._agent import Objective


def params(model: Any) -> Any:
    """The array leaves of a network (what its optimizer sees)."""
    return eqx.filter(model, eqx.is_array)


def with_l2_init(
    opt: optax.GradientTransformation, strength: float
) -> optax.GradientTransformation:
    """`opt` with L2-init's pull towards the initial parameters first (`ns.l2_init`), or `opt`
    itself for strength 0 (its state, and so a checkpoint, as without the option)."""
    return optax.chain(ns.l2_init(strength), opt) if strength else opt


def adam_optimizers(config: Any) -> tuple[optax.GradientTransformation, ...]:
    """Adam for the actor, the critics and log α at `config`'s `actor_lr`, `critic_lr` and
    `alpha_lr`, the first two with `config.l2_init`'s pull (SAC's and DACER's optimizers)."""
    actor, critic = optax.adam(config.actor_lr), optax.adam(config.critic_lr)
    return (
        with_l2_init(actor, config.l2_init),
        with_l2_init(critic, config.l2_init),
        optax.adam(config.alpha_lr),
    )


def opt_update(opt: optax.GradientTransformation, grads: Any, state: Any, params: Any):
    """`opt.update` under standard dtype promotion (optax mixes Python floats and int counts)."""
    with jax.numpy_dtype_promotion("standard"):
        return opt.update(grads, state, params)


def objective_step(
    opt: optax.GradientTransformation, objective: Objective, opt_state: Any
) -> tuple[Any, Any, Array, Any]:
    """One optimizer step of `objective.model` on its batch loss.

    Returns the new network, its optimizer state, the loss and the aux (`None` without).
    """
    grad_fn = eqx.filter_value_and_grad(objective.batch_loss, has_aux=objective.has_aux)
    out, grads = grad_fn(objective.model)
    value, aux = out if objective.has_aux else (out, None)
    upd, opt_state = opt_update(opt, grads, opt_state, params(objective.model))
    return eqx.apply_updates(objective.model, upd), opt_state, value, aux


def soft_update(target: Any, online: Any, tau: float) -> Any:
    """Polyak averaging of a target network: (1 − τ)·target + τ·online, leaf by leaf."""
    mixed = jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, params(target), params(online))
    return eqx.combine(mixed, target)


def squashed_gaussian(mean: Array, log_std: Array, noise: Array) -> tuple[Array, Array]:
    """tanh(u), u = mean + exp(log_std)·noise, with log π(a) = log N(u) − Σ log(1 − tanh(u)²)."""
    u = mean + jnp.exp(log_std) * noise
    log_normal = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    log_det = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_normal - log_det)


def critic_step(
    opt: optax.GradientTransformation, objective: Objective, state: Any
) -> tuple[Any, dict[str, Array]]:
    """One optimizer step of `state.critic` (and `state.critic_opt`) on a critic objective whose
    first target is the TD target; metrics: the loss and the mean target."""
    critic, critic_opt, loss, _ = objective_step(opt, objective, state.critic_opt)
    state = eqx.tree_at(lambda s: (s.critic, s.critic_opt), state, (critic, critic_opt))
    return state, {"critic_loss": loss, "q_mean": jnp.mean(objective.targets[0])}


def actor_and_alpha_step(
    agent: Any,
    state: Any,
    batch: Any,
    key: PRNGKeyArray,
    opt_a: optax.GradientTransformation,
    opt_t: optax.GradientTransformation,
) -> tuple[Any, dict]:
    """A tanh-Gaussian actor's step on `agent.actor_objective` (whose aux is log π), then the
    temperature's step towards `agent.target_entropy` (SAC and BRO's conservative actor)."""
    objective = agent.actor_objective(state, batch, key)
    actor, actor_opt, actor_loss, logp = objective_step(opt_a, objective, state.actor_opt)
    logp = jax.lax.stop_gradient(logp)

    def alpha_loss_fn(log_alpha: Array) -> Array:
        return -jnp.exp(log_alpha) * (logp + agent.target_entropy)

    alpha_loss, g = jax.value_and_grad(alpha_loss_fn)(state.log_alpha)
    upd_t, alpha_opt = opt_update(opt_t, g, state.alpha_opt, state.log_alpha)
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


class ActorCritic:
    """Surgery access for agents whose state holds `actor`/`actor_opt` and `critic`/`critic_opt`
    and whose `_optimizers()` returns (actor, critic, ...) optimizers."""

    surgery_networks: tuple[str, ...] = ("critic", "actor")

    def optimizer(self, name: str) -> optax.GradientTransformation:
        opt_a, opt_c = self._optimizers()[:2]  # type: ignore[attr-defined]
        return {"actor": opt_a, "critic": opt_c}[_known(self, name)]

    def opt_state(self, state: Any, name: str) -> Any:
        return {"actor": state.actor_opt, "critic": state.critic_opt}[_known(self, name)]

    def replace_network(self, state: Any, name: str, model: Any, opt_state: Any) -> Any:
        if _known(self, name) == "actor":
            return eqx.tree_at(lambda s: (s.actor, s.actor_opt), state, (model, opt_state))
        return eqx.tree_at(lambda s: (s.critic, s.critic_opt), state, (model, opt_state))


def _known(agent: Any, name: str) -> str:
    if name not in agent.surgery_networks:
        raise ValueError(
            f"{agent.name} has no network {name!r} for surgery; its networks are "
            f"{', '.join(agent.surgery_networks)}"
        )
    return name
