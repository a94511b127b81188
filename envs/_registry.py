"""`envs.names()` and `envs.make()`: map a prefixed name to its backend."""

from __future__ import annotations

from typing import Any

from ._core import Env, check_settings, unknown_name_error

_PREFIXES = ("brax", "playground", "dmc", "test")


def names() -> list[str]:
    """All valid environment names: `brax/<name>`, `playground/<Name>`, `dmc/<domain>-<task>`,
    and the two test tasks `test/point-mass` (pure JAX) and `test/point-mass-host`.

    The first call imports the three backends (a few seconds); the list is cached.
    """
    from ._brax import brax_names
    from ._dmc import dmc_names
    from ._playground import playground_names
    from ._testing import NAMES

    return [*brax_names(), *playground_names(), *dmc_names(), *NAMES]


def make(
    name: str,
    num_envs: int = 1,
    seed: int = 0,
    action_repeat: int = 1,
    episode_length: int = 1000,
    **backend_options: Any,
) -> Env:
    """Build `num_envs` copies of the task `name` behind the common `Env` interface.

    Args:
        name: `"brax/<name>"`, `"playground/<Name>"`, `"dmc/<domain>-<task>"`, or
            `"test/point-mass"` (`"test/point-mass-host"`), a tiny task for tests.
        num_envs: environments stepped together; every array has this leading dimension.
        seed: default seed: `reset()` without a key uses `jax.random.key(seed)`.
        action_repeat: simulator steps per `step` call, repeating the action; rewards are summed.
        episode_length: time limit in simulator steps (`Step.truncated` when reached).
        backend_options: per backend. Brax: `backend="mjx"` (or `"generalized"`,
            `"positional"`, `"spring"`) and constructor keywords. Playground: `impl="jax"` (MJX; or
            `"warp"`, MuJoCo Warp, built for GPUs, slow on a CPU) and `config_overrides={...}`. dm_control: `num_workers`
            (default: one per available core, at most `num_envs`), `task_kwargs={...}`,
            `start_timeout` (seconds). JAX backends also take `check_finite=True`.

    Raises:
        ValueError: unknown name (the message lists the closest valid names) or bad settings.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string like 'dmc/cartpole-swingup', got {name!r}")
    check_settings(num_envs, action_repeat, episode_length, seed)
    prefix, _, rest = name.partition("/")
    if prefix not in _PREFIXES or name not in _names_of(prefix):
        raise unknown_name_error(name, names())
    settings = dict(
        num_envs=num_envs, seed=seed, action_repeat=action_repeat, episode_length=episode_length
    )
    if prefix == "brax":
        from ._brax import make_brax

        return make_brax(rest, **settings, **backend_options)
    if prefix == "playground":
        from ._playground import make_playground

        return make_playground(rest, **settings, **backend_options)
    if prefix == "test":
        from ._testing import PointMass

        return PointMass(name, **settings, **backend_options)
    from ._dmc import DmcEnv

    domain, _, task = rest.partition("-")
    return DmcEnv(domain, task, **settings, **backend_options)


def _names_of(prefix: str) -> list[str]:
    if prefix == "brax":
        from ._brax import brax_names

        return brax_names()
    if prefix == "playground":
        from ._playground import playground_names

        return playground_names()
    if prefix == "test":
        from ._testing import NAMES

        return list(NAMES)
    from ._dmc import dmc_names

    return dmc_names()
