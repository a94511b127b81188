"""A batched, auto-resetting wrapper around any single-environment JAX simulator.

Brax and MuJoCo Playground environments both expose `reset(key) -> state` and
`step(state, ctrl) -> state` for one environment, where `state.obs`, `state.reward` and
`state.done` are scalars or vectors. `JaxEnv` vmaps them over `num_envs`, repeats actions, counts
episode length and return, splits time limits (truncation) from terminal states (termination)
and resets finished environments in place, all as pure functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._core import Env, Step, check_action_layout, check_settings, typed_key


class JaxState(eqx.Module):
    """The state of a batch of JAX environments: a pytree, safe to carry through `lax.scan`.

    Attributes:
        inner: the backend's own state, batched over `num_envs` (Brax `State` or Playground
            `State`); leaves that a backend keeps once for all environments (MJX-warp's contact
            buffers and counters) are not batched.
        key: one PRNG key per environment, consumed by automatic resets.
        episode_return: return of the running episode of each environment.
        episode_length: simulator steps of the running episode of each environment.
    """

    inner: Any
    key: PRNGKeyArray
    episode_return: Float[Array, " n"]
    episode_length: Int[Array, " n"]


def _where(mask: jax.Array, on_true: Any, on_false: Any, per_env: Any) -> Any:
    """Pick per environment between two batched pytrees (mask has shape `[n]`). Leaves that
    `per_env` marks False are shared by all environments and kept from `on_false`."""

    def pick(a: jax.Array, b: jax.Array, batched: bool) -> jax.Array:
        if not batched:
            return b
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, on_true, on_false, per_env)


def single_state_shapes(reset_fn: Callable[[jax.Array], Any]) -> Any:
    """Shapes and dtypes of a single-environment `reset`'s state, found by tracing only."""
    with jax.numpy_dtype_promotion("standard"):
        return jax.eval_shape(reset_fn, jax.random.key_data(jax.random.key(0)))


def observation_size_of(shapes: Any) -> int:
    """Length of the flat observation in a single environment's `single_state_shapes`."""
    obs = shapes.obs
    if not hasattr(obs, "shape"):
        raise TypeError(f"expected flat array observations, got {type(obs).__name__}")
    return int(np.prod(obs.shape))


def from_mujoco(name: str, env: Any, mj_model: Any, **options: Any) -> JaxEnv:
    """A `JaxEnv` over an MJX-based environment (Brax or Playground) with `reset`/`step`.

    Actions are rescaled to the actuators' control ranges (unlimited actuators get [0, 0], as
    MuJoCo ignores their range); `options` are `JaxEnv`'s keyword arguments.
    """
    ctrl_range = np.where(
        mj_model.actuator_ctrllimited[:, None].astype(bool), mj_model.actuator_ctrlrange, 0.0
    )
    shapes = single_state_shapes(env.reset)
    size = observation_size_of(shapes)
    return JaxEnv(name, env.reset, env.step, ctrl_range, size, single_state=shapes, **options)


class JaxEnv(Env):
    """`num_envs` copies of a JAX simulator task with pure, jittable `reset` and `step`.

    `reset` and `step` can be called eagerly (compiled on first use) or from inside the
    caller's own `jit`, `vmap` or `lax.scan` (they are then inlined).
    The state is a `JaxState` pytree; nothing is kept on the `JaxEnv` object between calls.

    `reset` and `step` are compiled with `equinox.filter_jit`. Non-finite actions raise an
    `equinox` runtime error (a `RuntimeError`) when the step executes (inside the caller's own
    `jax.jit` it surfaces as XLA's callback error); because the functions are pure, the state
    passed in stays valid and usable. Pass `check_finite=False` to `make` to drop the check.

    Backend functions are traced under standard dtype promotion (MJX needs it), whatever the
    caller's `jax_numpy_dtype_promotion` setting. `single_state` (optional): the shapes of one
    environment's backend state, `single_state_shapes(reset_fn)`; they tell per-environment
    leaves of the batched state from shared ones, and are traced when first needed if not given.
    """

    jittable = True

    def __init__(
        self,
        name: str,
        reset_fn: Callable[[jax.Array], Any],
        step_fn: Callable[[Any, jax.Array], Any],
        ctrl_range: np.ndarray,
        observation_size: int,
        *,
        num_envs: int,
        seed: int,
        action_repeat: int,
        episode_length: int,
        check_finite: bool = True,
        single_state: Any = None,
    ):
        check_settings(num_envs, action_repeat, episode_length, seed)
        self.name = name
        self.num_envs = int(num_envs)
        self.seed = int(seed)
        self.action_repeat = int(action_repeat)
        self.episode_length = int(episode_length)
        self.observation_size = int(observation_size)
        self.action_size = int(ctrl_range.shape[0])
        self.check_finite = bool(check_finite)
        self._reset_one = reset_fn
        self._step_one = step_fn
        self._single_state = single_state  # traced when first needed if not given
        low, high = np.asarray(ctrl_range, dtype=np.float32).T
        unbounded = ~(high > low)  # actuators without limits take the action as it is
        self._low = np.where(unbounded, np.float32(-1), low).astype(np.float32)
        self._high = np.where(unbounded, np.float32(1), high).astype(np.float32)
        self._reset_jit = eqx.filter_jit(self._reset_impl)
        self._step_jit = eqx.filter_jit(self._step_impl)

    # ----------------------------------------------------------------- public API
    def reset(self, key: Any = None) -> tuple[JaxState, Step]:
        if key is None:
            key = jax.random.key(self.seed)
        return self._reset_jit(typed_key(key, self.name))

    def step(self, state: JaxState, action: Float[Array, "n act"]) -> tuple[JaxState, Step]:
        check_action_layout(action, self.num_envs, self.action_size, self.name)
        return self._step_jit(state, action)

    # ----------------------------------------------------------------- internals
    def _backend_reset(self, keys: PRNGKeyArray) -> Any:
        # MJX and Brax rely on standard dtype promotion; callers may have made it strict.
        with jax.numpy_dtype_promotion("standard"):
            return jax.vmap(self._reset_one)(jax.random.key_data(keys))

    def _reset_impl(self, key: PRNGKeyArray) -> tuple[JaxState, Step]:
        keys = jax.random.split(key, (self.num_envs, 2))
        inner = self._backend_reset(keys[:, 0])
        obs = self._obs(inner)
        n = self.num_envs
        state = JaxState(
            inner=inner,
            key=keys[:, 1],
            episode_return=jnp.zeros(n, jnp.float32),
            episode_length=jnp.zeros(n, jnp.int32),
        )
        no = jnp.zeros(n, bool)
        step = Step(
            obs=obs,
            reward=jnp.zeros(n, jnp.float32),
            terminated=no,
            truncated=no,
            final_obs=obs,
            episode_return=state.episode_return,
            episode_length=state.episode_length,
        )
        return state, step

    def _reset_where(self, ended: jax.Array, keys: PRNGKeyArray, inner: Any) -> Any:
        """`inner` with the environments where `ended` replaced by fresh resets.

        A leaf of the batched state is per environment when its shape is `[num_envs]` followed
        by the single-environment shape; any other leaf (MJX-warp keeps its contact buffers
        and counters once for all environments) is shared, and kept as stepped.
        """
        fresh = self._backend_reset(keys)
        if self._single_state is None:
            self._single_state = single_state_shapes(self._reset_one)
        single = self._single_state
        if jax.tree.structure(single) != jax.tree.structure(fresh):
            raise TypeError(
                f"{self.name}: the batched reset's state has another structure than a single "
                "environment's; the backend's reset cannot be used with automatic resets"
            )
        n = self.num_envs
        per_env = jax.tree.map(lambda b, s: tuple(b.shape) == (n, *s.shape), fresh, single)
        return _where(ended, fresh, inner, per_env)

    def _obs(self, inner: Any) -> jax.Array:
        obs = inner.obs
        if not isinstance(obs, jax.Array):
            raise TypeError(f"{self.name}: expected flat array observations, got {type(obs)}")
        return jnp.reshape(obs, (self.num_envs, -1)).astype(jnp.float32)

    def _repeat(
        self, inner: Any, ctrl: jax.Array
    ) -> tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Run `action_repeat` simulator steps; reward, obs and length stop at a terminal."""

        def step_all(inner: Any, ctrl: jax.Array) -> Any:
            with jax.numpy_dtype_promotion("standard"):
                return jax.vmap(self._step_one)(inner, ctrl)

        if self.action_repeat == 1:
            inner = step_all(inner, ctrl)
            reward, done = inner.reward.astype(jnp.float32), inner.done > 0
            return inner, self._obs(inner), reward, done, jnp.ones(self.num_envs, jnp.int32)

        # One copy of the simulator step inside the loop (compiling MJX twice is slow on CPU).
        def body(_: int, carry: tuple) -> tuple:
            inner, obs, reward, done, count = carry
            new = step_all(inner, ctrl)
            live = ~done
            obs = jnp.where(live[:, None], self._obs(new), obs)
            reward = reward + jnp.where(live, new.reward.astype(jnp.float32), 0.0)
            count = count + live.astype(jnp.int32)
            done = done | (new.done > 0)
            return new, obs, reward, done, count

        n = self.num_envs
        carry = (
            inner,
            jnp.zeros((n, self.observation_size), jnp.float32),
            jnp.zeros(n, jnp.float32),
            jnp.zeros(n, bool),
            jnp.zeros(n, jnp.int32),
        )
        return jax.lax.fori_loop(0, self.action_repeat, body, carry)

    def _step_impl(self, state: JaxState, action: jax.Array) -> tuple[JaxState, Step]:
        if self.check_finite:
            action = eqx.error_if(
                action,
                ~jnp.all(jnp.isfinite(action)),
                f"{self.name}: action contains NaN or inf; the state passed in is unchanged",
            )
        unit = (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5
        ctrl = jnp.asarray(self._low) + unit * jnp.asarray(self._high - self._low)
        inner, final_obs, reward, terminated, count = self._repeat(state.inner, ctrl)

        episode_return = state.episode_return + reward
        episode_length = state.episode_length + count
        truncated = ~terminated & (episode_length >= self.episode_length)
        ended = terminated | truncated

        split = jax.vmap(lambda k: jax.random.split(k, 2))(state.key)
        next_key, reset_key = split[:, 0], split[:, 1]
        # Reset only on steps where some environment ended (outside vmap, `cond` really branches).
        inner = jax.lax.cond(
            jnp.any(ended),
            lambda: self._reset_where(ended, reset_key, inner),
            lambda: inner,
        )
        new_state = JaxState(
            inner=inner,
            key=next_key,
            episode_return=jnp.where(ended, 0.0, episode_return),
            episode_length=jnp.where(ended, 0, episode_length),
        )
        step = Step(
            obs=jnp.where(ended[:, None], self._obs(inner), final_obs),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            episode_return=episode_return,
            episode_length=episode_length,
        )
        return new_state, step
