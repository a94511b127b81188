"""A compact compiled training loop for the BRO and DACER learning checks on the point-mass task.

Acting, replay insertion, the agent's updates and its scheduled events (`agent.scheduled`, with the
update count unbatched) run in one `lax.scan` per evaluation interval. Returns the curve of
deterministic evaluation returns.
"""

from __future__ import annotations

import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import envs
from agents.training._replay import replay_add, replay_init, replay_sample, transitions


def train(
    agent: Any,
    steps: int,
    *,
    updates_per_step: int = 1,
    learning_starts: int = 1000,
    eval_every: int = 1000,
    eval_episodes: int = 16,
    seed: int = 0,
    buffer: int = 100_000,
) -> list[tuple[int, float, float]]:
    """Train on `test/point-mass` (one env); returns [(env steps, eval return, wall s)]."""
    env = envs.make("test/point-mass", num_envs=1, episode_length=50)
    eval_env = envs.make("test/point-mass", num_envs=eval_episodes, episode_length=50)
    cycle = agent.update_cycle
    # env steps per body so that the updates of a body fill whole cycles
    per_body = max(1, cycle // updates_per_step)
    updates = per_body * updates_per_step
    if updates % cycle:
        raise ValueError("updates_per_step must divide or be a multiple of the update cycle")
    key = jax.random.key(seed)
    k_agent, k_env, key = jax.random.split(key, 3)
    env_state, step = env.reset(k_env)
    carry0 = (agent.init(k_agent), replay_init(buffer, 4, 2), env_state, step.obs, key)

    def env_step(carry, random: bool):
        state, replay, env_state, obs, key = carry
        key, k = jax.random.split(key)
        if random:
            action = jax.random.uniform(k, (1, 2), jnp.float32, -1.0, 1.0)
        else:
            action = agent.act(state, obs, k, False)
        env_state, step = env.step(env_state, action)
        replay = replay_add(replay, transitions(obs, action, step))
        return (state, replay, env_state, step.obs, key)

    def body(carry, u):
        for _ in range(per_body):
            carry = env_step(carry, False)
        state, replay, env_state, obs, key = carry
        for i in range(updates):
            key, k_batch, k_update = jax.random.split(key, 3)
            batch = replay_sample(replay, k_batch, agent.config.batch_size)
            state, _metrics = agent.update(state, batch, k_update, i % cycle)
            if i % cycle == cycle - 1:
                key, k_batch, k_s = jax.random.split(key, 3)
                batch = replay_sample(replay, k_batch, agent.config.batch_size)
                done = u + i + 1
                state, _ = agent.scheduled(state, batch, k_s, done)
        return (state, replay, env_state, obs, key), None

    @eqx.filter_jit
    def chunk(carry, u0):
        bodies = eval_every // per_body
        us = u0 + updates * jnp.arange(bodies, dtype=jnp.int32)
        return jax.lax.scan(body, carry, us)[0]

    @eqx.filter_jit
    def warmup(carry):
        return jax.lax.scan(lambda c, _: (env_step(c, True), None), carry, None, learning_starts)[0]

    @eqx.filter_jit
    def evaluate(state, key):
        env_state, step = eval_env.reset(key)

        def one(c, _):
            env_state, obs, done, ret = c
            action = agent.act(state, obs, key, True)
            env_state, step = eval_env.step(env_state, action)
            ended = (step.terminated | step.truncated) & ~done
            ret = jnp.where(ended, step.episode_return, ret)
            return (env_state, step.obs, done | ended, ret), None

        n = eval_episodes
        c = (env_state, step.obs, jnp.zeros(n, bool), jnp.zeros(n, jnp.float32))
        (_, _, done, ret), _ = jax.lax.scan(one, c, None, env.episode_length + 1)
        return jnp.sum(jnp.where(done, ret, 0.0)) / jnp.maximum(jnp.sum(done), 1)

    t0 = time.perf_counter()
    carry = warmup(carry0)
    curve = [(0, float(evaluate(carry[0], jax.random.key(10_000))), time.perf_counter() - t0)]
    print(f"{0:>7d} steps  eval return {curve[-1][1]:8.2f}  ({curve[-1][2]:.0f} s)", flush=True)
    env_steps, u = learning_starts, 0
    while env_steps < steps:
        carry = chunk(carry, jnp.int32(u))
        env_steps += (eval_every // per_body) * per_body
        u += (eval_every // per_body) * updates
        ret = float(evaluate(carry[0], jax.random.key(10_000 + env_steps)))
        curve.append((env_steps, ret, time.perf_counter() - t0))
        print(f"{env_steps:>7d} steps  eval return {ret:8.2f}  ({curve[-1][2]:.0f} s)", flush=True)
    return curve
