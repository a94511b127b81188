"""The worker process of the dm_control backend, and the shared-memory layout both sides use.

A worker owns a contiguous slice of the environments. Per step the parent writes actions into
shared memory and sends a few bytes (`b"step"`); the worker steps its environments, writes
observations, rewards and flags into shared memory and answers `b"ok"`. No array is pickled.

A worker is a fresh interpreter running `BOOTSTRAP` (`python -c`), handed two inherited file
descriptors: its end of the pipe and the shared buffer. It never imports the parent's
`__main__` module (multiprocessing's `spawn` does, to unpickle objects defined there), so a
script needs no `if __name__ == "__main__":` guard, and code read from standard input or given
with `python -c` works too.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import traceback
from typing import Any

import numpy as np
from dm_env import StepType

_LAST = StepType.LAST

# Fields of the shared buffer: name → (dtype, per-environment shape as a function of sizes).
_FIELDS: tuple[tuple[str, Any, str], ...] = (
    ("action", np.float32, "act"),
    ("obs", np.float32, "obs"),
    ("final_obs", np.float32, "obs"),
    ("reward", np.float32, ""),
    ("episode_return", np.float32, ""),
    ("episode_length", np.int32, ""),
    ("terminated", np.bool_, ""),
    ("truncated", np.bool_, ""),
)


def buffer_size(num_envs: int, obs_size: int, action_size: int) -> int:
    """Bytes needed for all shared arrays (each field 8-byte aligned)."""
    return sum(_field_bytes(num_envs, obs_size, action_size, f) for f in _FIELDS)


def _field_bytes(n: int, obs: int, act: int, field: tuple[str, Any, str]) -> int:
    _, dtype, kind = field
    width = {"obs": obs, "act": act, "": 1}[kind]
    return -(-n * width * np.dtype(dtype).itemsize // 8) * 8


def shared_views(buffer: Any, num_envs: int, obs_size: int, action_size: int) -> dict:
    """NumPy views of the shared buffer, identical in parent and workers."""
    raw = memoryview(buffer).cast("B")
    views, offset = {}, 0
    for field in _FIELDS:
        name, dtype, kind = field
        shape = {"obs": (num_envs, obs_size), "act": (num_envs, action_size), "": (num_envs,)}
        count = math.prod(shape[kind])
        views[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(
            shape[kind]
        )
        offset += _field_bytes(num_envs, obs_size, action_size, field)
    return views


def env_seed(seed: int, index: int) -> int:
    """Seed of environment `index` for a reset with `seed`: independent of the worker layout."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def load_task(domain: str, task: str, task_kwargs: dict) -> Any:
    """Load a dm_control suite task without its own time limit (the wrapper applies one)."""
    os.environ.setdefault("MUJOCO_GL", "disable")
    from absl import logging as absl_logging
    from dm_control import suite

    kwargs = {"time_limit": float("inf"), **task_kwargs}
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # model-compiler deprecation notices
    try:
        return suite.load(domain, task, task_kwargs=kwargs)
    finally:
        absl_logging.set_verbosity(verbosity)


# The program of a worker process. Until the parent's `sys.path` is in place it uses only the
# standard library: the interpreter's own path may not lead to this package (a checkout that is
# not installed, a directory the script added). SIGINT is ignored first thing: Ctrl-C in a
# terminal reaches the workers too, and the parent alone handles it (it stops the workers).
BOOTSTRAP = f"""\
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
try:
    sys.path[:] = conn.recv()
    from {__name__} import serve
except BaseException:
    import traceback
    try:
        conn.send_bytes(b"error:" + traceback.format_exc().encode())
    except OSError:
        pass
    raise SystemExit(1)
serve(conn, int(sys.argv[2]))
"""


def serve(conn: Any, buffer_fd: int) -> None:
    """Body of a worker process: map the shared buffer (`buffer_fd`, an inherited descriptor),
    read the settings the parent sends and serve its commands (`worker_main`)."""
    try:
        settings = conn.recv()
        buffer = mmap.mmap(buffer_fd, settings.pop("buffer_size"))
    except BaseException as err:
        hint = ""
        if "__main__" in str(err):
            hint = (
                "\nA worker does not import the script that made the environment (its "
                "__main__ module): task_kwargs may hold only objects defined in an importable "
                "module."
            )
        with contextlib.suppress(OSError):
            conn.send_bytes(b"error:" + (traceback.format_exc() + hint).encode())
        return
    finally:
        os.close(buffer_fd)
    worker_main(**settings, buffer=buffer, conn=conn)


def worker_main(
    index: int,
    domain: str,
    task: str,
    start: int,
    stop: int,
    sizes: tuple[int, int, int],
    action_repeat: int,
    episode_length: int,
    task_kwargs: dict,
    buffer: Any,
    conn: Any,
) -> None:
    """Serve `reset`/`step` commands for environments `start..stop-1` until told to close.

    Ctrl-C is ignored here: the parent receives it and shuts the workers down. A closed pipe
    (the parent exited, however) ends the worker too, so no worker outlives its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = Runner(
            domain, task, start, stop, sizes, action_repeat, episode_length, task_kwargs, buffer
        )
        conn.send_bytes(b"ok")
    except BaseException:
        conn.send_bytes(b"error:" + traceback.format_exc().encode())
        return
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if message == b"close":
            return
        try:
            runner.run(message)
            conn.send_bytes(b"ok")
        except BaseException:
            with contextlib.suppress(OSError):
                conn.send_bytes(b"error:" + traceback.format_exc().encode())
            return


class Runner:
    """The environments of one worker (or, with no workers, all of them in the parent) and
    their running episode statistics."""

    def __init__(
        self,
        domain: str,
        task: str,
        start: int,
        stop: int,
        sizes: tuple[int, int, int],
        action_repeat: int,
        episode_length: int,
        task_kwargs: dict,
        buffer: Any,
    ):
        self.envs = [load_task(domain, task, task_kwargs) for _ in range(start, stop)]
        self.start, self.stop = start, stop
        self.action_repeat, self.episode_length = action_repeat, episode_length
        v = shared_views(buffer, *sizes)
        sl = slice(start, stop)
        self.action, self.obs, self.final_obs = v["action"][sl], v["obs"][sl], v["final_obs"][sl]
        self.reward, self.terminated, self.truncated = (
            v["reward"][sl],
            v["terminated"][sl],
            v["truncated"][sl],
        )
        self.out_return, self.out_length = v["episode_return"][sl], v["episode_length"][sl]
        spec = self.envs[0].action_spec()
        low = np.asarray(spec.minimum, np.float64)
        high = np.asarray(spec.maximum, np.float64)
        # a in [-1, 1] → low + (a + 1) / 2 · (high − low) = a · half_range + mid
        self.half_range, self.mid = (high - low) / 2.0, (high + low) / 2.0
        # (key, start, stop, flat) in the flat observation, in the task's own key order.
        self.slots = []
        offset = 0
        for key, s in self.envs[0].observation_spec().items():
            size = math.prod(s.shape)
            self.slots.append((key, offset, offset + size, len(s.shape) <= 1))
            offset += size
        n = stop - start
        self.ep_return = [0.0] * n
        self.ep_length = [0] * n
        from dm_control.rl.control import PhysicsError

        self.physics_error = PhysicsError

    def run(self, message: bytes) -> None:
        """Carry out one command of the parent: `b"step"` or `b"reset:<seed>"`."""
        if message == b"step":
            self.step()
        else:
            self.reset(int(message.removeprefix(b"reset:")))

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    def _write(self, out: np.ndarray, observation: dict) -> None:
        for key, a, b, flat in self.slots:
            out[a:b] = observation[key] if flat else np.ravel(observation[key])

    def reset(self, seed: int) -> None:
        for j, env in enumerate(self.envs):
            env.task.random.seed(env_seed(seed, self.start + j))
            self._write(self.obs[j], env.reset().observation)
        self.final_obs[:] = self.obs
        self.reward[:] = 0.0
        self.terminated[:] = False
        self.truncated[:] = False
        self.ep_return = [0.0] * len(self.envs)
        self.ep_length = [0] * len(self.envs)
        self.out_return[:] = 0.0
        self.out_length[:] = 0

    def step(self) -> None:
        # The per-environment loop writes Python scalars; array work is a few whole-slice ops,
        # so that a worker's overhead stays small next to a cheap task's physics step.
        ctrl = np.clip(self.action, -1.0, 1.0) * self.half_range + self.mid
        repeat, limit_steps = self.action_repeat, self.episode_length
        obs, final_obs, envs, write = self.obs, self.final_obs, self.envs, self._write
        ep_return, ep_length = self.ep_return, self.ep_length  # Python lists
        rewards, terminals, limits, ended = [], [], [], []
        for j, env in enumerate(envs):
            total, count, observation, terminal, limit = 0.0, 0, None, False, False
            for _ in range(repeat):
                try:
                    ts = env.step(ctrl[j])
                except self.physics_error:
                    # Diverged simulation: end the episode as terminal, keep the last good obs.
                    terminal = True
                    count += 1
                    break
                total += ts.reward or 0.0
                count += 1
                observation = ts.observation
                if ts.step_type is _LAST:
                    # dm_control marks a terminal state with discount 0; a last step with
                    # discount 1 is its own time limit (a `time_limit` in task_kwargs).
                    terminal = not ts.discount
                    limit = not terminal
                    break
            if observation is not None:
                write(final_obs[j], observation)
            else:
                final_obs[j] = obs[j]
            ep_return[j] += total
            ep_length[j] += count
            limit = not terminal and (limit or ep_length[j] >= limit_steps)
            rewards.append(total)
            terminals.append(terminal)
            limits.append(limit)
            if terminal or limit:
                ended.append(j)
        self.reward[:] = rewards
        self.terminated[:] = terminals
        self.truncated[:] = limits
        self.out_return[:] = ep_return
        self.out_length[:] = ep_length
        obs[:] = final_obs
        for j in ended:
            write(obs[j], envs[j].reset().observation)
            ep_return[j] = 0.0
            ep_length[j] = 0
