"""A tiny pure-JAX task with the `envs` contract, for fast tests and smoke runs.

`PointMass`: move a point in the plane towards a random target. Observation (position, target −
position); reward −distance; the episode terminates when the point is within `radius` of the
target and is truncated after `episode_length` steps. SAC solves it in a few thousand steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


class Step(NamedTuple):
    """One vectorised step, as in the `envs` contract."""

    obs: Array
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array
    episode_return: Array
    episode_length: Array


class PointMassState(NamedTuple):
    position: Array
    target: Array
    t: Array
    ret: Array
    key: Array


class PointMass:
    """Reach-the-target task for `num_envs` points; `reward_scale` lets tests inject NaN."""

    observation_size = 4
    action_size = 2

    def __init__(
        self,
        num_envs: int = 1,
        episode_length: int = 50,
        action_repeat: int = 1,
        jittable: bool = True,
        reward_scale: float = 1.0,
        radius: float = 0.05,
        speed: float = 0.1,
    ):
        self.num_envs = num_envs
        self.episode_length = episode_length
        self.action_repeat = action_repeat
        self.jittable = jittable
        self.reward_scale = reward_scale
        self.radius = radius
        self.speed = speed
        if not jittable:  # a host environment: compiled once, called from Python
            self.reset = jax.jit(self.reset)
            self.step = jax.jit(self.step)

    def _fresh(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        k1, k2 = jax.random.split(key)
        pos = jax.random.uniform(k1, (self.num_envs, 2), jnp.float32, -1.0, 1.0)
        target = jax.random.uniform(k2, (self.num_envs, 2), jnp.float32, -1.0, 1.0)
        return pos, target

    @staticmethod
    def _obs(pos: Array, target: Array) -> Array:
        return jnp.concatenate([pos, target - pos], axis=-1)

    def reset(self, key: PRNGKeyArray) -> tuple[PointMassState, Step]:
        key, sub = jax.random.split(key)
        pos, target = self._fresh(sub)
        n = self.num_envs
        zeros, false = jnp.zeros(n, jnp.float32), jnp.zeros(n, bool)
        obs = self._obs(pos, target)
        state = PointMassState(pos, target, jnp.zeros(n, jnp.int32), zeros, key)
        return state, Step(obs, zeros, false, false, obs, zeros, jnp.zeros(n, jnp.int32))

    def step(self, state: PointMassState, action: Array) -> tuple[PointMassState, Step]:
        pos: Array = state.position
        reward: Array = jnp.zeros(self.num_envs, jnp.float32)
        done: Array = jnp.zeros(self.num_envs, bool)
        for _ in range(self.action_repeat):
            moved = pos + self.speed * jnp.clip(action, -1.0, 1.0)
            pos = jnp.where(done[:, None], pos, jnp.clip(moved, -1.5, 1.5))
            dist: Array = jnp.linalg.norm(state.target - pos, axis=-1)
            reward = reward + jnp.where(done, 0.0, -dist * self.reward_scale)
            done = done | (dist < self.radius)
        terminated = done
        t = state.t + 1
        truncated = (t >= self.episode_length) & ~terminated
        ret = state.ret + reward
        final_obs = self._obs(pos, state.target)
        ended = terminated | truncated
        key, sub = jax.random.split(state.key)
        new_pos, new_target = self._fresh(sub)
        pos = jnp.where(ended[:, None], new_pos, pos)
        target = jnp.where(ended[:, None], new_target, state.target)
        obs = self._obs(pos, target)
        next_state = PointMassState(
            pos, target, jnp.where(ended, 0, t), jnp.where(ended, 0.0, ret), key
        )
        return next_state, Step(obs, reward, terminated, truncated, final_obs, ret, t)


def make(name: str, num_envs: int, seed: int = 0, action_repeat: int = 1, episode_length: int = 50):
    """`test/point-mass` (jittable) or `test/point-mass-host` (host loop)."""
    del seed  # episodes are drawn from the reset key
    if name in ("test/point-mass", "test/point-mass-host"):
        return PointMass(
            num_envs, episode_length, action_repeat, jittable=not name.endswith("-host")
        )
    raise ValueError(f"unknown test environment {name!r}")
