"""Brax environments (`brax/<name>`), on Brax's MJX pipeline by default."""

from __future__ import annotations

import functools
import warnings
from typing import Any

from ._jax import JaxEnv, from_mujoco

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
        env = brax_envs.get_environment(name, backend=backend, **env_kwargs)
    return from_mujoco(
        f"brax/{name}",
        env,
        env.sys.mj_model,
        num_envs=num_envs,
        seed=seed,
        action_repeat=action_repeat,
        episode_length=episode_length,
        check_finite=check_finite,
    )
