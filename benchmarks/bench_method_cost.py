"""What each reset method's step costs inside a jitted BRO critic update, side by side.

Run: `.venv/bin/python benchmarks/bench_method_cost.py [--width W] [--repeats N]`.

The critic is BRO's (BroNet, default width 512, 2 residual blocks, input 67 + 21, 100 quantiles),
trained with Adam on a batch of 256 with the quantile Huber loss. Every variant is one jitted
function `(params, opt_state, batch, count) -> (params, opt_state, loss, figures)`:

* `plain`: the update with `jax.value_and_grad`, no surgery code.
* `observe`: the update through `ns.observe` (activations and per-sample gradients at both
  sites, as a training run records them), no strategy.
* `l2_init`: the plain update with `optax.chain(ns.l2_init(1e-2), adam)`.
* for each strategy preset, `<name> idle` (its schedule not due: what most updates pay) and
  `<name> due` (its schedule due on this update: the reset branch runs), the update going
  through `ns.observe` where the strategy reads the observation and the plain update where it
  does not. `injection` wraps the critic with `ns.injectable` (its last 2 layers), so even the
  idle update computes three heads.

The variants are timed interleaved in random order, and each reported as the median over
repetitions of its ratio to that repetition's `plain` (load from other processes drifts).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neurosurgery as ns
from agents.networks import BroCritic

OBS, ACT, BATCH, QUANTILES = 67, 21, 256, 100
NEVER = 10**8  # an update count no repetition reaches


def quantile_huber(pred: jax.Array, target: jax.Array) -> jax.Array:
    """BRO's critic loss (κ = 1): pred `(batch, Q)` quantiles, target `(batch, Q)` samples."""
    q = pred.shape[-1]
    taus = (jnp.arange(q, dtype=jnp.float32) + 0.5) / q
    diff = target[:, None, :] - pred[:, :, None]
    huber = jnp.where(jnp.abs(diff) <= 1.0, 0.5 * diff**2, jnp.abs(diff) - 0.5)
    weight = jnp.abs(taus[None, :, None] - (diff < 0).astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.mean(weight * huber, axis=-1), axis=-1))


def presets(due: bool) -> dict[str, ns.Strategy]:
    every = 1 if due else NEVER
    return {
        "redo": ns.strategy("redo", every=every),
        "regrama": ns.strategy("regrama", every=every),
        "regrama_weight": ns.strategy("regrama_weight", every=every),
        "shrink_perturb": ns.strategy("shrink_perturb", every=every),
        "full_reset": ns.strategy("full_reset", every=every),
        "cbp": ns.strategy("cbp", every=every, maturity=0, replacement_rate=0.01),
        "reborn": ns.strategy("reborn", every=every),
        "cpr": ns.strategy("cpr", every=every),
        "injection": ns.strategy("injection", at=(1 if due else NEVER,)),
    }


def build(width: int) -> tuple[dict[str, Callable[..., Any]], dict[str, tuple[Any, Any]]]:
    """The jitted variants and, per variant, its starting (params, opt_state)."""

    def make(key: jax.Array) -> BroCritic:
        return BroCritic(OBS, ACT, width=width, blocks=2, n_quantiles=QUANTILES, key=key)

    example = (jnp.zeros(OBS), jnp.zeros(ACT))
    critic = make(jax.random.key(0))
    wrapped = ns.injectable(critic, *example, layers=2)
    make_wrapped = lambda key: ns.injectable(make(key), *example, layers=2)
    opt = optax.adam(1e-3)
    l2 = optax.chain(ns.l2_init(1e-2), optax.adam(1e-3))

    def start(model: Any, optimizer: optax.GradientTransformation) -> tuple[Any, Any]:
        params = eqx.filter(model, eqx.is_array)
        with jax.numpy_dtype_promotion("standard"):
            return params, optimizer.init(params)

    def apply(optimizer, params, opt_state, grads):
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def plain_update(model, optimizer):
        static = eqx.filter(model, eqx.is_array, inverse=True)

        def update(params, opt_state, batch, count):
            obs, act, target = batch
            loss_fn = lambda p: quantile_huber(jax.vmap(eqx.combine(p, static))(obs, act), target)
            loss, grads = jax.value_and_grad(loss_fn)(params)
            return *apply(optimizer, params, opt_state, grads), loss, {}

        return update

    def with_strategy(model, strategy: ns.Strategy | None, init: Callable[..., Any]):
        anatomy = ns.anatomy(model, *example)
        static = eqx.filter(model, eqx.is_array, inverse=True)
        state0 = None if strategy is None else strategy.init(anatomy)

        def update(params, opt_state, batch, count):
            obs, act, target = batch
            net = eqx.combine(params, static)
            if strategy is None or strategy.observes:
                loss, ob = ns.observe(anatomy, net, lambda q: quantile_huber(q, target), obs, act)
                grads = ob.weight_grads
            else:
                loss_fn = lambda p: quantile_huber(
                    jax.vmap(eqx.combine(p, static))(obs, act), target
                )
                (loss, grads), ob = jax.value_and_grad(loss_fn)(params), None
            params, opt_state = apply(opt, params, opt_state, grads)
            if strategy is None:
                return params, opt_state, loss, {}
            result = strategy.step(
                anatomy,
                eqx.combine(params, static),
                ob,
                state0,
                jax.random.key(7),
                count,
                init=init,
                optimizer=opt,
                opt_state=opt_state,
            )
            return eqx.filter(result.model, eqx.is_array), result.opt_state, loss, result.info

        return update

    fns: dict[str, Callable[..., Any]] = {
        "plain": plain_update(critic, opt),
        "observe": with_strategy(critic, None, make),
        "l2_init": plain_update(critic, l2),
    }
    starts = {
        "plain": start(critic, opt),
        "observe": start(critic, opt),
        "l2_init": start(critic, l2),
    }
    for due in (False, True):
        for name, strategy in presets(due).items():
            label = f"{name} {'due' if due else 'idle'}"
            model, init = (wrapped, make_wrapped) if name == "injection" else (critic, make)
            fns[label] = with_strategy(model, strategy, init)
            starts[label] = start(model, opt)
    return {k: jax.jit(f) for k, f in fns.items()}, starts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3, help="updates per timing sample")
    args = parser.parse_args()
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    batch = (
        jax.random.normal(k1, (BATCH, OBS)),
        jax.random.normal(k2, (BATCH, ACT)),
        jax.random.normal(k3, (BATCH, QUANTILES)),
    )
    count = jnp.asarray(1, jnp.int32)
    fns, starts = build(args.width)
    compile_s = {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(*starts[name], batch, count))
        compile_s[name] = time.perf_counter() - t0
        jax.block_until_ready(f(*starts[name], batch, count))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                jax.block_until_ready(fns[name](*starts[name], batch, count))
            times[name].append((time.perf_counter() - t0) / args.calls)
    base = times["plain"]
    print(
        f"BRO critic: width {args.width}, 2 blocks, input {OBS}+{ACT}, {QUANTILES} quantiles, "
        f"batch {BATCH}, Adam; {args.repeats} interleaved repetitions of {args.calls} updates; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs visible, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<22}{'median ms':>10}{'vs plain':>10}{'first call s':>14}")
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
        print(
            f"{name:<22}{1e3 * statistics.median(t):>10.2f}{ratio:>9.2f}×{compile_s[name]:>14.1f}"
        )


if __name__ == "__main__":
    main()
