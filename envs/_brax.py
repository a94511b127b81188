"""Brax environments (`brax/<name>`), on Brax's MJX pipeline by default."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from ._jax import JaxEnv, observation_size_of, single_state_shapes

# Brax's registry also holds "fast", a test double without physics; it is not a task.
_SKIP = frozenset({"fast"})


@functools.cache
def brax_names() -> list[str]:
    """Names of the Brax environments, as `brax/<name>`."""
    from brax import envs as brax_envs

    return [f"brax/{n}" for n in sorted(brax_envs._envs) if n not in _SKIP]


def make_brax(
    name: str,
    *,
    num_envs: int,
    seed: int,
    action_repeat: int,
    episode_length: int,
    backend: str = "mjx",
    check_finite: bool = True,
    **env_kwargs: Any,
) -> JaxEnv:
    """Build a batched Brax environment.

    Actions reach Brax's `step` as they are (clipped to [-1, 1]): Brax's own convention is
    actions in [-1, 1], and its tasks whose actuators have other ranges (inverted_pendulum
    [-3, 3], pusher [-2, 2], humanoid and humanoidstandup [-0.4, 0.4]) map [-1, 1] to them
    inside their `step`; every other Brax task's actuators take [-1, 1].

    Args:
        name: the Brax name without prefix, e.g. `"halfcheetah"`.
        backend: Brax physics pipeline: `"mjx"` (default), `"generalized"`, `"positional"` or
            `"spring"`.
        env_kwargs: passed to the Brax environment's constructor (e.g. `ctrl_cost_weight`).
    """
    from brax import envs as brax_envs

    with warnings.catch_warnings():
        # Brax prints a "not actively maintained" notice on every system load.
        warnings.filterwarnings("ignore", message=".*not actively being maintained.*")
        try:
            env = brax_envs.get_environment(name, backend=backend, **env_kwargs)
        except ValueError as err:
            if "backend" not in str(err).lower():
                raise
            raise ValueError(
                f"brax/{name} is not available on Brax's {backend!r} backend ({err}); pass "
                "backend='generalized' (or 'positional', 'spring') to envs.make"
            ) from err
    identity = np.tile(np.asarray([-1.0, 1.0], np.float32), (env.action_size, 1))
    shapes = single_state_shapes(env.reset)
    return JaxEnv(
        f"brax/{name}",
        env.reset,
        env.step,
        identity,
        observation_size_of(shapes),
        num_envs=num_envs,
        seed=seed,
        action_repeat=action_repeat,
        episode_length=episode_length,
        check_finite=check_finite,
        single_state=shapes,
    )
