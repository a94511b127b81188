"""`test/point-mass`: a tiny pure-JAX task with the `Env` contract, for fast tests and smoke runs.

Move a point in the plane towards a random target. Observation (position, target − position);
reward −distance; the episode terminates when the point is within `radius` of the target and is
truncated after `episode_length` steps. SAC solves it in a few thousand steps.
`test/point-mass-host` is the same task stepped from the host (not jittable), like dm_control.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._core import Env, Step, typed_key

NAMES = ("test/point-mass", "test/point-mass-host")


class PointMassState(NamedTuple):
    position: Array
    target: Array
    t: Array
    ret: Array
    key: Array


class PointMass(Env):
    """Reach-the-target task for `num_envs` points."""

    observation_size = 4
    action_size = 2

    def __init__(
        self,
        name: str,
        num_envs: int,
        seed: int,
        action_repeat: int,
        episode_length: int,
        radius: float = 0.05,
        speed: float = 0.1,
    ):
        self.name = name
        self.num_envs = num_envs
        self.seed = seed
        self.action_repeat = action_repeat
        self.episode_length = episode_length
        self.jittable = not name.endswith("-host")
        self.radius = radius
        self.speed = speed
        if not self.jittable:  # a host environment: compiled once, called from Python
            self.reset = jax.jit(self.reset)  # type: ignore[method-assign]
            self.step = jax.jit(self.step)  # type: ignore[method-assign]

    def _fresh(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        k1, k2 = jax.random.split(key)
        pos = jax.random.uniform(k1, (self.num_envs, 2), jnp.float32, -1.0, 1.0)
        target = jax.random.uniform(k2, (self.num_envs, 2), jnp.float32, -1.0, 1.0)
        return pos, target

    @staticmethod
    def _obs(pos: Array, target: Array) -> Array:
        return jnp.concatenate([pos, target - pos], axis=-1)

    def reset(self, key: Any = None) -> tuple[PointMassState, Step]:
        key = jax.random.key(self.seed) if key is None else typed_key(key, self.name)
        key, sub = jax.random.split(key)
        pos, target = self._fresh(sub)
        n = self.num_envs
        zeros, false = jnp.zeros(n, jnp.float32), jnp.zeros(n, bool)
        obs = self._obs(pos, target)
        state = PointMassState(pos, target, jnp.zeros(n, jnp.int32), zeros, key)
        return state, Step(obs, zeros, false, false, obs, zeros, jnp.zeros(n, jnp.int32))

    def step(self, state: PointMassState, action: Any) -> tuple[PointMassState, Step]:
        pos: Array = state.position
        reward: Array = jnp.zeros(self.num_envs, jnp.float32)
        done: Array = jnp.zeros(self.num_envs, bool)
        for _ in range(self.action_repeat):
            moved = pos + self.speed * jnp.clip(action, -1.0, 1.0)
            pos = jnp.where(done[:, None], pos, jnp.clip(moved, -1.5, 1.5))
            dist: Array = jnp.linalg.norm(state.target - pos, axis=-1)
            reward = reward + jnp.where(done, 0.0, -dist)
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
