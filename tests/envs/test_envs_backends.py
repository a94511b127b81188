"""Brax and Playground behind the common interface: small tasks, few steps, one compile each."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs

_SETTINGS = {
    # Brax: inverted pendulum, actuator range [-3, 3] (Brax maps [-1, 1] to it); falls over
    # (terminates) under full push.
    "brax/inverted_pendulum": dict(num_envs=2, action_repeat=1, episode_length=4),
    # Playground's DM Control cartpole on MJX, with action repeat.
    "playground/CartpoleBalance": dict(num_envs=2, action_repeat=2, episode_length=6),
    # The same on MuJoCo Warp (its CPU device here), whose batched state keeps contact
    # buffers and counters once for all environments (not batched).
    "playground/CartpoleBalance[warp]": dict(
        num_envs=2, action_repeat=2, episode_length=6, impl="warp"
    ),
}


@functools.cache
def _make(setting: str) -> envs.Env:
    """One environment per setting for the whole module: its compiled reset/step are reused."""
    return envs.make(setting.split("[")[0], seed=3, **_SETTINGS[setting])


@pytest.fixture(scope="module", params=sorted(_SETTINGS))
def env(request) -> envs.Env:
    return _make(request.param)


def _rollout(env: envs.Env, key: jax.Array, actions: jax.Array) -> list[envs.Step]:
    state, step = env.reset(key)
    steps = [step]
    for action in actions:
        state, step = env.step(state, action)
        steps.append(step)
    return steps


def test_layout_truncation_and_determinism(env, getkey):
    assert env.jittable
    key = getkey()
    actions = jax.random.uniform(
        getkey(), (4, env.num_envs, env.action_size), jnp.float32, -0.1, 0.1
    )
    steps = _rollout(env, key, actions)
    first = steps[0]
    assert first.obs.shape == (env.num_envs, env.observation_size)
    assert first.obs.dtype == jnp.float32 and first.reward.dtype == jnp.float32
    agent_steps = env.episode_length // env.action_repeat
    for t, step in enumerate(steps[1:], start=1):
        assert not step.terminated.any()  # small actions: the pole stays up
        if t < agent_steps:
            np.testing.assert_array_equal(step.episode_length, t * env.action_repeat)
            np.testing.assert_array_equal(step.obs, step.final_obs)
    end = steps[agent_steps]
    assert end.truncated.all()
    np.testing.assert_array_equal(end.episode_length, env.episode_length)
    rewards = sum(s.reward for s in steps[1 : agent_steps + 1])
    np.testing.assert_allclose(end.episode_return, rewards, rtol=1e-5)
    assert not jnp.allclose(end.obs, end.final_obs)  # auto-reset to a fresh start
    again = _rollout(env, key, actions)
    for a, b in zip(steps, again, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.reward, b.reward)


def test_termination(env, getkey):
    if not env.name.startswith("brax/"):
        pytest.skip("the cartpole tasks never terminate")
    state, _ = env.reset(getkey())
    push = jnp.ones((env.num_envs, env.action_size), jnp.float32)  # full force: Brax applies +3
    for _ in range(env.episode_length - 1):
        state, step = env.step(state, push)
        if step.terminated.all():
            break
    else:
        raise AssertionError("the pendulum never fell")
    assert not step.truncated.any()
    assert (step.episode_length < env.episode_length).all()
    assert not jnp.allclose(step.obs, step.final_obs)


def test_actions_reach_the_actuators_once_rescaled(env, getkey):
    """[-1, 1] maps to the actuator range once: by Brax inside its step for Brax tasks (the
    wrapper passes actions on as they are), by the wrapper for Playground's (which apply the
    action as the control). Both test tasks end up at ctrl = low + (a + 1) / 2 · (high - low)."""
    low, high = {"brax/inverted_pendulum": (-3.0, 3.0), "playground/CartpoleBalance": (-1.0, 1.0)}[
        env.name
    ]
    state, _ = env.reset(getkey())
    action = jnp.asarray([[1 / 3], [-0.5]], jnp.float32)
    state, _ = env.step(state, action)
    inner = state.inner
    data = inner.pipeline_state if env.name.startswith("brax/") else inner.data
    expected = low + (np.asarray(action) + 1) / 2 * (high - low)
    np.testing.assert_allclose(np.asarray(data.ctrl), expected, rtol=1e-6, atol=1e-6)


def test_a_brax_task_missing_from_a_backend_says_which_to_use():
    with pytest.raises(ValueError, match="backend='generalized'"):
        envs.make("brax/swimmer")


@pytest.mark.slow  # a fresh MJX compile (~30 s on 2 cores); the wrapper's scan test is fast
def test_inside_scan(getkey):
    env = envs.make("playground/CartpoleBalance", **_SETTINGS["playground/CartpoleBalance"])

    @jax.jit
    def rollout(key):
        state, _ = env.reset(key)
        action = jnp.zeros((env.num_envs, env.action_size), jnp.float32)
        return jax.lax.scan(lambda s, _: env.step(s, action), state, length=4)[1]

    steps = rollout(getkey())
    assert steps.obs.shape == (4, env.num_envs, env.observation_size)
    assert bool(jnp.all(jnp.isfinite(steps.obs)))
    np.testing.assert_array_equal(steps.truncated[:, 0], [False, False, True, False])


def test_wrong_action(env, getkey):
    state, _ = env.reset(getkey())
    with pytest.raises(ValueError, match="expected"):
        env.step(state, jnp.zeros((env.num_envs + 1, env.action_size), jnp.float32))


def test_backend_options_reach_the_backend():
    env = envs.make("brax/inverted_pendulum", backend="generalized", num_envs=3)
    assert (env.num_envs, env.observation_size, env.action_size) == (3, 4, 1)
    assert env.name == "brax/inverted_pendulum"
    with pytest.raises(TypeError):
        envs.make("brax/inverted_pendulum", no_such_option=1)


def test_mjx_and_warp_give_the_same_trajectories(getkey):
    """Playground's two physics implementations step the same model: from the same key and
    actions they agree to float32 rounding, the automatic reset included (an episode of 6
    simulator steps ends at the third agent step of action repeat 2)."""
    mjx, warp = _make("playground/CartpoleBalance"), _make("playground/CartpoleBalance[warp]")
    key = getkey()
    actions = jax.random.uniform(getkey(), (4, mjx.num_envs, mjx.action_size), jnp.float32, -1, 1)
    for a, b in zip(_rollout(mjx, key, actions), _rollout(warp, key, actions), strict=True):
        np.testing.assert_allclose(np.asarray(b.obs), np.asarray(a.obs), atol=1e-5)
        np.testing.assert_allclose(np.asarray(b.reward), np.asarray(a.reward), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(b.truncated), np.asarray(a.truncated))
        np.testing.assert_array_equal(np.asarray(b.episode_length), np.asarray(a.episode_length))


def test_an_unknown_playground_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"impl must be one of 'jax', 'warp'.*got 'mjx'"):
        envs.make("playground/CartpoleBalance", impl="mjx")
