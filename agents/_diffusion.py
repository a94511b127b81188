"""Diffusion sampling for DACER: the VP noise schedule, DDPM ancestral steps, a probability-flow ODE.

A noise predictor is any `eps_fn(x, t) -> ε̂` over one action `x` and a float step index `t`
(0 … steps−1, as the denoiser sees it). Step index i stands for continuous time s = (i + 1)/steps
of the VP SDE with β(s) = β_min + s(β_max − β_min); the discrete schedule is that SDE integrated
exactly over each step, so both samplers share one ε̂ and one ᾱ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

EpsFn = Callable[[Array, Array], Array]


class VPSchedule(NamedTuple):
    """Per-step coefficients of the discrete VP schedule (index 0 = least noise)."""

    betas: Float[Array, " T"]
    alpha_bars: Float[Array, " T"]
    alpha_bars_prev: Float[Array, " T"]
    beta_min: float
    beta_max: float

    @property
    def steps(self) -> int:
        return self.betas.shape[0]


def vp_alpha_bar(s: Array, beta_min: float, beta_max: float) -> Array:
    """ᾱ(s) = exp(−∫₀ˢ β), β(s) = β_min + s(β_max − β_min)."""
    return jnp.exp(-(beta_min * s + 0.5 * (beta_max - beta_min) * s**2))


def vp_schedule(steps: int = 20, beta_min: float = 0.1, beta_max: float = 10.0) -> VPSchedule:
    """β_i = 1 − exp(−β_min/T − ½(β_max − β_min)(2i + 1)/T²) for i = 0 … T−1."""
    i = jnp.arange(steps, dtype=jnp.float32)
    T = float(steps)
    betas = 1.0 - jnp.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2.0 * i + 1.0) / T**2)
    alpha_bars = jnp.cumprod(1.0 - betas)
    alpha_bars_prev = jnp.concatenate([jnp.ones(1, jnp.float32), alpha_bars[:-1]])
    return VPSchedule(betas, alpha_bars, alpha_bars_prev, beta_min, beta_max)


def predict_x0(schedule: VPSchedule, x: Array, eps: Array, i: Array, clip: bool = True) -> Array:
    """x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, clipped to [−1, 1] by default."""
    ab = schedule.alpha_bars[i]
    x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def reverse_step(
    schedule: VPSchedule, eps_fn: EpsFn, x: Float[Array, " a"], i: Array,
    noise: Float[Array, " a"], clip: bool = True,
) -> Float[Array, " a"]:  # fmt: skip
    """One DDPM ancestral step x_i → x_{i−1}: posterior mean of q(x_{i−1} | x_i, x̂0) plus noise
    (none at i = 0)."""
    beta, ab, ab_prev = schedule.betas[i], schedule.alpha_bars[i], schedule.alpha_bars_prev[i]
    x0 = predict_x0(schedule, x, eps_fn(x, i.astype(jnp.float32)), i, clip)
    mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) * x) / (1.0 - ab)
    log_var = jnp.log(jnp.maximum(beta * (1.0 - ab_prev) / (1.0 - ab), 1e-20))
    return mean + jnp.where(i > 0, jnp.exp(0.5 * log_var), 0.0) * noise


def ddpm_sample(
    schedule: VPSchedule, eps_fn: EpsFn, x_T: Float[Array, " a"], noise: Float[Array, "T a"],
    clip: bool = True,
) -> Float[Array, " a"]:  # fmt: skip
    """The whole reverse chain from x_T, differentiable end to end; `noise[i]` is step i's draw."""

    def step(x, i):
        return reverse_step(schedule, eps_fn, x, i, noise[i], clip), None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(schedule.steps - 1, -1, -1))
    return jnp.clip(x, -1.0, 1.0) if clip else x


def ode_sample(
    schedule: VPSchedule, eps_fn: EpsFn, x_T: Float[Array, " a"], steps: int = 10,
    clip: bool = True,
) -> Float[Array, " a"]:  # fmt: skip
    """Probability-flow ODE dx/ds = −½β(s)(x − ε̂/√(1−ᾱ(s))) from s = 1 to s = 1/T (Heun, fixed
    steps), then the last step's x̂0 — the deterministic counterpart of `ddpm_sample`. With
    `clip`, ε̂ is replaced along the way by the one implied by the clipped x̂0."""
    T, b0, b1 = schedule.steps, schedule.beta_min, schedule.beta_max

    def drift(s, x, args):
        beta = b0 + s * (b1 - b0)
        ab = vp_alpha_bar(s, b0, b1)
        sigma = jnp.sqrt(1.0 - ab)
        eps = eps_fn(x, s * T - 1.0)
        if clip:  # the ε̂ implied by the clipped x̂0, as in the discrete chain: x stays bounded
            x0 = jnp.clip((x - sigma * eps) / jnp.sqrt(ab), -1.0, 1.0)
            eps = (x - jnp.sqrt(ab) * x0) / sigma
        return -0.5 * beta * (x - eps / sigma)

    s_end = 1.0 / T
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(drift), diffrax.Heun(), t0=1.0, t1=s_end, dt0=-(1.0 - s_end) / steps,
        y0=x_T, saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=steps + 1,
    )  # fmt: skip
    x = sol.ys[-1]
    i0 = jnp.zeros((), jnp.int32)
    return predict_x0(schedule, x, eps_fn(x, jnp.zeros((), jnp.float32)), i0, clip)
