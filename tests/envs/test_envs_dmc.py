"""dm_control in worker processes: semantics, determinism and the fault paths."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import envs

_NAME = "dmc/cartpole-swingup"


def _make(**kwargs) -> envs.DmcEnv:
    settings = dict(num_envs=4, num_workers=2, seed=0, action_repeat=2, episode_length=6)
    env = envs.make(_NAME, **{**settings, **kwargs})
    assert isinstance(env, envs.DmcEnv)
    return env


@pytest.fixture(scope="module")
def env():
    with _make() as env:
        yield env


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (no process, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _actions(seed: int, steps: int, env: envs.Env) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (steps, env.num_envs, env.action_size)).astype(np.float32)


@pytest.mark.newest
def test_layout_and_flat_observations(env):
    assert not env.jittable
    assert env.observation_size == 5 and env.action_size == 1
    assert list(env.observation_keys) == ["position", "velocity"]
    assert env.observation_keys["velocity"] == slice(3, 5)
    state, step = env.reset(jax.random.key(0))
    assert isinstance(state, envs.DmcState)
    assert step.obs.shape == (4, 5) and step.obs.dtype == np.float32
    assert step.terminated.dtype == np.bool_ and step.episode_length.dtype == np.int32
    assert not step.truncated.any() and np.all(step.reward == 0.0)


def test_truncation_auto_reset_and_repeat(env):
    state, step = env.reset(jax.random.key(1))
    returns = np.zeros(4, np.float32)
    for t, action in enumerate(_actions(0, 3, env), start=1):
        state, step = env.step(state, action)
        returns += step.reward
        np.testing.assert_array_equal(step.episode_length, 2 * t)  # action_repeat = 2
        assert not step.terminated.any()
        assert step.truncated.all() == (t == 3)
        if t < 3:
            np.testing.assert_array_equal(step.obs, step.final_obs)
    np.testing.assert_allclose(step.episode_return, returns, rtol=1e-5)
    assert not np.allclose(step.obs, step.final_obs)
    state, step = env.step(state, np.zeros((4, 1), np.float32))
    np.testing.assert_array_equal(step.episode_length, 2)
    assert state.steps == 4


def test_same_seed_same_trajectories_whatever_the_workers(env):
    actions = _actions(1, 5, env)

    def run(e: envs.Env, key: jax.Array) -> np.ndarray:
        state, step = e.reset(key)
        obs = [step.obs]
        for a in actions:
            state, step = e.step(state, a)
            obs.append(step.obs)
            obs.append(step.final_obs)
        return np.stack(obs)

    first = run(env, jax.random.key(7))
    np.testing.assert_array_equal(first, run(env, jax.random.key(7)))
    assert not np.array_equal(first[0], run(env, jax.random.key(8))[0])
    with _make(num_workers=1) as single:
        np.testing.assert_array_equal(first, run(single, jax.random.key(7)))
    with _make(num_workers=0) as local:  # stepped in this process
        assert local.num_workers == 0 and local.worker_pids == []
        np.testing.assert_array_equal(first, run(local, jax.random.key(7)))


@pytest.mark.newest
def test_matches_a_plain_dm_control_loop(env):
    """Observations, rewards and returns equal dm_control's own, stepped in this process with
    the clipped actions twice each (action_repeat = 2), seeded as the pool seeds environment i."""
    from envs._dmc import _seed_from_key
    from envs._dmc_worker import env_seed, load_task

    key = jax.random.key(3)
    actions = 1.5 * _actions(2, 3, env)  # some beyond [-1, 1]: clipped to the bounds
    state, step = env.reset(key)
    pool_obs, pool_rewards = [step.obs], []
    for a in actions:
        state, step = env.step(state, a)
        pool_obs.append(step.final_obs)
        pool_rewards.append(step.reward)

    seed = _seed_from_key(key)
    for i in range(env.num_envs):
        task = load_task("cartpole", "swingup", {})
        task.task.random.seed(env_seed(seed, i))
        ts = task.reset()
        obs = [np.concatenate([ts.observation["position"], ts.observation["velocity"]])]
        rewards = []
        for a in actions:
            total = 0.0
            for _ in range(2):
                ts = task.step(np.clip(a[i].astype(np.float64), -1.0, 1.0))
                total += ts.reward
            obs.append(np.concatenate([ts.observation["position"], ts.observation["velocity"]]))
            rewards.append(total)
        np.testing.assert_allclose(np.stack(pool_obs)[:, i], np.stack(obs), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.stack(pool_rewards)[:, i], rewards, rtol=1e-6)


def test_bad_actions_leave_env_usable(env):
    state, _ = env.reset(jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        env.step(state, np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        env.step(state, np.zeros((4, 1)))
    bad = np.zeros((4, 1), np.float32)
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf \(environments \[2\]\)"):
        env.step(state, bad)
    state, step = env.step(state, np.zeros((4, 1), np.float32))
    np.testing.assert_array_equal(step.episode_length, 2)
    state, step = env.step(state, jax.numpy.zeros((4, 1), jax.numpy.float32))  # JAX arrays too
    np.testing.assert_array_equal(step.episode_length, 4)


def test_step_async_steps_environments_side_by_side(env):
    """Two pools started one after the other and awaited together give what stepping each in
    turn gives; calls out of order are refused and leave the step in flight intact."""
    actions = _actions(3, 4, env)
    with _make(seed=1) as other:
        key = jax.random.key(5)
        s1, _ = env.reset(key)
        s2, _ = other.reset(key)
        for a in actions:
            env.step_async(s1, a)
            other.step_async(s2, a)
            with pytest.raises(RuntimeError, match="step is in flight; call step_wait"):
                env.step(s1, a)
            with pytest.raises(RuntimeError, match="step is in flight"):
                env.reset(key)
            s1, step1 = env.step_wait()
            s2, step2 = other.step_wait()
            np.testing.assert_array_equal(step1.obs, step2.obs)  # same key: same episodes
        with pytest.raises(RuntimeError, match="no step in flight"):
            env.step_wait()
    state, plain = env.reset(key)
    for a in actions:
        state, plain = env.step(state, a)
    np.testing.assert_array_equal(plain.obs, step1.obs)
    np.testing.assert_array_equal(plain.episode_return, step1.episode_return)
    assert s1.steps == state.steps == len(actions)


def test_unknown_domain_and_closed_env():
    with pytest.raises(ValueError, match="dmc/cheetah-run"):
        envs.make("dmc/cheeta-run")
    e = _make(num_envs=1)
    assert e.num_workers == 1
    state, _ = e.reset()
    pids = e.worker_pids
    e.close()
    e.close()
    assert all(_gone(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        e.step(state, np.zeros((1, 1), np.float32))


def test_killed_worker_raises_and_leaves_no_process():
    e = _make()
    state, _ = e.reset()
    pids = e.worker_pids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(envs.WorkerError, match=r"worker 1 .*'dmc/cartpole-swingup'.*exit code -9"):
        e.step(state, np.zeros((4, 1), np.float32))
    assert all(_gone(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        e.step(state, np.zeros((4, 1), np.float32))


def test_ctrl_c_while_stepping_stops_all_workers():
    # A process started in the background by a shell without job control inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: install it here, or
    # the Ctrl-C below would never arrive and the step would wait for the stopped worker.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    e = _make()
    try:
        state, _ = e.reset()
        pids = e.worker_pids
        os.kill(pids[0], signal.SIGSTOP)  # a stuck worker: the parent waits until Ctrl-C
        main = threading.main_thread().ident
        assert main is not None
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            e.step(state, np.zeros((4, 1), np.float32))
        timer.join()
        assert time.monotonic() - start < 30
        assert all(_gone(p) for p in pids)
    finally:
        e.close()
        signal.signal(signal.SIGINT, previous)


def test_worker_count_default_and_bad_values():
    with _make(num_envs=1, num_workers=None) as one:  # a single environment: in-process
        assert one.num_workers == 0 and one.worker_pids == []
        state, _ = one.reset()
        state, step = one.step(state, np.zeros((1, 1), np.float32))
        np.testing.assert_array_equal(step.episode_length, 2)
    with _make(num_envs=3, num_workers=8) as few:  # never more workers than environments
        assert few.num_workers == 3 and len(few.worker_pids) == 3
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        _make(num_workers=-1)
    with pytest.raises(TypeError, match="num_workers must be an integer"):
        _make(num_workers=1.5)


def test_ctrl_c_in_process_closes_the_environment(monkeypatch):
    """Ctrl-C half-way through an in-process step leaves environments stepped unevenly: the
    environment is closed rather than left inconsistent."""
    local = _make(num_workers=0)
    state, _ = local.reset()
    runner = local._local[0]

    def interrupted(message: bytes) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        local.step(state, np.zeros((4, 1), np.float32))
    assert runner.envs == []  # released
    with pytest.raises(RuntimeError, match="closed"):
        local.step(state, np.zeros((4, 1), np.float32))


def test_dm_control_time_limit_is_truncation():
    # cartpole's control step is 0.01 s: a 0.04 s dm_control time limit ends after 4 steps.
    with _make(num_envs=2, task_kwargs={"time_limit": 0.04}, episode_length=100) as e:
        state, _ = e.reset()
        for _ in range(2):
            state, step = e.step(state, np.zeros((2, 1), np.float32))
        assert step.truncated.all() and not step.terminated.any()
        np.testing.assert_array_equal(step.episode_length, 4)


_PARENT = """
import sys, envs
if __name__ == "__main__":
    env = envs.make("dmc/cartpole-swingup", num_envs=2, num_workers=2)
    print(*env.worker_pids, flush=True)
    sys.stdin.read()
"""


def test_workers_exit_when_the_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
        assert _wait_gone(pids), "workers outlived their parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.skipif(
    os.environ.get("MUJOCO_GL", "disable") != "disable", reason="rendering is on: the task resets"
)
def test_a_task_that_renders_on_reset_fails_at_make_with_the_fix():
    # quadruped-escape builds its terrain with a rendering context on every reset
    with pytest.raises(ValueError, match=r"needs an OpenGL rendering context.*MUJOCO_GL"):
        envs.make("dmc/quadruped-escape", num_envs=2, num_workers=2)


ESCAPE = """
import jax, numpy as np, envs
settings = dict(num_envs=2, seed=0, action_repeat=2, episode_length=30)
actions = np.random.default_rng(0).uniform(-1, 1, (40, 2, 12)).astype(np.float32)

def rollout(env, state, actions):
    out = []
    for a in actions:
        state, s = env.step(state, a)
        out.append(np.concatenate([s.obs.ravel(), s.reward.ravel(), s.truncated.ravel()]))
    return np.stack(out)

with envs.make("dmc/quadruped-escape", num_workers=2, **settings) as env:
    assert env.action_size == 12, env.action_size
    state, _ = env.reset(jax.random.key(1))
    for a in actions[:10]:
        state, _ = env.step(state, a)
    saved = env.get_state()
    assert "model/hfield_data" in saved, sorted(saved)  # the terrain it drew at reset
    first = rollout(env, state, actions[10:])
assert first[:, -2:].sum() > 0  # episodes ended and terrains were drawn again
with envs.make("dmc/quadruped-escape", num_workers=0, **settings) as fresh:
    np.testing.assert_array_equal(rollout(fresh, fresh.set_state(saved), actions[10:]), first)
print("replayed")
"""


def _osmesa() -> str | None:
    """Why software OpenGL (Mesa's OSMesa) is unavailable here, or None once it is there:
    installed with apt-get (as root) when missing."""
    import ctypes.util

    if ctypes.util.find_library("OSMesa"):
        return None
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "libosmesa6"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            return f"{' '.join(command)}: {err}"
        if done.returncode:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    return None if ctypes.util.find_library("OSMesa") else "libOSMesa not found after install"


def test_quadruped_escape_runs_and_replays_with_software_opengl():
    """With a rendering context (here Mesa's software OSMesa), quadruped-escape resets, steps
    in workers and in-process, saves the terrain it draws each episode with its state, and a
    fresh environment replays the steps after `get_state` bit for bit."""
    why = _osmesa()
    if why is not None:
        print(f"software OpenGL cannot be installed here: {why}")
        pytest.skip(f"software OpenGL cannot be installed here: {why}")
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    done = subprocess.run(
        [sys.executable, "-c", ESCAPE], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0 and "replayed" in done.stdout, done.stderr[-3000:]


def test_reset_refuses_a_number_and_handles_are_never_reused(env):
    with pytest.raises(TypeError, match=r"jax\.random\.key\(7\)"):
        env.reset(7)
    state, _ = env.reset(jax.random.key(0))  # still usable
    env.step(state, np.zeros((4, 1), np.float32))
    with _make(num_workers=0) as first:
        old, _ = first.reset()
    match = "state must be the DmcState returned by this env"
    # the second environment may live at the address the first one had
    with _make(num_workers=0) as second, pytest.raises(TypeError, match=match):
        second.step(old, np.zeros((4, 1), np.float32))


# Workers never import the script that made the environment (its `__main__` module): a script
# without a main guard works, read from a file, from standard input or given with `python -c`.
# The script appends a line to a file each time its top level runs: once, not once per worker.
_SCRIPT = """
import gc
import os
import numpy as np
import envs

with open(os.environ["ENVS_TEST_RUNS"], "a") as f:
    f.write("run\\n")
env = envs.make("dmc/cartpole-balance", num_envs=2, num_workers=2)
state, step = env.reset()
for _ in range(3):
    state, step = env.step(state, np.zeros((2, env.action_size), np.float32))
assert step.episode_length.tolist() == [3, 3], step.episode_length
print(*env.worker_pids, flush=True)
"""

_GUARDED = """
import gc
import os
import numpy as np
import envs

def main():
    with open(os.environ["ENVS_TEST_RUNS"], "a") as f:
        f.write("run\\n")
    with envs.make("dmc/cartpole-balance", num_envs=2, num_workers=2) as env:
        state, step = env.reset()
        for _ in range(3):
            state, step = env.step(state, np.zeros((2, env.action_size), np.float32))
        assert step.episode_length.tolist() == [3, 3], step.episode_length
        print(*env.worker_pids, flush=True)

if __name__ == "__main__":
    main()
"""

_ROOT = str(Path(__file__).resolve().parents[2])


def _run_python(tmp_path, code: str, how: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter as a script file, from standard input or with -c,
    in `tmp_path` (this checkout first on its path, whatever is installed)."""
    path = [_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "ENVS_TEST_RUNS": str(tmp_path / "runs.txt"),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable"),
    }
    stdin = None
    if how == "file":
        script = tmp_path / "script.py"
        script.write_text(code)
        args = [sys.executable, str(script)]
    elif how == "stdin":
        args, stdin = [sys.executable, "-"], code
    else:
        args = [sys.executable, "-c", code]
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=300
    )


@pytest.mark.parametrize(
    ("code", "how"),
    [(_SCRIPT, "file"), (_SCRIPT, "stdin"), (_SCRIPT, "-c"), (_GUARDED, "file")],
    ids=["script-without-guard", "stdin", "python-c", "script-with-guard"],
)
def test_workers_start_from_any_script(tmp_path, code, how):
    result = _run_python(tmp_path, code, how)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs.txt").read_text() == "run\n"  # no worker ran the script
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2
    # stopped and reaped by the script itself as it exited (the unguarded ones never close)
    assert all(_gone(p) for p in pids), "workers outlived the script"


_MAIN_KWARGS = """
import envs

class Seed(int):  # lives in __main__, which the workers never import
    pass

envs.make("dmc/cartpole-balance", num_envs=2, num_workers=2, task_kwargs={"random": Seed(3)})
"""


def test_task_kwargs_defined_in_main_fail_with_the_fix(tmp_path):
    result = _run_python(tmp_path, _MAIN_KWARGS, "file")
    assert result.returncode == 1
    assert "WorkerError" in result.stderr
    assert "task_kwargs may hold only objects defined in an importable module" in result.stderr


def test_unpicklable_task_kwargs_are_refused_before_starting_workers():
    class Local(int):  # a local class: pickle cannot name it
        pass

    with pytest.raises(TypeError, match=r"task_kwargs must be picklable.*num_workers=0"):
        _make(task_kwargs={"random": Local(3)})
    with _make(num_workers=0, task_kwargs={"random": Local(3)}) as local:  # in-process: fine
        local.reset()


def test_no_interpreter_to_start_workers_names_the_fix(monkeypatch):
    monkeypatch.setattr(sys, "executable", "")
    with pytest.raises(RuntimeError, match=r"sys\.executable is empty.*num_workers=0"):
        _make()


def test_garbage_collected_env_stops_its_workers():
    e = _make(num_envs=2)
    e.reset()
    pids = e.worker_pids
    del e
    gc.collect()
    assert all(_gone(p) for p in pids)


def _rollout(env: envs.DmcEnv, state: envs.DmcState, actions: np.ndarray) -> np.ndarray:
    """Every field of every step, flattened and stacked (float64: bit-exact for float32)."""
    out = []
    for a in actions:
        state, s = env.step(state, a)
        fields = (s.obs, s.final_obs, s.reward, s.episode_return, s.episode_length)
        flags = (s.terminated, s.truncated)
        out.append(np.concatenate([np.ravel(x).astype(np.float64) for x in fields + flags]))
    return np.stack(out)


@pytest.mark.parametrize(
    "name",
    [
        "dmc/reacher-hard",  # the task moves its target in the model each episode
        "dmc/cheetah-run",  # the task counts steps in a Python attribute; contacts
    ],
)
def test_set_state_replays_the_steps_after_get_state(name):
    """get state → k steps → set state → the same k steps, bit for bit, in the same pool and in
    a fresh one laid out differently (in-process); episodes end and restart in between."""
    settings = dict(num_envs=2, seed=0, action_repeat=2, episode_length=8)
    with envs.make(name, num_workers=2, **settings) as env:
        assert isinstance(env, envs.DmcEnv)
        actions = _actions(3, 19, env)
        state, _ = env.reset(jax.random.key(1))
        for a in actions[:7]:
            state, _ = env.step(state, a)
        saved = env.get_state()
        first = _rollout(env, state, actions[7:])
        np.testing.assert_array_equal(_rollout(env, env.set_state(saved), actions[7:]), first)
    assert first[:, -2:].any()  # episodes ended (terminated or truncated) along the way
    changed = [k for k in saved if k.startswith(("model/", "task/")) and not k.endswith("/envs")]
    assert changed == {"dmc/reacher-hard": ["model/geom_pos", "model/geom_size"]}.get(
        name, ["task/int/_timeout_progress"]
    )
    with envs.make(name, num_workers=0, **settings) as fresh:
        assert isinstance(fresh, envs.DmcEnv)
        state = fresh.set_state(saved)
        assert state.steps == 7
        np.testing.assert_array_equal(_rollout(fresh, state, actions[7:]), first)


def _lqr_models(env) -> list[np.ndarray]:
    """Each environment's joint stiffnesses, which the task draws when it loads."""
    if env._local:
        return [np.asarray(e.physics.model.jnt_stiffness).copy() for e in env._local[0].envs]
    raise AssertionError("in-process environments only")


def test_a_task_that_builds_its_model_at_random_builds_the_same_for_the_same_seed():
    """dm_control's lqr draws its bodies and springs when it loads. Each environment is loaded
    with a `random` derived from the make seed and its index (unless task_kwargs gives one),
    so the same settings give the same models, in workers or in-process, and a saved state
    fits a fresh environment (a resumed run); another seed gives other models."""
    settings = dict(num_envs=2, action_repeat=1, episode_length=10)
    with (
        envs.make("dmc/lqr-lqr_2_1", seed=3, num_workers=0, **settings) as a,
        envs.make("dmc/lqr-lqr_2_1", seed=3, num_workers=0, **settings) as b,
        envs.make("dmc/lqr-lqr_2_1", seed=4, num_workers=0, **settings) as c,
        envs.make(
            "dmc/lqr-lqr_2_1", seed=3, num_workers=0, task_kwargs={"random": 11}, **settings
        ) as d,
    ):
        ma, mb, mc, md = (_lqr_models(e) for e in (a, b, c, d))
        assert all(np.array_equal(x, y) for x, y in zip(ma, mb, strict=True))
        assert not np.array_equal(ma[0], ma[1])  # each environment its own system
        assert not any(np.array_equal(x, y) for x, y in zip(ma, mc, strict=True))
        assert not np.array_equal(ma[0], md[0])  # the given random is used
        actions = _actions(5, 9, a)
        state, _ = a.reset(jax.random.key(0))
        for x in actions[:4]:
            state, _ = a.step(state, x)
        saved = a.get_state()
        first = _rollout(a, state, actions[4:])
    with envs.make("dmc/lqr-lqr_2_1", seed=3, num_workers=2, **settings) as pool:
        assert isinstance(pool, envs.DmcEnv)
        np.testing.assert_array_equal(_rollout(pool, pool.set_state(saved), actions[4:]), first)


def test_set_state_refuses_a_damaged_or_foreign_state_and_get_state_names_what_it_cannot_save():
    settings = dict(num_envs=2, seed=0, action_repeat=2, episode_length=8, num_workers=0)
    with envs.make("dmc/reacher-easy", **settings) as env:
        assert isinstance(env, envs.DmcEnv)
        state, _ = env.reset(jax.random.key(0))
        saved = env.get_state()
        bad = {
            "'handle_steps' is missing": {k: v for k, v in saved.items() if k != "handle_steps"},
            "format 9": {**saved, "format": np.asarray([9])},
            r"physics is float64\[2, 3\]": {**saved, "physics": saved["physics"][:, :3]},
            "random_key is missing": {k: v for k, v in saved.items() if k != "random_key"},
            "unknown entry 'extra'": {**saved, "extra": np.zeros(2)},
            "no array 'no_such_field'": {
                **saved,
                "model/no_such_field": np.zeros((1, 3)),
                "model/no_such_field/envs": np.zeros(1, np.int64),
            },
            "names environments outside": {**saved, "model/geom_pos/envs": np.asarray([0, 5])},
            "model as loaded here differs": {**saved, "model_crc": saved["model_crc"] + 1},
        }
        for message, state in bad.items():
            with pytest.raises(ValueError, match=message):
                env.set_state(state)
        runner = env._local[0]
        runner.envs[1].task._note = "a string"  # an attribute no state can hold
        with pytest.raises(envs.StateNotSaved, match=r"environment 1: .*'_note' \(str\)"):
            env.get_state()
        del runner.envs[1].task._note
        state = env.set_state(saved)  # still usable
        env.step(state, np.zeros((2, env.action_size), np.float32))
