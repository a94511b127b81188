"""The interface every backend implements: the `Step` record, the `Env` base class, checks."""

from __future__ import annotations

import abc
import dataclasses
import difflib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


class Step(eqx.Module):
    """What one call to `reset` or `step` returns, for all `num_envs` environments at once.

    Every field has leading dimension `num_envs`. JAX backends return `jax.Array`s, the dm_control
    backend returns NumPy arrays of the same dtypes. `Step` is a pytree, so it can be carried
    through `jax.lax.scan` or stored in a replay buffer as it is.

    Attributes:
        obs: the observation to act on next. After an automatic reset this is the first
            observation of the new episode.
        reward: the reward of this step, summed over the `action_repeat` simulator steps.
        terminated: the episode ended in a terminal state (do not bootstrap).
        truncated: the episode hit the time limit `episode_length` without terminating
            (bootstrap from `final_obs`). Never true together with `terminated`.
        final_obs: the observation this step reached. Equals `obs` unless the episode ended
            here; then it is the last observation of the finished episode, for bootstrapping.
        episode_return: undiscounted return of the episode so far, this step included. Where
            `terminated | truncated` it is the return of the episode that just ended.
        episode_length: simulator steps taken in the episode so far (the unit of
            `episode_length` in `make`); where the episode ended, its final length.
    """

    obs: Float[Array, "n obs"]
    reward: Float[Array, " n"]
    terminated: Bool[Array, " n"]
    truncated: Bool[Array, " n"]
    final_obs: Float[Array, "n obs"]
    episode_return: Float[Array, " n"]
    episode_length: Int[Array, " n"]


def host_step(**fields: Any) -> Step:
    """A `Step` of host (NumPy) arrays, built without `Step.__init__`.

    Equinox's checking constructor costs about 30 µs per call, more than the rest of a
    dm_control step's work in the calling process; filling the frozen dataclass directly costs
    2 µs. The result is the same pytree (the tests compare it with `Step(**fields)`).
    """
    if fields.keys() != _STEP_FIELDS:
        raise TypeError(f"host_step needs exactly the fields {sorted(_STEP_FIELDS)}")
    step = object.__new__(Step)
    for name, value in fields.items():
        object.__setattr__(step, name, value)
    return step


_STEP_FIELDS = {f.name for f in dataclasses.fields(Step)}


class Env(abc.ABC):
    """A batch of `num_envs` copies of one task behind one interface, whatever the backend.

    Actions are float32 `[num_envs, action_size]` in `[-1, 1]`; values outside are clipped, then
    rescaled to the task's control bounds. Observations are flat float32 vectors. Episodes reset
    automatically: `Step.final_obs` keeps the last observation of a finished episode.

    Attributes:
        name: the full name given to `envs.make`, e.g. `"dmc/cartpole-swingup"`.
        num_envs: how many environments are stepped together.
        observation_size: length of one flat observation.
        action_size: length of one action.
        action_repeat: simulator steps per call to `step`, with the same action.
        episode_length: time limit in simulator steps; reaching it sets `Step.truncated`.
        jittable: whether `reset`/`step` are pure JAX functions (usable under `jax.jit`,
            `jax.vmap` and `jax.lax.scan`). False for host-side backends (dm_control).
    """

    name: str
    num_envs: int
    observation_size: int
    action_size: int
    action_repeat: int
    episode_length: int
    jittable: bool

    @abc.abstractmethod
    def reset(self, key: Any = None) -> tuple[Any, Step]:
        """Start a fresh episode in every environment.

        Args:
            key: a JAX PRNG key; `None` uses `jax.random.key(seed)` with the `seed` given to `make`.

        Returns:
            The backend state and the first `Step` (zero reward, no flags).
        """

    @abc.abstractmethod
    def step(self, state: Any, action: Any) -> tuple[Any, Step]:
        """Apply one action per environment; finished episodes restart automatically."""

    def close(self) -> None:  # noqa: B027 (nothing to release for pure JAX backends)
        """Release backend resources (worker processes for dm_control). Safe to call twice."""

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, num_envs={self.num_envs}, "
            f"observation_size={self.observation_size}, action_size={self.action_size})"
        )


def check_settings(num_envs: int, action_repeat: int, episode_length: int, seed: int = 0) -> None:
    """Reject settings that would silently misbehave (zero or negative counts, floats, a
    fractional seed that would be truncated)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    for label, value in (
        ("num_envs", num_envs),
        ("action_repeat", action_repeat),
        ("episode_length", episode_length),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


def check_action_layout(action: Any, num_envs: int, action_size: int, name: str) -> None:
    """Raise a clear error when an action batch has the wrong shape or dtype.

    Works on concrete arrays and on tracers alike (shape and dtype are static).
    """
    shape = getattr(action, "shape", None)
    dtype = getattr(action, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"{name}: action must be an array of shape ({num_envs}, {action_size}) and dtype "
            f"float32, got {type(action).__name__}"
        )
    if tuple(shape) != (num_envs, action_size):
        raise ValueError(
            f"{name}: action has shape {tuple(shape)}, expected (num_envs, action_size) = "
            f"({num_envs}, {action_size})"
        )
    if np.dtype(dtype) != np.float32:
        raise TypeError(
            f"{name}: action has dtype {np.dtype(dtype)}, expected float32 "
            "(cast with .astype(np.float32) / .astype(jnp.float32))"
        )


def typed_key(key: Any, name: str) -> Any:
    """`key` as a typed JAX PRNG key: typed keys pass, legacy uint32 key data is wrapped, and
    anything else (a plain integer seed, say) is refused with the fix. Works under `jit`."""
    if isinstance(key, bool | int | float | np.integer | np.floating):
        raise TypeError(
            f"{name}: reset takes a JAX PRNG key such as jax.random.key({key!r}), not the number "
            f"{key!r} (or None for the seed given to envs.make)"
        )
    arr = jnp.asarray(key)
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        return arr
    if arr.dtype != jnp.uint32 or arr.ndim < 1:
        raise TypeError(
            f"{name}: reset takes a JAX PRNG key such as jax.random.key(0), got an array of "
            f"dtype {arr.dtype} and shape {tuple(arr.shape)}"
        )
    return jax.random.wrap_key_data(arr)


def unknown_name_error(name: str, valid: list[str]) -> ValueError:
    """A `ValueError` for an unknown environment name that lists the closest valid names."""
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    if not close:
        # Also match the part after the prefix: "cartpole-swingup" → "dmc/cartpole-swingup".
        bare = {v.split("/", 1)[1]: v for v in valid}
        close = [bare[m] for m in difflib.get_close_matches(name, list(bare), n=5, cutoff=0.4)]
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return ValueError(f"Unknown environment {name!r}.{hint} See envs.names() for all of them.")
