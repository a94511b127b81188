"""Replay buffer on device: capacity from the config, circular insertion, uniform sampling."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..algorithms import Batch


class Replay(eqx.Module):
    """Transitions in preallocated arrays; `position` is the next slot, `size` the filled count."""

    data: Batch
    position: Array
    size: Array

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]


def replay_init(capacity: int, obs_size: int, action_size: int) -> Replay:
    z = lambda *shape: jnp.zeros((capacity, *shape), jnp.float32)
    data = Batch(z(obs_size), z(action_size), z(), z(obs_size), z())
    return Replay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def replay_add(replay: Replay, items: Batch) -> Replay:
    """Insert a batch of transitions (leading axis n ≤ capacity), overwriting the oldest."""
    n = items.reward.shape[0]
    idx = (replay.position + jnp.arange(n, dtype=jnp.int32)) % replay.capacity
    data = jax.tree.map(lambda buf, x: buf.at[idx].set(x.astype(buf.dtype)), replay.data, items)
    return Replay(
        data,
        (replay.position + n) % replay.capacity,
        jnp.minimum(replay.size + n, replay.capacity),
    )


def replay_sample(replay: Replay, key: PRNGKeyArray, batch_size: int) -> Batch:
    """Uniform sample with replacement among the filled slots."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return jax.tree.map(lambda buf: buf[idx], replay.data)


def transitions(obs: Float[Array, "n o"], action: Float[Array, "n a"], step) -> Batch:
    """Replay items from one vectorised env step (`step` follows the envs.Step contract)."""
    return Batch(
        obs,
        action,
        step.reward.astype(jnp.float32),
        step.final_obs.astype(jnp.float32),
        step.terminated.astype(jnp.float32),
    )
