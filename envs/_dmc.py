"""The dm_control suite on native MuJoCo (`dmc/<domain>-<task>`), stepped in worker processes.

Observations are dm_control's observation dicts flattened and concatenated in the task's own
key order (the order of `env.observation_spec()`, the same as dm_control's
`flat_observation=True`); `DmcEnv.observation_keys` lists the keys and their slices.

Each worker is a fresh interpreter (JAX is multithreaded, so forking after importing it is
unsafe) that runs `envs._dmc_worker` and never imports the caller's `__main__` module: a script
needs no `if __name__ == "__main__":` guard, and code read from standard input or given with
`python -c` makes environments too. Workers need a POSIX system (Linux, macOS); elsewhere
`num_workers=0` steps the environments in the calling process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import mmap
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn

import jax
import numpy as np
from jaxtyping import Float

from ._core import Env, Step, check_action_layout, check_settings, host_step, typed_key
from ._dmc_worker import BOOTSTRAP, Runner, buffer_size, load_task, shared_views

_ENV_IDS = itertools.count()


class WorkerError(RuntimeError):
    """A dm_control worker process died or failed; all workers of the environment are stopped."""


class StateNotSaved(RuntimeError):
    """`DmcEnv.get_state` cannot save a task's state (the message names what); the environment
    is unchanged and still usable."""


#: the version of `DmcEnv.get_state`'s arrays (its entry `format`)
STATE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class DmcState:
    """A host-side handle to the state of a `DmcEnv`, not a snapshot of it.

    The simulator states live in the worker processes; `step` always advances the current
    state, whatever handle it is given (the handle only has to belong to the same environment).

    Attributes:
        env_id: identifies the `DmcEnv` the handle came from.
        resets: how many times `reset` was called on that environment.
        steps: `step` calls since the last reset.
    """

    env_id: int
    resets: int
    steps: int


@functools.cache
def dmc_names() -> list[str]:
    """Names of every dm_control suite task, as `dmc/<domain>-<task>`."""
    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    return [f"dmc/{d}-{t}" for d, t in suite.ALL_TASKS]


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _shared_buffer(size: int) -> tuple[mmap.mmap, int]:
    """`size` bytes of memory that worker processes map too, and a descriptor of it to hand
    them: an anonymous file (Linux's memfd; elsewhere an unlinked temporary file)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("envs-dmc-buffer")
    else:
        fd, path = tempfile.mkstemp(prefix="envs-dmc-buffer-")
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size), fd
    except BaseException:
        os.close(fd)
        raise


def _start_worker(buffer_fd: int) -> tuple[subprocess.Popen, Connection]:
    """Start one worker interpreter (`BOOTSTRAP`), handing it its end of a pipe and the shared
    buffer as inherited descriptors. Its first message must be `_worker_path()`."""
    parent_end, child_end = mp.Pipe()
    try:
        fd = child_end.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(fd), str(buffer_fd)],
            stdin=subprocess.DEVNULL,
            pass_fds=(fd, buffer_fd),
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()  # the worker holds the only other end: its death reads as EOF
    return proc, parent_end


def _worker_path() -> list:
    """This process's `sys.path`, for the workers: they import this package (and unpickle
    `task_kwargs`) from where this process would. Relative entries ('' among them) resolved
    here: the workers start in this working directory, but nothing should hinge on it."""
    return [os.path.abspath(p) if isinstance(p, str) else p for p in sys.path]


def _shutdown(procs: list, conns: list, local: list, timeout: float = 2.0) -> None:
    """Stop worker processes: ask politely, then terminate, then kill; always reap them.
    An in-process runner (`num_workers=0`) releases its environments."""
    while local:
        local.pop().close()
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(b"close")
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for conn in conns:
        conn.close()


class DmcEnv(Env):
    """`num_envs` dm_control environments stepped in parallel worker processes.

    Each of `num_workers` processes owns a contiguous slice of the environments; actions,
    observations, rewards and flags travel through one shared-memory buffer, so a step pickles
    nothing. `reset`/`step` are not jittable (`jittable = False`) and return NumPy arrays.
    Same seed, same trajectories, whatever `num_workers`: each environment is seeded from
    `(seed of the reset key, environment index)`. With `num_workers=0` (the default for a
    single environment) the environments are stepped in the calling process instead, by the
    same code: a round trip to a worker costs more than a cheap task's step.

    If a worker dies or fails, the call raises `WorkerError` naming the worker and task, after
    every other worker has been stopped. Ctrl-C while stepping stops all workers too. Use the
    environment as a context manager or call `close()`; workers also stop when the environment
    is garbage collected or the interpreter exits.
    """

    jittable = False

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        num_envs: int,
        seed: int,
        action_repeat: int,
        episode_length: int,
        num_workers: int | None = None,
        task_kwargs: dict[str, Any] | None = None,
        start_timeout: float = 120.0,
    ):
        check_settings(num_envs, action_repeat, episode_length, seed)
        self.name = f"dmc/{domain}-{task}"
        self.num_envs, self.seed = int(num_envs), int(seed)
        self.action_repeat, self.episode_length = int(action_repeat), int(episode_length)
        self._closed = True
        self._uid = next(_ENV_IDS)  # unlike id(self), never reused by a later environment
        self._task_kwargs = dict(task_kwargs or {})
        probe = load_task(domain, task, self._task_kwargs)
        self.observation_keys = {}
        offset = 0
        for key, spec in probe.observation_spec().items():
            size = math.prod(spec.shape)
            self.observation_keys[key] = slice(offset, offset + size)
            offset += size
        self.observation_size = offset
        spec = probe.action_spec()
        self.action_size = int(spec.shape[0])
        self.action_low = np.asarray(spec.minimum, np.float32)
        self.action_high = np.asarray(spec.maximum, np.float32)
        try:  # a task whose reset fails here would fail in every worker, less clearly
            probe.reset()
        except RuntimeError as err:
            if "opengl" not in str(err).lower():
                raise
            raise ValueError(
                f"{self.name}: resetting this task needs an OpenGL rendering context ({err}); "
                "set MUJOCO_GL to a working backend (egl or osmesa) before the first import "
                f"of envs or dm_control (now MUJOCO_GL={os.environ.get('MUJOCO_GL')!r})"
            ) from err
        finally:
            probe.close()

        if num_workers is None:  # one environment gains nothing from a process of its own
            workers = 0 if self.num_envs == 1 else _default_workers()
        elif isinstance(num_workers, bool) or not isinstance(num_workers, int | np.integer):
            raise TypeError(f"num_workers must be an integer or None, got {num_workers!r}")
        elif num_workers < 0:
            raise ValueError(
                f"num_workers must be >= 0 (0: step in this process), got {num_workers}"
            )
        else:
            workers = int(num_workers)
        self.num_workers = min(workers, self.num_envs)
        if self.num_workers and os.name != "posix":
            raise NotImplementedError(
                f"{self.name}: dm_control worker processes need a POSIX system (Linux, macOS), "
                f"not {sys.platform}; pass num_workers=0 to step the environments in this process"
            )
        if self.num_workers and not sys.executable:
            raise RuntimeError(
                f"{self.name}: dm_control worker processes run this Python interpreter, but "
                "sys.executable is empty (an embedded Python); pass num_workers=0 to step the "
                "environments in this process"
            )
        if self.num_workers:
            try:  # refused here, not by each worker
                pickle.dumps(self._task_kwargs)
            except Exception as err:
                raise TypeError(
                    f"{self.name}: task_kwargs must be picklable to reach the worker processes "
                    f"({err}); pass num_workers=0 to step the environments in this process"
                ) from err
        sizes = (self.num_envs, self.observation_size, self.action_size)
        size = buffer_size(*sizes)
        buffer_fd = -1
        if self.num_workers:
            self._buffer, buffer_fd = _shared_buffer(size)
        else:
            self._buffer = bytearray(size)
        self._views = shared_views(self._buffer, *sizes)
        bounds = np.linspace(0, self.num_envs, self.num_workers + 1).round().astype(int)
        self._slices = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self._procs: list = []
        self._conns: list = []
        self._local: list = []  # with no workers: the runner of all environments, in-process
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, self._local)
        self._closed = False
        self._resets = 0
        self._steps = 0  # the steps of the latest handle (`DmcState.steps`)
        self._pending: DmcState | None = None  # the state a step in flight will return
        if not self.num_workers:
            local = (domain, task, 0, self.num_envs, sizes, self.action_repeat)
            runner = Runner(
                *local, self.episode_length, self._task_kwargs, self._buffer, model_seed=self.seed
            )
            self._local.append(runner)
            return
        try:
            path = _worker_path()
            for index, (start, stop) in enumerate(self._slices):
                proc, conn = _start_worker(buffer_fd)
                self._procs.append(proc)
                self._conns.append(conn)
                conn.send(path)
                conn.send(
                    dict(
                        index=index,
                        domain=domain,
                        task=task,
                        start=start,
                        stop=stop,
                        sizes=sizes,
                        action_repeat=self.action_repeat,
                        episode_length=self.episode_length,
                        task_kwargs=self._task_kwargs,
                        model_seed=self.seed,
                        buffer_size=size,
                    )
                )
            self._await_all(timeout=start_timeout)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(buffer_fd)  # each worker mapped the buffer; the mapping here stays

    # ----------------------------------------------------------------- public API
    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (for monitoring, and for the fault tests)."""
        return [p.pid for p in self._procs]

    def reset(self, key: Any = None) -> tuple[DmcState, Step]:
        self._check_open()
        self._check_idle("reset")
        if key is None:
            key = jax.random.key(self.seed)
        seed = _seed_from_key(key, self.name)
        self._command(f"reset:{seed}".encode())
        self._resets += 1
        self._steps = 0
        return DmcState(self._uid, self._resets, 0), self._read()

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything the next steps of the environments depend on, as NumPy arrays: MuJoCo's
        integration state (positions, velocities, activations, the solver's warm start,
        controls...), the model arrays and task attributes a task changed since it was loaded
        (a target's position, a counter), each task's random state, the episode counters and
        returns and the last observations. `set_state` of an environment made with the same
        settings (any `num_workers`) continues bit for bit where this one stands.

        Raises `StateNotSaved` naming what cannot be saved (a task attribute that is not a
        number or numeric array); the environment is unchanged then.
        """
        self._check_open()
        self._check_idle("get_state")
        parts = self._exchange(b"get_state", [None] * max(1, self.num_workers))
        errors = [p for p in parts if isinstance(p, str)]
        if errors:
            raise StateNotSaved(f"{self.name}: cannot save the state: {errors[0]}")
        out: dict[str, np.ndarray] = {
            "format": np.asarray([STATE_FORMAT], np.int64),
            "handle_steps": np.asarray([self._steps], np.int64),
        }
        for entry in dict.fromkeys(k for p in parts for k in p):
            out[entry] = np.concatenate([p[entry] for p in parts if entry in p])
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> DmcState:
        """Restore what `get_state` returned (of an environment with the same task, `num_envs`,
        `action_repeat` and `episode_length`); returns the handle to step from.

        Raises ValueError naming what does not fit (a missing or misshapen entry, a model that
        differs from the saved one's); the environments are then in no defined state: reset
        them, or restore a good state.
        """
        self._check_open()
        self._check_idle("set_state")
        if not isinstance(state, dict):
            raise TypeError(f"{self.name}: state must be a dict of arrays, got {type(state)}")
        state = dict(state)
        head = {}
        for entry in ("format", "handle_steps"):
            value = state.pop(entry, None)
            if not isinstance(value, np.ndarray) or value.shape != (1,) or value.dtype != np.int64:
                raise ValueError(f"{self.name}: the state's entry {entry!r} is missing or damaged")
            head[entry] = int(value[0])
        if head["format"] != STATE_FORMAT:
            raise ValueError(
                f"{self.name}: the state is of format {head['format']}; this version reads "
                f"format {STATE_FORMAT}"
            )
        if head["handle_steps"] < 0:
            raise ValueError(f"{self.name}: the state's entry 'handle_steps' is negative")
        parts = []
        for start, stop in self._slices or [(0, self.num_envs)]:
            part = {}
            for entry, rows in state.items():
                if entry.startswith(("model/", "task/")) and not entry.endswith("/envs"):
                    envs = state.get(entry + "/envs")
                    if not isinstance(envs, np.ndarray) or envs.ndim != 1:
                        raise ValueError(f"{self.name}: the state's {entry} has no {entry}/envs")
                    if envs.size and not (envs.min() >= 0 and envs.max() < self.num_envs):
                        raise ValueError(
                            f"{self.name}: the state's {entry}/envs names environments outside "
                            f"0..{self.num_envs - 1}"
                        )
                    if len(envs) != len(rows):
                        raise ValueError(
                            f"{self.name}: the state's {entry} has {len(rows)} rows for "
                            f"{len(envs)} environments"
                        )
                    mine = (envs >= start) & (envs < stop)
                    if mine.any():
                        part[entry] = np.asarray(rows)[mine]
                        part[entry + "/envs"] = envs[mine]
                elif not entry.endswith("/envs"):
                    part[entry] = rows[start:stop] if isinstance(rows, np.ndarray) else rows
                elif entry.removesuffix("/envs") not in state:
                    raise ValueError(f"{self.name}: the state's {entry} has no entry to go with")
            parts.append(part)
        replies = self._exchange(b"set_state", parts)
        errors = [r for r in replies if r is not None]
        if errors:
            raise ValueError(f"{self.name}: the state does not fit: {errors[0]}")
        self._steps = head["handle_steps"]
        return DmcState(self._uid, self._resets, self._steps)

    def step(self, state: DmcState, action: Float[np.ndarray, "n act"]) -> tuple[DmcState, Step]:
        self.step_async(state, action)
        return self.step_wait()

    def step_async(self, state: DmcState, action: Float[np.ndarray, "n act"]) -> None:
        """Check `action`, hand it to the workers and return while they step (with
        `num_workers=0` the step is done here, before it returns).

        `step_wait()` collects the result. Several environments started one after the other
        this way step side by side, and their workers' answers are awaited together: one
        barrier instead of one per environment. Nothing else may be called on this
        environment in between but `step_wait` and `close`.
        """
        self._check_open()
        self._check_idle("step_async")
        if not isinstance(state, DmcState) or state.env_id != self._uid:
            raise TypeError(f"{self.name}: state must be the DmcState returned by this env")
        check_action_layout(action, self.num_envs, self.action_size, self.name)
        action = np.asarray(action)
        if not np.all(np.isfinite(action)):
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(action))[0]})
            raise ValueError(
                f"{self.name}: action contains NaN or inf (environments {bad}); "
                "nothing was stepped, the environment is unchanged and still usable"
            )
        self._views["action"][:] = action
        self._send(b"step")
        self._pending = DmcState(state.env_id, state.resets, state.steps + 1)
        self._steps = state.steps + 1

    def step_wait(self) -> tuple[DmcState, Step]:
        """Wait for the step started by `step_async` and return it as `step` would."""
        self._check_open()
        state = self._pending
        if state is None:
            raise RuntimeError(f"{self.name}: no step in flight; call step_async first")
        self._pending = None
        self._await()
        return state, self._read()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    # ----------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: the environment is closed")

    def _check_idle(self, what: str) -> None:
        if self._pending is not None:
            raise RuntimeError(
                f"{self.name}: {what} while a step is in flight; call step_wait() first "
                "(the step is still running and the environment stays usable)"
            )

    def _read(self) -> Step:
        v = self._views
        return host_step(
            obs=v["obs"].copy(),
            reward=v["reward"].copy(),
            terminated=v["terminated"].copy(),
            truncated=v["truncated"].copy(),
            final_obs=v["final_obs"].copy(),
            episode_return=v["episode_return"].copy(),
            episode_length=v["episode_length"].copy(),
        )

    def _exchange(self, message: bytes, payloads: list) -> list:
        """`get_state`/`set_state` on every worker (`payloads[i]` sent after the command to
        worker i for `set_state`): their replies, in worker order. A dead or failing worker
        stops all, as for any command."""
        if self._local:
            runner = self._local[0]
            return [runner.get_state() if message == b"get_state" else runner.set_state(*payloads)]
        try:
            for index, (conn, payload) in enumerate(zip(self._conns, payloads, strict=True)):
                try:
                    conn.send_bytes(message)
                    if message == b"set_state":
                        conn.send(payload)
                except OSError:  # it died: name how (a send can meet it before a read)
                    self._fail(index, f"it died (exit code {self._exit_code(index)})")
            replies = []
            for index, conn in enumerate(self._conns):
                self._check_reply(index, conn)
                try:
                    replies.append(conn.recv())
                except (EOFError, OSError):
                    self._fail(index, f"it died (exit code {self._exit_code(index)})")
            return replies
        except BaseException:
            self.close()
            raise

    def _command(self, message: bytes) -> None:
        """Send `message` to every worker and wait for all answers; stop all on any failure."""
        self._send(message)
        self._await()

    def _send(self, message: bytes) -> None:
        """Hand `message` to every worker; with no workers, carry it out here and now. Any
        failure (Ctrl-C half-way through the environments included) closes the environment."""
        try:
            for runner in self._local:
                runner.run(message)
            for index, conn in enumerate(self._conns):
                try:
                    conn.send_bytes(message)
                except OSError:  # it died: name how (a send can meet it before a read)
                    self._fail(index, f"it died (exit code {self._exit_code(index)})")
        except BaseException:
            self.close()
            raise

    def _await(self) -> None:
        # Blocking reads in order: a dead worker's pipe reads as EOF (only the worker holds
        # its end), and Ctrl-C interrupts the read. Cheaper than a select() per step.
        try:
            for index, conn in enumerate(self._conns):
                self._check_reply(index, conn)
        except BaseException:
            self.close()
            raise

    def _await_all(self, timeout: float) -> None:
        """Wait for every worker's first answer, `timeout` seconds for all of them (start-up).
        A worker that dies reads as EOF on its pipe: it held the only other end."""
        pending = dict(enumerate(self._conns))
        deadline = time.monotonic() + timeout
        while pending:
            ready = wait(list(pending.values()), max(0.0, deadline - time.monotonic()))
            if not ready:
                self._fail(min(pending), f"it did not answer within {timeout} s")
            for conn in ready:
                index = self._conns.index(conn)
                self._check_reply(index, conn)
                pending.pop(index)

    def _check_reply(self, index: int, conn: Any) -> None:
        try:
            reply = conn.recv_bytes()
        except (EOFError, OSError):
            self._fail(index, f"it died (exit code {self._exit_code(index)})")
        if reply != b"ok":
            self._fail(index, "it raised:\n" + reply.removeprefix(b"error:").decode())

    def _exit_code(self, index: int) -> int | None:
        """The exit status of worker `index` (negative: the signal that ended it), waiting up
        to a second for it to exit; None if it still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._procs[index].wait(1.0)
        return self._procs[index].returncode

    def _fail(self, index: int, what: str) -> NoReturn:
        start, stop = self._slices[index]
        pid = self._procs[index].pid
        self.close()
        raise WorkerError(
            f"dm_control worker {index} (pid {pid}, environments {start}..{stop - 1}) of "
            f"{self.name!r} failed: {what}. All workers of this environment were shut down."
        )


def _seed_from_key(key: Any, name: str = "dmc") -> int:
    """A 32-bit integer seed derived from a JAX PRNG key (typed or legacy)."""
    return int(jax.random.bits(typed_key(key, name), (), dtype=np.uint32))
