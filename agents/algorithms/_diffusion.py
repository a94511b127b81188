"""Diffusion sampling for DACER: the VP noise schedule, DDPM ancestral steps, a probability-flow ODE.

A noise predictor is any `eps_fn(x, t) -> ε̂` over one action `x` and a float step index `t`
(0 … steps−1, as the denoiser sees it). Step index i stands for continuous time s = (i + 1)/steps
of the VP SDE with β(s) = β_min + s(β_max − β_min); the discrete schedule is that SDE integrated
exactly over each step, so both samplers share one ε̂ and one ᾱ.

Both samplers end with the posterior mean x̂0 = E[x0 | x at s = 1/T], which is narrower than the
data: for data N(0.2, 0.4²) and T = 20, its std is 0.380 even from the exact marginal. The DDPM
chain with the posterior variance β̃ (DACER's choice) narrows further with few steps (std 0.322 at
T = 20, 0.377 at T = 100); with β it is slightly wider (0.416, 0.405). These are the values of
the chain with the exact noise predictor, propagated in closed form (`tests/test_dacer.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

EpsFn = Callable[[Array, Array], Array]
#: variances of a DDPM step: the posterior's β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t), or β_t
VARIANCES = ("posterior", "beta")


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
    schedule: VPSchedule,
    eps_fn: EpsFn,
    x: Float[Array, " a"],
    i: Array,
    noise: Float[Array, " a"],
    clip: bool = True,
    variance: str = "posterior",
) -> Float[Array, " a"]:
    """One DDPM ancestral step x_i → x_{i−1}: posterior mean of q(x_{i−1} | x_i, x̂0) plus noise
    of variance β̃_i (`posterior`) or β_i (`beta`); none at i = 0."""
    beta, ab, ab_prev = schedule.betas[i], schedule.alpha_bars[i], schedule.alpha_bars_prev[i]
    x0 = predict_x0(schedule, x, eps_fn(x, i.astype(jnp.float32)), i, clip)
    mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) * x) / (1.0 - ab)
    if variance == "beta":
        var = beta
    elif variance == "posterior":
        var = beta * (1.0 - ab_prev) / (1.0 - ab)
    else:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    log_var = jnp.log(jnp.maximum(var, 1e-20))
    return mean + jnp.where(i > 0, jnp.exp(0.5 * log_var), 0.0) * noise


def ddpm_sample(
    schedule: VPSchedule,
    eps_fn: EpsFn,
    x_T: Float[Array, " a"],
    noise: Float[Array, "T a"],
    clip: bool = True,
    variance: str = "posterior",
) -> Float[Array, " a"]:
    """The whole reverse chain from x_T, differentiable end to end; `noise[i]` is step i's draw."""
    calls = lambda x, t, j: eps_fn(x, t)
    return ddpm_sample_calls(schedule, calls, x_T, noise, clip, variance)[0]


def ddpm_sample_calls(
    schedule: VPSchedule,
    eps_fn: Callable[[Array, Array, Array], Array],
    x_T: Float[Array, " a"],
    noise: Float[Array, "T a"],
    clip: bool = True,
    variance: str = "posterior",
) -> tuple[Float[Array, " a"], Float[Array, "T a"], Float[Array, " T"]]:
    """`ddpm_sample`, also returning the input x and step index t of each of its T noise
    predictions, in call order. `eps_fn(x, t, j)` also gets the call's position j (0 … T−1),
    so that a caller can tell the calls apart (e.g. to differentiate by call)."""
    steps = jnp.arange(schedule.steps - 1, -1, -1)

    def step(x, j):
        i = steps[j]
        eps_at = lambda x, t: eps_fn(x, t, j)
        return reverse_step(schedule, eps_at, x, i, noise[i], clip, variance), x

    x, xs = jax.lax.scan(step, x_T, jnp.arange(schedule.steps))
    return (jnp.clip(x, -1.0, 1.0) if clip else x), xs, steps.astype(x.dtype)


def flow_drift(schedule: VPSchedule, eps: Array, x: Array, s: Array, clip: bool = True) -> Array:
    """dx/ds of the probability-flow ODE, −½β(s)(x − ε̂/√(1−ᾱ(s))), given the noise prediction
    ε̂ at (x, s). With `clip`, ε̂ is replaced by the one implied by the clipped x̂0, as in the
    discrete chain, so that x stays bounded."""
    b0, b1 = schedule.beta_min, schedule.beta_max
    beta = b0 + s * (b1 - b0)
    ab = vp_alpha_bar(s, b0, b1)
    sigma = jnp.sqrt(1.0 - ab)
    if clip:
        x0 = jnp.clip((x - sigma * eps) / jnp.sqrt(ab), -1.0, 1.0)
        eps = (x - jnp.sqrt(ab) * x0) / sigma
    return -0.5 * beta * (x - eps / sigma)


def ode_sample(
    schedule: VPSchedule,
    eps_fn: EpsFn,
    x_T: Float[Array, " a"],
    steps: int = 10,
    clip: bool = True,
) -> Float[Array, " a"]:
    """Probability-flow ODE dx/ds = −½β(s)(x − ε̂/√(1−ᾱ(s))) from s = 1 to s = 1/T, solved with
    diffrax (Heun, fixed steps), then the last step's x̂0 — the deterministic counterpart of
    `ddpm_sample`. See `flow_drift` for `clip`."""
    T = schedule.steps

    def drift(s, x, args):
        return flow_drift(schedule, eps_fn(x, s * T - 1.0), x, s, clip)

    s_end = 1.0 / T
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(drift),
        diffrax.Heun(),
        t0=1.0,
        t1=s_end,
        dt0=-(1.0 - s_end) / steps,
        y0=x_T,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=steps + 1,
    )
    assert sol.ys is not None  # SaveAt(t1=True) saves the end point
    x = sol.ys[-1]
    i0 = jnp.zeros((), jnp.int32)
    return predict_x0(schedule, x, eps_fn(x, jnp.zeros((), jnp.float32)), i0, clip)


def ode_sample_calls(
    schedule: VPSchedule,
    eps_fn: Callable[[Array, Array, Array], Array],
    x_T: Float[Array, " a"],
    steps: int = 10,
    clip: bool = True,
) -> tuple[Float[Array, " a"], Float[Array, "n a"], Float[Array, " n"]]:
    """`ode_sample` with its Heun steps written out: the output, and the input x and step index t
    of each of its 2·steps + 1 noise predictions, in call order. `eps_fn(x, t, j)` also gets the
    call's position j, so that a caller can tell the calls apart (e.g. to differentiate by call).

    The same arithmetic as the diffrax solve (y + h/2·(f(s, y) + f(s + h, y + h·f(s, y)))), up to
    rounding; `tests/test_dacer.py` compares the two.
    """
    T = schedule.steps
    s_end = 1.0 / T
    h = -(1.0 - s_end) / steps

    def f(s, x, j):
        return flow_drift(schedule, eps_fn(x, s * T - 1.0, j), x, s, clip)

    def step(x, k):
        s = 1.0 + k.astype(x.dtype) * h
        k1 = f(s, x, 2 * k)
        x2 = x + h * k1
        k2 = f(s + h, x2, 2 * k + 1)
        return x + 0.5 * h * (k1 + k2), (jnp.stack([x, x2]), jnp.stack([s, s + h]) * T - 1.0)

    x, (xs, ts) = jax.lax.scan(step, x_T, jnp.arange(steps))
    t0 = jnp.zeros((), x.dtype)
    last = jnp.asarray(2 * steps)
    out = predict_x0(schedule, x, eps_fn(x, t0, last), jnp.zeros((), jnp.int32), clip)
    xs = jnp.concatenate([xs.reshape(2 * steps, -1), x[None]])
    ts = jnp.concatenate([ts.reshape(2 * steps), t0[None]])
    return out, xs, ts
