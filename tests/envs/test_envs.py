"""The batched JAX wrapper's semantics, on a tiny analytic task that compiles in a second.

The task: a point on a line. `ctrl` in [0, 4] moves it by `ctrl`, the reward is `ctrl`, the
episode terminates when the position passes 10. Observation: (position, last ctrl).
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs


class _LineState(eqx.Module):
    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    pos: jax.Array


def _reset(key: jax.Array) -> _LineState:
    pos = jax.random.uniform(jax.random.wrap_key_data(key), (), jnp.float32, 0.0, 0.1)
    zero = jnp.zeros((), jnp.float32)
    return _LineState(jnp.stack([pos, zero]), zero, zero, pos)


def _step(state: _LineState, ctrl: jax.Array) -> _LineState:
    pos = state.pos + ctrl[0]
    return _LineState(jnp.stack([pos, ctrl[0]]), ctrl[0], (pos > 10.0).astype(jnp.float32), pos)


def _line(
    num_envs: int = 3, action_repeat: int = 1, episode_length: int = 6, seed: int = 0
) -> envs.JaxEnv:
    return envs.JaxEnv(
        "test/line",
        _reset,
        _step,
        np.array([[0.0, 4.0]], np.float32),
        2,
        num_envs=num_envs,
        seed=seed,
        action_repeat=action_repeat,
        episode_length=episode_length,
    )


@pytest.fixture(scope="module")
def line() -> envs.JaxEnv:
    return _line()


def _act(env: envs.Env, value: float | list[float]) -> jax.Array:
    a = jnp.asarray(value, jnp.float32).reshape(-1, 1)
    return jnp.broadcast_to(a, (env.num_envs, 1))


@pytest.mark.newest
def test_reset_layout(line, getkey):
    _, step = line.reset(getkey())
    assert line.jittable
    assert step.obs.shape == step.final_obs.shape == (3, 2)
    assert step.obs.dtype == jnp.float32
    assert step.terminated.dtype == step.truncated.dtype == jnp.bool_
    assert step.episode_length.dtype == jnp.int32
    assert not step.terminated.any() and not step.truncated.any()
    assert jnp.all(step.reward == 0.0)


def test_actions_are_clipped_and_rescaled(line, getkey):
    state, _ = line.reset(getkey())
    for action, ctrl in ((-1.0, 0.0), (0.0, 2.0), (1.0, 4.0), (7.0, 4.0), (-3.0, 0.0)):
        _, step = line.step(state, _act(line, action))
        np.testing.assert_allclose(step.reward, ctrl)
        np.testing.assert_allclose(step.obs[:, 1], ctrl)


def test_truncation_and_auto_reset(line, getkey):
    state, step = line.reset(getkey())
    first = step.obs
    total = 0.0
    for t in range(1, 7):
        state, step = line.step(state, _act(line, -0.5))  # ctrl 1: never terminates in 6 steps
        total += 1.0
        assert not step.terminated.any()
        np.testing.assert_array_equal(step.episode_length, t)
        np.testing.assert_allclose(step.episode_return, total)
    assert step.truncated.all()
    # final_obs is the end of the finished episode, obs the start of the next one.
    np.testing.assert_allclose(step.final_obs[:, 0], first[:, 0] + 6.0, rtol=1e-6)
    assert jnp.all(step.obs[:, 0] < 0.1) and jnp.all(step.obs[:, 1] == 0.0)
    state, step = line.step(state, _act(line, -0.5))
    np.testing.assert_array_equal(step.episode_length, 1)
    np.testing.assert_allclose(step.episode_return, 1.0)
    assert not step.truncated.any()


def test_termination_is_not_truncation(line, getkey):
    state, _ = line.reset(getkey())
    ctrl = jnp.array([[1.0], [1.0], [-1.0]], jnp.float32)  # 4, 4, 0 per step
    for _ in range(2):
        state, step = line.step(state, ctrl)
    state, step = line.step(state, ctrl)  # positions pass 10 for the first two envs
    np.testing.assert_array_equal(step.terminated, [True, True, False])
    assert not step.truncated.any()
    np.testing.assert_allclose(step.episode_return, [12.0, 12.0, 0.0])
    np.testing.assert_array_equal(step.episode_length, [3, 3, 3])
    assert jnp.all(step.final_obs[:2, 0] > 10.0) and jnp.all(step.obs[:2, 0] < 0.1)
    np.testing.assert_allclose(step.obs[2], step.final_obs[2])


def test_action_repeat_sums_rewards_and_stops_at_terminal(getkey):
    env = _line(num_envs=2, action_repeat=3, episode_length=7)
    state, _ = env.reset(getkey())
    state, step = env.step(state, jnp.array([[-0.5], [1.0]], jnp.float32))  # ctrl 1 and 4
    np.testing.assert_allclose(step.reward, [3.0, 12.0])
    np.testing.assert_array_equal(step.terminated, [False, True])
    np.testing.assert_array_equal(step.episode_length, [3, 3])
    state, step = env.step(state, jnp.array([[-0.5], [1.0]], jnp.float32))
    # env 1 terminates after 3 sub-steps; env 0 reaches 6 steps; the third call passes 7.
    state, step = env.step(state, jnp.array([[-0.5], [-1.0]], jnp.float32))
    np.testing.assert_array_equal(step.truncated, [True, False])
    np.testing.assert_array_equal(step.episode_length, [9, 3])


@pytest.mark.newest
def test_runs_inside_scan_jit_and_vmap(line, getkey):
    @jax.jit
    def rollout(key):
        state, _ = line.reset(key)

        def body(state, _):
            state, step = line.step(state, _act(line, -0.5))
            return state, step

        return jax.lax.scan(body, state, length=13)[1]

    steps = rollout(getkey())
    assert steps.obs.shape == (13, 3, 2)
    assert int(steps.truncated.sum()) == 2 * 3  # at steps 6 and 12
    keys = jax.random.split(getkey(), 2)
    states, first = jax.vmap(line.reset)(keys)  # e.g. one batch of environments per seed
    assert first.obs.shape == (2, 3, 2)
    actions = jnp.stack([_act(line, -1.0), _act(line, 1.0)])
    _, steps = jax.jit(jax.vmap(line.step))(states, actions)
    np.testing.assert_allclose(steps.reward, [[0.0] * 3, [4.0] * 3])


def test_same_key_same_trajectory(line, getkey):
    key = getkey()
    runs = []
    for _ in range(2):
        state, step = line.reset(key)
        obs = [step.obs]
        for _ in range(8):
            state, step = line.step(state, _act(line, [0.3, -0.2, 0.9]))
            obs.append(step.obs)
        runs.append(jnp.stack(obs))
    np.testing.assert_array_equal(runs[0], runs[1])
    other = line.reset(getkey())[1].obs
    assert not jnp.array_equal(other, runs[0][0])
    # Legacy uint32 keys and seed-based default keys work too.
    assert line.reset(jax.random.PRNGKey(0))[1].obs.shape == (3, 2)
    np.testing.assert_array_equal(line.reset()[1].obs, line.reset(jax.random.key(0))[1].obs)


def test_bad_actions(line, getkey):
    state, _ = line.reset(getkey())
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected.*\(3, 1\)"):
        line.step(state, jnp.zeros(3, jnp.float32))
    with pytest.raises(TypeError, match="dtype int32, expected float32"):
        line.step(state, jnp.zeros((3, 1), jnp.int32))
    with pytest.raises(TypeError, match="must be an array"):
        line.step(state, [[0.0]] * 3)
    nan = jnp.array([[0.0], [jnp.nan], [0.0]], jnp.float32)
    with pytest.raises(RuntimeError, match="NaN or inf"):
        jax.block_until_ready(line.step(state, nan))
    # The state given in stays usable.
    _, step = line.step(state, _act(line, 0.0))
    np.testing.assert_allclose(step.reward, 2.0)


def test_bad_settings():
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        _line(num_envs=0)
    with pytest.raises(ValueError, match="action_repeat"):
        _line(action_repeat=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer"):
        _line(seed=1.7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer"):
        envs.make("dmc/cartpole-swingup", seed=1.7)  # type: ignore[arg-type]
    assert _line(seed=np.int64(3)).seed == 3


def test_unknown_names_suggest_close_ones():
    names = envs.names()
    assert "brax/halfcheetah" in names
    assert "playground/CartpoleSwingup" in names
    assert "dmc/dog-run" in names and "dmc/humanoid-walk" in names
    with pytest.raises(ValueError, match="dmc/cartpole-swingup"):
        envs.make("dmc/cartpole-swingpu")
    with pytest.raises(ValueError, match="playground/CheetahRun"):
        envs.make("playground/CheetaRun")
    with pytest.raises(ValueError, match="dmc/cartpole-swingup"):
        envs.make("cartpole-swingup")
    with pytest.raises(ValueError, match="brax/halfcheetah"):
        envs.make("brax/half_cheetah")


def test_host_step_is_the_same_pytree_as_step():
    rng = np.random.default_rng(0)
    fields = dict(
        obs=rng.normal(size=(3, 4)).astype(np.float32),
        reward=rng.normal(size=3).astype(np.float32),
        terminated=np.array([True, False, False]),
        truncated=np.array([False, True, False]),
        final_obs=rng.normal(size=(3, 4)).astype(np.float32),
        episode_return=rng.normal(size=3).astype(np.float32),
        episode_length=np.array([1, 2, 3], np.int32),
    )
    from envs._core import host_step

    fast, slow = host_step(**fields), envs.Step(**fields)
    assert type(fast) is envs.Step
    assert jax.tree.structure(fast) == jax.tree.structure(slow)
    assert eqx.tree_equal(fast, slow)
    assert repr(fast) == repr(slow)
    for name, value in fields.items():
        assert getattr(fast, name) is value
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.obs = fields["obs"]  # type: ignore[misc]
    stacked = jax.tree.map(lambda *x: np.stack(x), fast, slow)
    np.testing.assert_array_equal(stacked.obs[0], stacked.obs[1])
    with pytest.raises(TypeError, match="exactly the fields"):
        host_step(**{k: v for k, v in fields.items() if k != "reward"})


def test_reset_refuses_a_number_for_a_key():
    env = _line()
    with pytest.raises(TypeError, match=r"jax\.random\.key\(7\), not the number 7"):
        env.reset(7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype float32"):
        env.reset(jnp.zeros(2, jnp.float32))
    legacy, typed = env.reset(jax.random.PRNGKey(3))[1], env.reset(jax.random.key(3))[1]
    np.testing.assert_array_equal(legacy.obs, typed.obs)  # legacy uint32 keys still work


@pytest.mark.parametrize("name", ["test/point-mass", "test/point-mass-host"])
def test_the_point_mass_test_task_keeps_the_contract(name, getkey):
    """`test/point-mass` is made like every task: the Step layout, truncation at the time limit
    with `final_obs` kept, the same trajectory for the same key, jittable or host-stepped."""
    assert name in envs.names()
    env = envs.make(name, num_envs=3, episode_length=4, seed=1)
    assert isinstance(env, envs.Env) and env.jittable == (name == "test/point-mass")
    assert (env.observation_size, env.action_size) == (4, 2)
    key = getkey()
    state, first = env.reset(key)
    assert first.obs.shape == (3, 4) and not first.terminated.any()
    steps = []
    for _ in range(4):
        state, step = env.step(state, jnp.zeros((3, 2), jnp.float32))  # standing still
        steps.append(step)
    assert not any(s.truncated.any() for s in steps[:3]) and steps[3].truncated.all()
    np.testing.assert_array_equal(steps[3].final_obs, first.obs)  # never moved
    np.testing.assert_array_equal(steps[3].episode_length, 4)
    # the reward is minus the distance to the target: position (obs[:2]) to target
    np.testing.assert_allclose(
        steps[0].reward, -np.linalg.norm(first.obs[:, 2:], axis=1), rtol=1e-6
    )
    again = env.reset(key)[1]
    np.testing.assert_array_equal(again.obs, first.obs)
