"""MuJoCo Playground's DM Control Suite ports (`playground/<Name>`), MJX (`impl="jax"`) by default.

Playground 0.2.0 defaults to the `warp` implementation (MuJoCo Warp), built for GPUs: on a CPU
it runs through Warp's CPU device, 34-450x slower than MJX. Here the default is `impl="jax"`
(MJX), fast on any device; pass `impl="warp"` to `envs.make` to select warp.
"""

from __future__ import annotations

import functools
from typing import Any

from ._jax import JaxEnv, from_mujoco

PLAYGROUND_IMPLS = ("jax", "warp")  # Playground's physics implementations: MJX, MuJoCo Warp


@functools.cache
def playground_names() -> list[str]:
    """Names of the Playground DM Control Suite tasks, as `playground/<Name>`."""
    from mujoco_playground import dm_control_suite

    return [f"playground/{n}" for n in dm_control_suite.ALL_ENVS]


def make_playground(
    name: str,
    *,
    num_envs: int,
    seed: int,
    action_repeat: int,
    episode_length: int,
    impl: str = "jax",
    config_overrides: dict[str, Any] | None = None,
    check_finite: bool = True,
) -> JaxEnv:
    """Build a batched Playground DM Control Suite task.

    Args:
        name: the Playground name without prefix, e.g. `"CartpoleSwingup"`.
        impl: physics implementation: `"jax"` (MJX, default, any device) or `"warp"` (MuJoCo
            Warp, for GPUs).
        config_overrides: further entries of the task's Playground config (e.g. `ctrl_dt`).
            Playground's own `episode_length` and `action_repeat` are not used: this wrapper
            applies its own time limit and action repeat.
    """
    from mujoco_playground import registry

    if impl not in PLAYGROUND_IMPLS:
        raise ValueError(
            f"playground/{name}: impl must be one of {', '.join(map(repr, PLAYGROUND_IMPLS))} "
            f"(MJX on any device, or MuJoCo Warp), got {impl!r}"
        )
    overrides = {"impl": impl, **(config_overrides or {})}
    env = registry.load(name, config_overrides=overrides)
    return from_mujoco(
        f"playground/{name}",
        env,
        env.mj_model,
        num_envs=num_envs,
        seed=seed,
        action_repeat=action_repeat,
        episode_length=episode_length,
        check_finite=check_finite,
    )
