"""Host environments (dm_control) stepped from inside the trainer's compiled program.

Before, a host environment's segment was a Python loop with one compiled call per vectorised env
step, which carried the whole training state in and out (hundreds of arrays) and ran the update
cycle as its own program: on 2 CPU cores that cost 1 ms of a 5 ms SAC env step and 6 ms of a
39 ms BRO one. Here the env step is a callback inside the program (`jax.pure_callback`, once
for all seeds), so a piece of many bodies is one call and the updates run as they do in a JAX
task's scan. The order of the operations, and so the trajectory, is the host loop's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs import Step, host_step

_DTYPES = {
    "obs": np.float32,
    "reward": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "final_obs": np.float32,
    "episode_return": np.float32,
    "episode_length": np.int32,
}


def step_all(envs: Sequence[Any], states: Sequence[Any], actions: np.ndarray) -> list:
    """Step each seed's host environment with its actions. Worker pools (`step_async`) are all
    started before any is awaited, so the seeds' environments step side by side."""
    pooled = [hasattr(e, "step_async") for e in envs]
    for e, s, a, p in zip(envs, states, actions, pooled, strict=True):
        if p:
            e.step_async(s, a)
    return [
        e.step_wait() if p else e.step(s, a)
        for e, s, a, p in zip(envs, states, actions, pooled, strict=True)
    ]


class HostEnvs:
    """The seeds' host environments (one per seed, in seed order) behind a jittable `step`.

    `step(None, action)` inside a program vmapped over the seeds calls back once per env step
    with every seed's actions (`vmap_method="expand_dims"`); without a seed axis (a one-seed
    run), with that seed's. The environments' own states stay here (`states`, set by the
    trainer at reset and restore); the program carries None in their place. An exception raised
    while stepping (a worker that died, a NaN action) is kept in `error` so that the trainer can
    raise it as itself rather than as the runtime's wrapper of it.
    """

    jittable = True

    def __init__(self, envs: Sequence[Any]):
        self.envs = list(envs)
        first = self.envs[0]
        self.name = first.name
        self.num_envs = first.num_envs
        self.observation_size = first.observation_size
        self.action_size = first.action_size
        self.states: list[Any] = []
        self.error: BaseException | None = None

    def _shapes(self) -> Step:
        """One seed's step (vmap adds the seed axis)."""
        n, o = self.num_envs, self.observation_size
        shape = {"obs": (n, o), "final_obs": (n, o)}
        return host_step(
            **{k: jax.ShapeDtypeStruct(shape.get(k, (n,)), dt) for k, dt in _DTYPES.items()}
        )

    def _step(self, actions: np.ndarray) -> Step:
        try:
            one = actions.ndim == 2  # a one-seed run: no seed axis
            outs = step_all(self.envs, self.states, actions[None] if one else actions)
            self.states = [o[0] for o in outs]
            fields = {
                k: np.stack([np.asarray(getattr(o[1], k), dt) for o in outs])
                for k, dt in _DTYPES.items()
            }
            return host_step(**{k: v[0] if one else v for k, v in fields.items()})
        except BaseException as err:
            self.error = err
            raise

    def step(self, state: None, action: jax.Array) -> tuple[None, Step]:
        # pure_callback (not io_callback): each step's actions depend on the previous step's
        # observations, so the calls run once each and in order, and vmap batches them
        step = jax.pure_callback(
            self._step, self._shapes(), action.astype(jnp.float32), vmap_method="expand_dims"
        )
        return None, step
