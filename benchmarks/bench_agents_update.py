"""Updates per second of BRO (full update at critic width 512, and the critic update alone) and of
DACER's actor update through its 20-step reverse chain, on the default device.

BRO at replay ratio 2 runs two of these updates per env step; its env-steps/s bound is half the
figure. Compile time is reported apart.

    python benchmarks/bench_agents_update.py [--iters 20] [--bro-width 512]
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from agents import BRO, DACER, Batch, BROConfig, DACERConfig
from agents.algorithms._steps import critic_step, objective_step


def batch(key, size: int, obs: int, act: int) -> Batch:
    k = jax.random.split(key, 4)
    return Batch(
        jax.random.normal(k[0], (size, obs)),
        jnp.tanh(jax.random.normal(k[1], (size, act))),
        jax.random.normal(k[2], (size,)),
        jax.random.normal(k[3], (size, obs)),
        jnp.zeros(size),
    )


def timed(name: str, fn, state, iters: int, per_call: int = 1) -> None:
    """Compile `fn(state, key) -> state` (`per_call` updates), then time `iters` chained calls."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(state, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    state = compiled(state, jax.random.key(1))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(iters):
        state = compiled(state, jax.random.key(i + 2))
    jax.block_until_ready(state)
    rate = iters * per_call / (time.perf_counter() - t0)
    print(f"{name:<44s} {rate:9.1f} updates/s   (compile {compile_s:.1f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--bro-width", type=int, default=512)
    p.add_argument("--obs", type=int, default=24)
    p.add_argument("--act", type=int, default=6)
    args = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind}, obs {args.obs}, actions {args.act}")
    o, a = args.obs, args.act

    bro = BRO(BROConfig(critic_width=args.bro_width), o, a)
    b = batch(jax.random.key(0), bro.config.batch_size, o, a)
    state = jax.jit(bro.init)(jax.random.key(0))
    opt_c = bro._optimizers()[1]

    def critic_only(s, key):
        return critic_step(opt_c, bro.critic_objective(s, b, key), s)[0]

    width = f"width {args.bro_width}, 100 quantiles, batch 128"
    timed(f"BRO critic update ({width})", critic_only, state, args.iters)
    timed(
        "BRO full update (critics, both actors, α, β, λ)",
        lambda s, k: bro.update(s, b, k, 0)[0],
        state,
        args.iters,
    )

    dacer = DACER(DACERConfig(), o, a)
    b = batch(jax.random.key(1), dacer.config.batch_size, o, a)
    state = jax.jit(dacer.init)(jax.random.key(0))
    opt_a = dacer._optimizers()[0]

    def actor_only(s, key):
        actor, opt, _, _ = objective_step(opt_a, dacer.actor_objective(s, b, key), s.actor_opt)
        return eqx.tree_at(lambda t: (t.actor, t.actor_opt), s, (actor, opt))

    timed("DACER actor update (20-step chain, batch 256)", actor_only, state, args.iters)

    def cycle(s, key):
        k0, k1 = jax.random.split(key)
        s = dacer.update(s, b, k0, 0)[0]
        return dacer.update(s, b, k1, 1)[0]

    timed("DACER updates (cycle: 2 critic + 1 actor)", cycle, state, max(1, args.iters // 2), 2)


if __name__ == "__main__":
    main()
