"""The shared trainer: any agent, JAX or host environments, vmapped seeds, sinks, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import envs
import neurosurgery as ns

from ..algorithms import BRO, DACER, SAC, Agent
from ._config import TrainConfig, WandbConfig, config_to_dict
from ._host import HostEnvs, step_all
from ._loop import Loop, TrainState
from ._surgery import Surgery

Callback = Callable[[int, dict[str, np.ndarray]], None]
CHECKPOINT = "checkpoint.ckpt"
#: options that may differ between a run and its resumption (steps: a run can be extended;
#: env_workers: dm_control trajectories do not depend on the worker count; shard_seeds: the
#: records do not depend on where the seeds run; keep_checkpoints: files only; published: read
#: by reports only)
RUNTIME_OPTIONS = (
    "run_dir",
    "sinks",
    "progress",
    "steps",
    "env_workers",
    "wandb",
    "shard_seeds",
    "keep_checkpoints",
    "published",
)
_JIT_CACHE: dict[Any, dict[str, Any]] = {}


def program_options(config: TrainConfig) -> dict[str, Any]:
    """The configuration minus runtime options (JSON form): what a run's state and programs
    depend on."""
    d = config_to_dict(config)
    for k in RUNTIME_OPTIONS:
        d.pop(k)
    return json.loads(json.dumps(d))


def _program_key(config: TrainConfig) -> Any:
    """The configuration as a program depends on it (seed values and runtime options aside):
    the config object itself, so that metric and strategy objects count by value or identity."""
    runtime = {
        "run_dir": "",
        "sinks": (),
        "progress": False,
        "steps": 1,
        "env_workers": None,
        "wandb": WandbConfig(),
        "keep_checkpoints": False,
        "published": None,
    }
    return dataclasses.replace(config, seeds=tuple(range(len(config.seeds))), **runtime)


class NonFiniteError(RuntimeError):
    """A loss or parameter became NaN/inf; the run stopped, the last good checkpoint is kept."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "equinox", "optax", "numpy", "neurosurgery", "brax", "playground"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def make_env(config: TrainConfig, num_envs: int, seed: int) -> envs.Env:
    """Build the run's environment with `envs.make`."""
    options: dict[str, Any] = {}
    if config.env_workers is not None:
        options["num_workers"] = config.env_workers
    if config.env_impl is not None:
        options["impl"] = config.env_impl
    return envs.make(
        config.env,
        num_envs=num_envs,
        seed=seed,
        action_repeat=config.action_repeat,
        episode_length=config.episode_length,
        **options,
    )


def make_agent(config: TrainConfig, obs_size: int, action_size: int) -> Agent:
    if config.agent == "sac":
        strategy = config.reset.strategy()
        if isinstance(strategy, ns.PlasticityInjection):
            return SAC(
                config.sac,
                obs_size,
                action_size,
                injection=strategy,
                injected=config.reset.networks,
            )
        return SAC(config.sac, obs_size, action_size)
    if config.agent == "bro":
        return BRO(config.bro, obs_size, action_size, config.replay_ratio, config.learning_starts)
    if config.agent == "dacer":
        return DACER(config.dacer, obs_size, action_size)
    raise ValueError(f"unknown agent {config.agent!r}")


def _seed_key(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed))


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def seeds_in_sequence(config: TrainConfig) -> bool:
    """Whether the seeds of a run are computed one after the other in the compiled program
    (`lax.map`) instead of side by side (`vmap`): MuJoCo Warp's environments batch themselves
    and cannot be vmapped again over seeds (mujoco 3.17.0)."""
    return config.env_impl == "warp"


def seed_sharding(config: TrainConfig) -> jax.sharding.NamedSharding | None:
    """With `shard_seeds`, the sharding of arrays whose first axis is the seed axis over the
    process's devices (`jax.devices()`), one block of seeds per device; else None."""
    if not config.shard_seeds:
        return None
    devices = jax.devices()
    if len(config.seeds) % len(devices):
        raise ValueError(
            f"shard_seeds: {len(config.seeds)} seeds do not split evenly over this process's "
            f"{len(devices)} devices; give a multiple of {len(devices)} seeds, or leave "
            "shard_seeds off"
        )
    mesh = jax.sharding.Mesh(np.asarray(devices), ("seeds",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))


def _over_seeds(fn: Callable, n_seeds: int, in_axes: Any = 0, sequential: bool = False) -> Callable:
    """`jax.vmap(fn, in_axes)` over the leading seed axis (`in_axes`: 0 or None per argument).
    With one seed, `fn` runs on the arguments without that axis and its outputs get it back:
    a size-1 vmap turns every matrix product into a batched one, which costs about 10 % of a
    SAC update on CPU. With `sequential`, the seeds run one after the other (`lax.map`)."""
    per_arg = lambda args: zip(
        args, in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args), strict=True
    )
    if n_seeds > 1 and sequential:

        def in_sequence(*args):
            # unmapped arguments travel as None (an empty pytree) and are put back per seed
            mapped = tuple(None if ax is None else a for a, ax in per_arg(args))
            one = lambda xs: fn(*(a if x is None else x for a, x in zip(args, xs, strict=True)))
            return jax.lax.map(one, mapped)

        return in_sequence
    if n_seeds > 1:
        return jax.vmap(fn, in_axes=in_axes)
    take = lambda tree: jax.tree.map(lambda x: x[0], tree)

    def one(*args):
        args = tuple(a if ax is None else take(a) for a, ax in per_arg(args))
        return jax.tree.map(lambda x: x[None], fn(*args))

    return one


def _over_seeds_sharded(
    fn: Callable,
    n_seeds: int,
    in_axes: Any = 0,
    sequential: bool = False,
    sharding: jax.sharding.NamedSharding | None = None,
) -> Callable:
    """`_over_seeds`, and with a seed sharding, run on each device for its block of seeds
    (`shard_map`): each device computes exactly what a run of its seeds alone computes, so the
    records are those of the unsharded run."""
    if sharding is None:
        return _over_seeds(fn, n_seeds, in_axes, sequential)
    mesh = sharding.mesh
    local = _over_seeds(fn, n_seeds // mesh.size, in_axes, sequential)
    seeds, whole = jax.sharding.PartitionSpec("seeds"), jax.sharding.PartitionSpec()

    def call(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        specs = tuple(whole if ax is None else seeds for ax in axes)
        mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=seeds, check_vma=False)
        return mapped(*args)

    return call


class Trainer:
    """Holds the compiled functions of one run; `run()` trains to `config.steps`."""

    #: XLA options of the trainer's compiled functions (None: XLA's defaults). On CPU,
    #: `{"xla_backend_optimization_level": 0}` compiles them about 4× faster and runs them
    #: slower: worth it for short runs such as tests.
    compiler_options: dict[str, Any] | None = None
    #: Step host environments (dm_control) from inside the compiled program, in pieces of at
    #: most `piece_bodies` learning bodies (`piece_warmup` warm-up env steps) per call (see
    #: `_host`); False: the Python loop with one compiled call per env step (the same
    #: trajectory, slower; kept to compare with).
    host_in_program: bool = True
    piece_bodies: int = 16
    piece_warmup: int = 256

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = ()):
        config.validate()
        self.config, self.callbacks = config, list(callbacks)
        c, seeds = config, list(config.seeds)
        env = make_env(c, c.num_envs, seeds[0])
        eval_env = make_env(c, c.eval_episodes, seeds[0] + 10_000)
        self.jittable = bool(env.jittable)
        # JAX environments are vmapped over seeds; host environments need one object per seed
        self.envs, self.eval_envs = [env], [eval_env]
        if not self.jittable:
            self.envs += [make_env(c, c.num_envs, s) for s in seeds[1:]]
            self.eval_envs += [make_env(c, c.eval_episodes, s + 10_000) for s in seeds[1:]]
        self.agent = make_agent(c, env.observation_size, env.action_size)
        self.surgery = Surgery.of(c)
        self.sharding = seed_sharding(c)
        in_program = self.host_in_program and self.sharding is None and not seeds_in_sequence(c)
        self.host = HostEnvs(self.envs) if not self.jittable and in_program else None
        self.loop = Loop(self.agent, self.host or env, c, self.surgery)
        self.keys = self.place(jnp.stack([_seed_key(s) for s in seeds]))
        n, per_body = c.num_envs, self.loop.env_per_body
        self.bodies = max(1, math.ceil(c.log_every / (n * per_body)))
        self.segment_env_steps = self.bodies * per_body * n
        self.warmup_vec = math.ceil(c.learning_starts / n)
        self.eval_length = c.episode_length // c.action_repeat + 1
        self.compile_s = 0.0
        self._jit_cached()

    # --- compiled functions ------------------------------------------------------------------
    def _jit_cached(self) -> None:
        """Reuse the compiled functions of an earlier trainer with the same program in-process.

        The functions depend on the configuration (seed values and runtime options aside) and
        on `compiler_options`, not on the seeds themselves, so a resumed run or a repeated call
        does not compile again.
        """
        if not self.jittable:
            self._aot: dict[str, Any] = {}
            self._jit()
            return
        options = tuple(sorted((self.compiler_options or {}).items()))
        key = (_program_key(self.config), options)
        names = (
            "_init",
            "_finite",
            "_segment",
            "_segments",
            "_segment_of",
            "_warmup",
            "_evaluate",
            "_aot",
        )
        if key not in _JIT_CACHE:
            self._aot = {}
            self._jit()
            _JIT_CACHE[key] = {n: getattr(self, n) for n in names}
        self.__dict__.update(_JIT_CACHE[key])

    def _jit(self) -> None:
        loop, env = self.loop, self.envs[0]
        jit = functools.partial(jax.jit, compiler_options=self.compiler_options)
        vmap = functools.partial(
            _over_seeds_sharded,
            n_seeds=len(self.config.seeds),
            sequential=seeds_in_sequence(self.config),
            sharding=self.sharding,
        )

        def init(key):
            k_env, k_seed = jax.random.split(key)
            if self.jittable:
                env_state, step = env.reset(jax.random.wrap_key_data(k_env))
                return loop.init(k_seed, env_state, step.obs.astype(jnp.float32))
            obs = jnp.zeros((self.config.num_envs, env.observation_size), jnp.float32)
            return loop.init(k_seed, None, obs)

        # The training state is donated to every call that returns its successor, so XLA
        # updates it in place: without donation each call copies the whole replay buffer
        # (hundreds of MB at the default capacity), once per env step in the host loop.
        donate = functools.partial(jit, donate_argnums=0)
        self._init = jit(vmap(init))
        self._finite = jit(
            vmap(lambda ts: {k: _all_finite(v) for k, v in self.agent.networks(ts.agent).items()})
        )
        if self.jittable:

            def segment_of(bodies: int):
                return donate(
                    vmap(lambda ts, u0: loop.segment(ts, u0, bodies, True), in_axes=(0, None))
                )

            self._segment = segment_of(self.bodies)
            # shorter segments, compiled when first needed (`bodies_at`), by body count
            self._segments: dict[int, Any] = {self.bodies: self._segment}
            self._segment_of = segment_of
            self._warmup = donate(vmap(lambda ts: loop.warmup(ts, self.warmup_vec)))
            ev = self.eval_envs[0]
            self._evaluate = jit(vmap(lambda a, k: loop.evaluate(a, ev, k, self.eval_length)))
        else:

            def act(ts, mode):
                """mode (unbatched, a real branch): 0 uniform, 1 policy, 2 none (keeps the key)."""
                none = lambda ts: (ts, jnp.zeros((ts.obs.shape[0], env.action_size), jnp.float32))
                return jax.lax.switch(mode, (loop.act_random, loop.act_policy, none), ts)

            def advance_learn(ts, actions, step, u0, last):
                """Insert one env step, run the body's updates, choose the next actions (none
                after the segment's `last` step: the key is kept, as `act`'s mode 2 keeps it).

                The key is split exactly as in the compiled segment, so a host run of a JAX task
                follows the same trajectory as the scan. Its own compiled function, chosen in
                Python, so that the updates run with no `lax.cond` around them.
                """
                ts, stats = loop.insert(ts, actions, step, None)
                ts, metrics = loop.updates(ts, u0)
                acted, actions = loop.act_policy(ts)
                ts = eqx.tree_at(lambda t: t.key, acted, jnp.where(last, ts.key, acted.key))
                return ts, stats, metrics, actions

            def advance_collect(ts, actions, step, next_mode):
                """Insert one env step and choose the next actions (`act`'s modes), no updates:
                the warm-up and the steps between a body's updates."""
                ts, stats = loop.insert(ts, actions, step, None)
                ts, actions = act(ts, next_mode)
                return ts, stats, actions

            # The host loop holds the state as its list of leaves between calls: flattening
            # the state's Equinox modules in Python on every call cost more than the call.
            self._state_def = jax.tree.structure(jax.eval_shape(self._init, self.keys))
            if self.host is not None:

                def pieces(learning: bool, most: int):
                    fn = lambda ts, u0, n: loop.pieces(ts, u0, n, most, learning)
                    return donate(vmap(fn, in_axes=(0, None, None)))

                self._pieces = {
                    True: pieces(True, self.piece_bodies),
                    False: pieces(False, self.piece_warmup),
                }

            def on_leaves(fn):
                def call(leaves, *args):
                    ts, *rest = fn(jax.tree.unflatten(self._state_def, leaves), *args)
                    return jax.tree.leaves(ts), *rest

                return call

            self._act = donate(on_leaves(vmap(act, in_axes=(0, None))))
            self._advance_learn = donate(
                on_leaves(vmap(advance_learn, in_axes=(0, 0, 0, None, None)))
            )
            self._advance_collect = donate(
                on_leaves(vmap(advance_collect, in_axes=(0, 0, 0, None)))
            )
            self._act_det = jit(
                vmap(lambda a, o: self.agent.act(a, o.astype(jnp.float32), _seed_key(0), True))
            )

    def close(self) -> None:
        """Release environment workers (host backends)."""
        for env in {id(e): e for e in [*self.envs, *self.eval_envs]}.values():
            close = getattr(env, "close", None)
            if close is not None:
                close()

    def place(self, tree: Any) -> Any:
        """`tree` (arrays with the seed axis first) sharded over the devices along that axis
        with `shard_seeds`; unchanged without."""
        return tree if self.sharding is None else jax.device_put(tree, self.sharding)

    def state_shapes(self) -> TrainState:
        """Shapes and dtypes of the training state (no computation), e.g. as a template."""
        return jax.eval_shape(self._init, self.keys)

    def initial_state(self) -> TrainState:
        ts = self._init(self.keys)
        if not self.jittable:  # the same reset keys as the compiled path
            keys = jax.vmap(lambda k: jax.random.split(k)[0])(self.keys)
            self.env_states, obs = self._reset_host(self.envs, keys=keys)
            ts = eqx.tree_at(lambda t: t.obs, ts, obs)
        return ts

    def _reset_host(self, envs, offset: int = 0, keys: jax.Array | None = None):
        if keys is None:
            keys = jax.vmap(lambda k: jax.random.fold_in(k, offset))(self.keys)
        outs = [e.reset(jax.random.wrap_key_data(k)) for e, k in zip(envs, keys, strict=True)]
        obs = jnp.stack([jnp.asarray(o[1].obs, jnp.float32) for o in outs])
        return [o[0] for o in outs], obs

    def host_env_state(self) -> tuple[dict[str, np.ndarray], str | None]:
        """The state of every seed's host environment (`envs.DmcEnv.get_state`), as checkpoint
        extras named `envs/<seed index>/<entry>`, and None; or no extras and why they cannot
        be saved (an environment with no `get_state`, or a task state it cannot save)."""
        out: dict[str, np.ndarray] = {}
        for i, env in enumerate(self.envs):
            get_state = getattr(env, "get_state", None)
            if get_state is None:
                return {}, f"{env.name} environments cannot save their state"
            try:
                state = get_state()
            except envs.StateNotSaved as err:
                return {}, str(err)
            out.update({f"envs/{i}/{k}": v for k, v in state.items()})
        return out, None

    def restore_host_envs(self, extras: dict[str, np.ndarray]) -> None:
        """Set every seed's host environment to its state in `extras` (`host_env_state`);
        ValueError naming what does not fit."""
        prefixes = [f"envs/{i}/" for i in range(len(self.envs))]
        stray = [k for k in extras if not k.startswith(tuple(prefixes))]
        if stray:
            raise ValueError(f"entries of no environment of this run: {stray[:3]}")
        states = []
        for env, prefix in zip(self.envs, prefixes, strict=True):
            mine = {k.removeprefix(prefix): v for k, v in extras.items() if k.startswith(prefix)}
            if not mine:
                raise ValueError(f"no state of the environments of seed {prefix.split('/')[1]}")
            set_state = getattr(env, "set_state", None)
            if set_state is None:
                raise ValueError(f"{env.name} environments cannot restore a state")
            states.append(set_state(mine))
        self.env_states = states

    # --- segments ----------------------------------------------------------------------------
    def _timed(self, name: str, fn, *args):
        """Call a jitted function, compiling ahead of time on first use to time compilation."""
        compiled = self._aot.get(name)
        if compiled is None and (self.jittable or self.host is not None):
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
            self._aot[name] = compiled
        return (compiled or fn)(*args)

    def bodies_at(self, env_steps: int) -> int:
        """Bodies of the learning segment that starts at `env_steps`: a whole segment, or, from
        an env step off the segment grid (the end of a warm-up that is not a whole number of
        segments), the bodies up to the next multiple of `segment_env_steps`, so that records,
        evaluations and checkpoints fall on the same env steps whatever `learning_starts` is.
        Trajectories do not depend on how the steps are cut into segments."""
        off = env_steps % self.segment_env_steps
        if off == 0:
            return self.bodies
        per_body = self.loop.env_per_body * self.config.num_envs
        return max(1, math.ceil((self.segment_env_steps - off) / per_body))

    def segment(self, ts: TrainState, updates: int, learning: bool, bodies: int | None = None):
        """One logging interval (or the warm-up): returns state, stats [S,B,3], metrics [S,B].

        A learning segment has `bodies` bodies (default: a whole segment, `self.bodies`)."""
        bodies = self.bodies if bodies is None else bodies
        if self.jittable:
            if learning:
                fn = self._segments.get(bodies)
                if fn is None:
                    fn = self._segments[bodies] = self._segment_of(bodies)
                name = "segment" if bodies == self.bodies else f"segment_{bodies}"
                ts, out = self._timed(name, fn, ts, jnp.int32(updates))
            else:
                ts, out = self._timed("warmup", self._warmup, ts)
            return ts, out["stats"], out.get("metrics", {})
        if self.host is not None:
            return self._piece_segment(ts, updates, learning, bodies)
        return self._host_segment(ts, updates, learning, bodies)

    def _piece_segment(self, ts: TrainState, updates: int, learning: bool, bodies: int):
        """The segment as bounded compiled pieces, host environments stepped from inside."""
        host, per_body = self.host, self.loop.updates_per_body
        assert host is not None
        total = bodies if learning else self.warmup_vec
        most = self.piece_bodies if learning else self.piece_warmup
        name = "pieces" if learning else "warmup_pieces"
        rows: list[dict[str, Any]] = []
        host.states, host.error, done = self.env_states, None, 0
        try:
            while done < total:
                n = min(most, total - done)
                u0 = np.int32(updates + done * per_body)
                ts, out = self._timed(name, self._pieces[learning], ts, u0, np.int32(n))
                rows.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:, :n], out))
                done += n
        except Exception as err:
            if host.error is not None:  # raised while stepping: raise it as itself
                raise host.error from err
            raise
        finally:
            self.env_states = host.states
        stats = np.concatenate([r["stats"] for r in rows], axis=1)
        metrics = {
            k: np.concatenate([r["metrics"][k] for r in rows], axis=1)
            for k in rows[0].get("metrics", {})
        }
        return ts, stats, metrics

    def _host_segment(self, ts: TrainState, updates: int, learning: bool, bodies: int):
        """The segment as a Python loop: one compiled call per vectorised env step."""
        # Scalars go in as NumPy values and results are stacked with NumPy: jnp.int32(...) and
        # jnp.stack over the segment's steps dispatch an eager XLA operation for each element,
        # which cost about as much as the compiled step itself for small networks.
        loop = self.loop
        bodies, per_body = (bodies, loop.env_per_body) if learning else (1, self.warmup_vec)
        stats_all, metrics_all = [], []
        u0 = np.int32(updates)
        leaves, actions = self._act(jax.tree.leaves(ts), np.int32(1 if learning else 0))
        for b in range(bodies):
            for j in range(per_body):
                outs = step_all(self.envs, self.env_states, np.asarray(actions))
                self.env_states = [o[0] for o in outs]
                step = jax.tree.map(
                    lambda *x: np.stack([np.asarray(v) for v in x]), *[o[1] for o in outs]
                )
                update = learning and j == per_body - 1
                last = b == bodies - 1 and j == per_body - 1
                if update:
                    leaves, st, m, actions = self._advance_learn(
                        leaves, actions, step, u0, np.bool_(last)
                    )
                    u0 = np.int32(u0 + loop.updates_per_body)
                    metrics_all.append(m)
                else:
                    next_mode = 2 if last else (1 if learning else 0)
                    leaves, st, actions = self._advance_collect(
                        leaves, actions, step, np.int32(next_mode)
                    )
                stats_all.append(st)
        ts = jax.tree.unflatten(self._state_def, leaves)
        stats = np.stack([np.asarray(s) for s in stats_all], axis=1)
        metrics = {
            k: np.stack([np.asarray(m[k]) for m in metrics_all], axis=1)
            for k in (metrics_all or [{}])[0]
        }
        return ts, stats, metrics

    def evaluate(self, ts: TrainState, env_steps: int) -> np.ndarray:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, env_steps))(self.keys)
        if self.jittable:
            return np.asarray(self._timed("evaluate", self._evaluate, ts.agent, keys))
        return self._host_evaluate(ts, env_steps)

    def _host_evaluate(self, ts: TrainState, env_steps: int) -> np.ndarray:
        states, obs = self._reset_host(self.eval_envs, env_steps)
        n = obs.shape[1]
        done, ret = np.zeros((len(states), n), bool), np.zeros((len(states), n))
        for _ in range(self.eval_length):
            outs = step_all(self.eval_envs, states, np.asarray(self._act_det(ts.agent, obs)))
            states = [o[0] for o in outs]
            ended = np.stack([np.asarray(o[1].terminated | o[1].truncated) for o in outs]) & ~done
            ret = np.where(ended, np.stack([np.asarray(o[1].episode_return) for o in outs]), ret)
            done |= ended
            obs = jnp.stack([jnp.asarray(o[1].obs, jnp.float32) for o in outs])
            if done.all():
                break
        return (np.where(done, ret, 0.0).sum(1) / np.maximum(done.sum(1), 1)).astype(np.float32)
