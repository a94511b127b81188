"""The worker process of the dm_control backend, and the shared-memory layout both sides use.

A worker owns a contiguous slice of the environments. Per step the parent writes actions into
shared memory and sends a few bytes (`b"step"`); the worker steps its environments, writes
observations, rewards and flags into shared memory and answers `b"ok"`. No array is pickled.

`b"get_state"` and `b"set_state"` (followed by the state, pickled over the pipe: these are
rare) save and restore everything the next steps depend on (`Runner.get_state`).

A worker is a fresh interpreter running `BOOTSTRAP` (`python -c`), handed two inherited file
descriptors: its end of the pipe and the shared buffer. It never imports the parent's
`__main__` module (multiprocessing's `spawn` does, to unpickle objects defined there), so a
script needs no `if __name__ == "__main__":` guard, and code read from standard input or given
with `python -c` works too.
"""

from __future__ import annotations

import contextlib
import copy
import math
import mmap
import os
import signal
import traceback
import zlib
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


def load_seed(seed: int, index: int) -> int:
    """The `random` environment `index` is loaded with when `task_kwargs` names none: a task
    that builds its model at random when loaded (lqr) then builds the same model for the same
    `seed` and index, in every process and whatever the worker layout, so a run replays and a
    saved state fits the environments of its resumption. Distinct from the reset seeds."""
    return int(np.random.SeedSequence([seed, index, 0x10AD]).generate_state(1)[0])


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
    model_seed: int | None = None,
) -> None:
    """Serve `reset`/`step` commands for environments `start..stop-1` until told to close.

    Ctrl-C is ignored here: the parent receives it and shuts the workers down. A closed pipe
    (the parent exited, however) ends the worker too, so no worker outlives its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = Runner(
            domain,
            task,
            start,
            stop,
            sizes,
            action_repeat,
            episode_length,
            task_kwargs,
            buffer,
            model_seed=model_seed,
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
            if message == b"get_state":
                reply = runner.get_state()
            elif message == b"set_state":
                reply = runner.set_state(conn.recv())
            else:
                reply = runner.run(message)
            conn.send_bytes(b"ok")
            if message in (b"get_state", b"set_state"):
                conn.send(reply)
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
        model_seed: int | None = None,
    ):
        def kwargs(index: int) -> dict:
            if model_seed is None or "random" in task_kwargs:
                return task_kwargs
            return {**task_kwargs, "random": load_seed(model_seed, index)}

        self.envs = [load_task(domain, task, kwargs(i)) for i in range(start, stop)]
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
        # As loaded, for `set_state`: each environment's model arrays (one copy shared by the
        # environments whose models are equal, as a task's are unless it builds them at
        # random), their checksum, and the task's attributes.
        self.loaded_models: list[dict[str, np.ndarray]] = []
        self.model_crcs: list[int] = []
        for env in self.envs:
            arrays = _model_arrays(env.physics.model.ptr)
            same = next((m for m in self.loaded_models if _equal_arrays(m, arrays)), None)
            self.loaded_models.append(same or {k: v.copy() for k, v in arrays.items()})
            self.model_crcs.append(_crc_of_arrays(self.loaded_models[-1]))
        self.loaded_attrs = [copy.deepcopy(_task_attrs(env)) for env in self.envs]

    def run(self, message: bytes) -> None:
        """Carry out one command of the parent: `b"step"` or `b"reset:<seed>"`."""
        if message == b"step":
            self.step()
        else:
            self.reset(int(message.removeprefix(b"reset:")))

    # ----------------------------------------------------------------- state
    def get_state(self) -> dict[str, np.ndarray] | str:
        """Everything the next steps of these environments depend on, as NumPy arrays stacked
        over the environments (`SNAPSHOT_ENTRIES`), or a message naming what cannot be saved.

        Model arrays (`model/<field>`) and task attributes (`task/<kind>/<name>`) are saved
        only where they differ from the task as loaded, with the indices of their environments
        in `<entry>/envs`.
        """
        physics, keys, pos, has_gauss, gauss, counters = [], [], [], [], [], []
        ragged: dict[str, tuple[list, list]] = {}
        for j, env in enumerate(self.envs):
            index = self.start + j
            p = env.physics
            physics.append(_integration_state(p))
            name, key, position, has, cached = env.task.random.get_state()
            if name != "MT19937":
                return f"environment {index}: its random state is a {name}, not an MT19937"
            keys.append(np.asarray(key, np.uint32))
            pos.append(position)
            has_gauss.append(has)
            gauss.append(cached)
            counters.append((self.ep_length[j], env._step_count, int(env._reset_next_step)))
            loaded = self.loaded_models[j]
            for field, value in _model_arrays(p.model.ptr).items():
                if not _equal(value, loaded[field]):
                    rows, envs = ragged.setdefault(f"model/{field}", ([], []))
                    rows.append(np.array(value))
                    envs.append(index)
            attrs, before = _task_attrs(env), self.loaded_attrs[j]
            for attr, value in attrs.items():
                if attr in before and _same_attr(value, before[attr]):
                    continue
                kind = _attr_kind(value)
                if kind is None:
                    return (
                        f"environment {index}: its task's attribute {attr!r} "
                        f"({type(value).__name__}) changed since the task was loaded, and only "
                        "numbers and numeric NumPy arrays can be saved"
                    )
                rows, envs = ragged.setdefault(f"task/{kind}/{attr}", ([], []))
                rows.append(np.array(value))
                envs.append(index)
            gone = sorted(set(before) - set(attrs))
            if gone:
                return f"environment {index}: its task deleted its attributes {gone}"
        out = {
            "physics": np.stack(physics),
            "random_key": np.stack(keys),
            "random_pos": np.asarray(pos, np.int64),
            "random_has_gauss": np.asarray(has_gauss, np.int64),
            "random_gauss": np.asarray(gauss, np.float64),
            "counters": np.asarray(counters, np.int64).reshape(-1, 3),
            "episode_return": np.asarray(self.ep_return, np.float64),
            "obs": self.obs.copy(),
            "model_crc": np.asarray(self.model_crcs, np.int64),
        }
        for entry, (rows, envs) in ragged.items():
            try:
                out[entry] = np.stack(rows)
            except ValueError:
                shapes = sorted({r.shape for r in rows})
                return f"{entry} has different shapes in different environments ({shapes})"
            out[entry + "/envs"] = np.asarray(envs, np.int64)
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> str | None:
        """Restore what `get_state` saved (this runner's rows of it, their environment indices
        global); None, or a message naming what does not fit (then nothing was changed)."""
        n = len(self.envs)
        problem = self._check_state(state, n)
        if problem is not None:
            return problem
        ragged: list[tuple[int, str, str, np.ndarray]] = []  # (env, kind, name, value)
        for entry, rows in state.items():
            if entry.endswith("/envs") or not entry.startswith(("model/", "task/")):
                continue
            if entry.startswith("model/"):
                kind, name = "model", entry.removeprefix("model/")
            else:
                _, kind, name = entry.split("/")
            for row, index in zip(rows, state[entry + "/envs"], strict=True):
                ragged.append((int(index) - self.start, kind, name, row))
        for j, env in enumerate(self.envs):
            p = env.physics
            arrays, loaded = _model_arrays(p.model.ptr), self.loaded_models[j]
            for field, value in arrays.items():
                if not _equal(value, loaded[field]):
                    _set_model(p.model.ptr, field, loaded[field])
            for attr in set(_task_attrs(env)) - set(self.loaded_attrs[j]):
                delattr(env.task, attr)
            for attr, value in copy.deepcopy(self.loaded_attrs[j]).items():
                setattr(env.task, attr, value)
        for j, kind, name, value in ragged:
            env = self.envs[j]
            if kind == "model":
                _set_model(env.physics.model.ptr, name, value)
            else:
                setattr(env.task, name, _attr_value(kind, value))
        for j, env in enumerate(self.envs):
            p = env.physics
            _set_integration_state(p, state["physics"][j])
            key = state["random_key"][j]
            env.task.random.set_state(
                (
                    "MT19937",
                    key,
                    int(state["random_pos"][j]),
                    int(state["random_has_gauss"][j]),
                    float(state["random_gauss"][j]),
                )
            )
            length, step_count, reset_next = (int(x) for x in state["counters"][j])
            self.ep_length[j] = length
            env._step_count = step_count
            env._reset_next_step = bool(reset_next)
            self.ep_return[j] = float(state["episode_return"][j])
        self.obs[:] = state["obs"]
        return None

    def _check_state(self, state: Any, n: int) -> str | None:
        """What is wrong with `state` for these environments, or None."""
        if not isinstance(state, dict):
            return f"the state is a {type(state).__name__}, not a dict"
        size = _integration_state(self.envs[0].physics).size
        fixed = {
            "physics": (np.float64, (n, size)),
            "random_key": (np.uint32, (n, 624)),
            "random_pos": (np.int64, (n,)),
            "random_has_gauss": (np.int64, (n,)),
            "random_gauss": (np.float64, (n,)),
            "counters": (np.int64, (n, 3)),
            "episode_return": (np.float64, (n,)),
            "obs": (np.float32, self.obs.shape),
            "model_crc": (np.int64, (n,)),
        }
        for entry, (dtype, shape) in fixed.items():
            problem = _check_array(state, entry, dtype, shape)
            if problem is not None:
                return problem
        for j in range(n):
            if int(state["model_crc"][j]) != self.model_crcs[j]:
                return (
                    f"environment {self.start + j}: its model as loaded here differs from the "
                    "one the state was saved with (a task that builds its model at random when "
                    "loaded, or another version of MuJoCo or dm_control)"
                )
        if not np.all((state["random_pos"] >= 0) & (state["random_pos"] <= 624)):
            return "random_pos is outside 0..624"
        if np.any(state["counters"] < 0):
            return "counters holds negative counts"
        fields = _model_arrays(self.envs[0].physics.model.ptr)
        attr_kinds = ("int", "float", "bool", "scalar", "array")
        for entry, rows in state.items():
            if entry in fixed or entry.endswith("/envs"):
                continue
            if entry.startswith("model/"):
                field = fields.get(entry.removeprefix("model/"))
                if field is None:
                    return f"{entry}: the model has no array {entry.removeprefix('model/')!r}"
                dtype, shape = field.dtype, field.shape
            elif entry.startswith("task/") and entry.split("/")[1] in attr_kinds:
                if entry.count("/") != 2 or not entry.split("/")[2].isidentifier():
                    return f"{entry}: not a task attribute's entry"
                if not isinstance(rows, np.ndarray):
                    return f"{entry} is a {type(rows).__name__}, not an array"
                dtype, shape = rows.dtype, rows.shape[1:]
                if dtype.kind not in "biuf":
                    return f"{entry} holds {dtype}, not numbers"
            else:
                return f"unknown entry {entry!r}"
            if not isinstance(state.get(entry + "/envs"), np.ndarray):
                return f"{entry} comes without {entry}/envs"
            envs = state[entry + "/envs"]
            problem = _check_array(state, entry, dtype, (len(envs), *shape))
            if problem is None and (envs.dtype != np.int64 or envs.ndim != 1):
                problem = f"{entry}/envs is {envs.dtype}{list(envs.shape)}, not int64[m]"
            if problem is None and not np.all((envs >= self.start) & (envs < self.stop)):
                problem = f"{entry}/envs names environments outside {self.start}..{self.stop - 1}"
            if problem is None and len(set(envs.tolist())) != len(envs):
                problem = f"{entry}/envs names an environment twice"
            if problem is not None:
                return problem
        for entry in state:
            if entry.endswith("/envs") and entry.removesuffix("/envs") not in state:
                return f"{entry} comes without {entry.removesuffix('/envs')}"
        return None

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


#: model arrays that only rendering reads (textures: megabytes per model), not saved
_VISUAL_ONLY = ("tex_",)
_MODEL_FIELDS: dict[type, tuple[str, ...]] = {}


def _mujoco() -> Any:
    import importlib

    return importlib.import_module("mujoco")


def _integration_state(physics: Any) -> np.ndarray:
    """MuJoCo's integration state (`mjSTATE_INTEGRATION`: time, positions, velocities,
    activations, the solver's warm start, controls, applied forces, mocap, equality flags,
    user and plugin data): what `mj_step` reads of `mjData`."""
    return physics.get_state(_mujoco().mjtState.mjSTATE_INTEGRATION)


def _set_integration_state(physics: Any, state: np.ndarray) -> None:
    """Set the integration state and recompute what depends on positions and velocities
    (`mj_step1`), as dm_control's own step leaves `mjData` after each step."""
    mujoco = _mujoco()
    physics.set_state(np.asarray(state, np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_step1(physics.model.ptr, physics.data.ptr)


def _model_arrays(model: Any) -> dict[str, np.ndarray]:
    """The arrays of an `mujoco.MjModel` (views into it) a task may change between episodes
    (a target's position, a damping), textures aside; the fields of `model.opt` as
    `opt.<name>` (copies)."""
    names = _MODEL_FIELDS.get(type(model))
    if names is None:
        names = tuple(
            n
            for n in dir(model)
            if not n.startswith(("_", *_VISUAL_ONLY))
            and isinstance(getattr(model, n, None), np.ndarray)
        )
        opt = model.opt
        names += tuple(
            f"opt.{n}"
            for n in dir(opt)
            if not n.startswith("_") and isinstance(getattr(opt, n), np.ndarray | int | float)
        )
        _MODEL_FIELDS[type(model)] = names
    out = {}
    for n in names:
        if n.startswith("opt."):
            out[n] = np.array(getattr(model.opt, n[4:]))
        else:
            out[n] = getattr(model, n)
    return out


def _set_model(model: Any, field: str, value: np.ndarray) -> None:
    if field.startswith("opt."):
        current = getattr(model.opt, field[4:])
        if isinstance(current, np.ndarray):
            current[...] = value
        else:
            setattr(model.opt, field[4:], type(current)(value.item()))
    else:
        getattr(model, field)[...] = value


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaNs included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(_bytes(a), _bytes(b)))


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _equal_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)


def _crc_of_arrays(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(_bytes(arrays[name]).data, crc)
    return crc


def _task_attrs(env: Any) -> dict[str, Any]:
    """The task's own attributes, its random state aside (saved on its own)."""
    return {k: v for k, v in vars(env.task).items() if k != "_random"}


def _same_attr(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        return _equal(np.asarray(a), np.asarray(b))
    try:
        return bool(a == b)
    except Exception:  # an attribute whose == does not give a truth value
        return False


def _attr_kind(value: Any) -> str | None:
    """How a task attribute is saved: Python int/float/bool, NumPy scalar or array; None: it
    cannot be."""
    if type(value) in (bool, int, float):
        if type(value) is int and not -(2**63) <= value < 2**63:
            return None
        return type(value).__name__
    if isinstance(value, np.generic | np.ndarray) and value.dtype.kind in "biuf":
        return "scalar" if isinstance(value, np.generic) else "array"
    return None


def _attr_value(kind: str, value: np.ndarray) -> Any:
    if kind in ("int", "float", "bool"):
        return {"int": int, "float": float, "bool": bool}[kind](value.item())
    return value[()] if kind == "scalar" else np.array(value)


def _check_array(state: dict, entry: str, dtype: Any, shape: tuple) -> str | None:
    value = state.get(entry)
    if value is None:
        return f"{entry} is missing"
    if not isinstance(value, np.ndarray):
        return f"{entry} is a {type(value).__name__}, not an array"
    if value.dtype != np.dtype(dtype) or value.shape != tuple(shape):
        want = f"{np.dtype(dtype)}{list(shape)}"
        return f"{entry} is {value.dtype}{list(value.shape)}, not {want}"
    return None
