"""The compiled pieces of training, per seed: acting, replay insertion, update cycles, segments.

A segment is a whole logging interval. For JAX environments it is one `lax.scan` over bodies of
`env_per_body` vectorised env steps followed by `updates_per_body` gradient updates (the replay
ratio as a fraction p/q, rounded to whole policy-delay cycles). Host environments (dm_control)
run the same bodies in bounded pieces (`pieces`), their env steps called back from the program.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from envs import Step

from ..algorithms import Agent
from ._replay import Replay, replay_add, replay_init, replay_sample, transitions
from ._surgery import Surgery


class TrainState(eqx.Module):
    """Per-seed training state (stacked over seeds by vmap). `env_state` is None on host envs;
    `surgery` holds the surgery metrics' and strategy's states (no arrays for stateless ones)."""

    agent: Any
    replay: Replay
    env_state: Any
    obs: Array
    key: Array
    surgery: Any


def body_shape(replay_ratio: float, cycle: int) -> tuple[int, int]:
    """(env steps, updates) per body: updates/env steps = replay ratio, updates % cycle == 0."""
    frac = Fraction(replay_ratio).limit_denominator(64)
    if frac <= 0:
        raise ValueError(f"replay_ratio {replay_ratio} rounds to 0")
    p, q = frac.numerator, frac.denominator
    k = cycle // math.gcd(p, cycle)
    return q * k, p * k


class Loop:
    """Per-seed functions for one agent, env and config; vmapped and jitted by the trainer."""

    def __init__(self, agent: Agent, env: Any, config: Any, surgery: Surgery):
        self.agent, self.env, self.config, self.surgery = agent, env, config, surgery
        self.cycle = agent.update_cycle
        self.env_per_body, self.updates_per_body = body_shape(config.replay_ratio, self.cycle)

    # --- state -------------------------------------------------------------------------------
    def init(self, seed_key: Array, env_state: Any, obs: Array) -> TrainState:
        k_agent, k_loop = jax.random.split(seed_key)
        c, env = self.config, self.env
        replay = replay_init(c.buffer_size, env.observation_size, env.action_size)
        agent_state = self.agent.init(k_agent)
        # the states' shapes depend on the networks, not on any data: an empty batch will do
        empty = jax.tree.map(lambda x: x[: self.agent.config.batch_size], replay.data)
        surgery = self.surgery.init(self.agent, agent_state, empty, jax.random.key(0))
        return TrainState(agent_state, replay, env_state, obs, k_loop, surgery)

    # --- acting ------------------------------------------------------------------------------
    def act_random(self, ts: TrainState) -> tuple[TrainState, Array]:
        return self.act(ts, True)

    def act_policy(self, ts: TrainState) -> tuple[TrainState, Array]:
        return self.act(ts, False)

    def act(self, ts: TrainState, random: bool) -> tuple[TrainState, Array]:
        key, sub = jax.random.split(ts.key)
        n, a = ts.obs.shape[0], self.env.action_size
        if random:
            action = jax.random.uniform(sub, (n, a), jnp.float32, -1.0, 1.0)
        else:
            action = self.agent.act(ts.agent, ts.obs.astype(jnp.float32), sub, False)
        return eqx.tree_at(lambda t: t.key, ts, key), action

    def insert(self, ts: TrainState, action: Array, step: Step, env_state: Any) -> tuple:
        replay = replay_add(ts.replay, transitions(ts.obs.astype(jnp.float32), action, step))
        ended = step.terminated | step.truncated
        stats = jnp.stack(
            [
                jnp.sum(jnp.where(ended, step.episode_return, 0.0)).astype(jnp.float32),
                jnp.sum(jnp.where(ended, step.episode_length, 0)).astype(jnp.float32),
                jnp.sum(ended).astype(jnp.float32),
            ]
        )
        ts = eqx.tree_at(
            lambda t: (t.replay, t.env_state, t.obs),
            ts,
            (replay, env_state, step.obs.astype(ts.obs.dtype)),
            is_leaf=lambda x: x is None,
        )
        return ts, stats

    def env_step(self, ts: TrainState, random: bool) -> tuple[TrainState, Array]:
        ts, action = self.act(ts, random)
        env_state, step = self.env.step(ts.env_state, action)
        return self.insert(ts, action, step, env_state)

    # --- updates -----------------------------------------------------------------------------
    def updates(self, ts: TrainState, u0: Array) -> tuple[TrainState, dict[str, Array]]:
        """`updates_per_body` gradient updates; `u0` (unbatched) counts updates done before."""
        agent, size = self.agent, self.agent.config.batch_size

        layouts: list[Packing] = []  # the surgery figures' layout, known once one_cycle is traced

        def one_cycle(carry, _):
            ts, u = carry
            metrics: dict[str, list[Array]] = {}
            agent_state, key = ts.agent, ts.key
            for phase in range(self.cycle):
                key, k_batch, k_update = jax.random.split(key, 3)
                batch = replay_sample(ts.replay, k_batch, size)
                agent_state, m = agent.update(agent_state, batch, k_update, phase)
                for name, value in m.items():
                    metrics.setdefault(name, []).append(value)
            u = u + self.cycle
            # the agent's own events (BRO's full resets, DACER's entropy estimate); their keys
            # are folded from the cycle's, so an agent without events leaves the stream as it is
            k_batch, k_event = jax.random.split(jax.random.fold_in(key, 1))
            batch = replay_sample(ts.replay, k_batch, size)
            agent_state, event_metrics = agent.scheduled(agent_state, batch, k_event, u)
            metrics.update({k: [v] for k, v in event_metrics.items()})
            # neuron surgery: scores logged, resets when due; its figures travel as one vector
            # (NaN where no surgery step ran), so their number adds no ops to the loop
            key, k_batch, k_surgery = jax.random.split(key, 3)
            agent_state, surgery_state, packed, layout, due = self._maybe_surgery(
                agent_state, ts, k_batch, k_surgery, u
            )
            layouts.append(layout)
            ts = eqx.tree_at(
                lambda t: (t.agent, t.key, t.surgery), ts, (agent_state, key, surgery_state)
            )
            out = {k: jnp.mean(jnp.stack(v)) for k, v in metrics.items()}
            return (ts, u), (out, jnp.where(due, packed, jnp.nan))

        n_cycles = self.updates_per_body // self.cycle
        (ts, _), (metrics, packed) = jax.lax.scan(one_cycle, (ts, u0), None, length=n_cycles)
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
        metrics.update(layouts[0].unpack(last_finite(packed)))
        return ts, metrics

    def _maybe_surgery(
        self, agent_state: Any, ts: TrainState, k_batch: Array, key: Array, u: Array
    ) -> tuple[Any, Any, Array, Packing, Array]:
        """A surgery step when one is due in the last cycle's updates (`u` unbatched), its
        figures packed into one float32 vector, and their layout. Its replay batch is drawn
        inside the branch that runs, not on every update cycle."""
        surgery, since = self.surgery, u - self.cycle
        if not surgery.active:
            none = Packing(())
            return agent_state, ts.surgery, none.pack({}), none, jnp.asarray(False)

        def step(carry):
            agent_state, states = carry
            batch = replay_sample(ts.replay, k_batch, self.agent.config.batch_size)
            return surgery.step(self.agent, agent_state, states, batch, key, u, since)

        carry = (agent_state, ts.surgery)
        layout = Packing.of(jax.eval_shape(step, carry)[2])

        def run(carry):
            agent_state, states, metrics = step(carry)
            return agent_state, states, layout.pack(metrics)

        zeros = jnp.zeros((layout.size,), jnp.float32)
        due = surgery.due(u, since)
        agent_state, states, packed = jax.lax.cond(due, run, lambda c: (*c, zeros), carry)
        return agent_state, states, packed, layout, due

    # --- segments (JAX environments) ---------------------------------------------------------
    def segment(self, ts: TrainState, u0: Array, bodies: int, learning: bool):
        """`bodies` bodies; returns the state and per-body stats and update metrics."""

        def body(carry, _):
            ts, u = carry
            ts, out = self._body(ts, u, learning, self.env_per_body)
            return (ts, u + self.updates_per_body), out

        (ts, _), out = jax.lax.scan(body, (ts, u0), None, length=bodies)
        return ts, out

    def _body(self, ts: TrainState, u: Array, learning: bool, steps: int):
        """`steps` vectorised env steps (uniform random actions unless `learning`), their stats
        summed, then with `learning` the body's updates (`u` updates done before)."""
        ts, stats = jax.lax.scan(
            lambda t, _: self.env_step(t, not learning), ts, None, length=steps
        )
        out: dict[str, Any] = {"stats": jnp.sum(stats, axis=0)}
        if learning:
            ts, out["metrics"] = self.updates(ts, u)
        return ts, out

    def pieces(self, ts: TrainState, u0: Array, n: Array, most: int, learning: bool):
        """The first `n` (unbatched, at most `most`) bodies of a segment, as `segment` runs them,
        in one program for any `n`; without `learning`, `n` warm-up env steps (uniform random
        actions). Outputs have `most` rows, the first `n` filled. A host environment's segment
        runs as such pieces: bounded calls (the process answers an interrupt between them)
        that any segment length reuses without compiling again."""

        body = lambda ts, u: self._body(ts, u, learning, self.env_per_body if learning else 1)
        rows = jax.tree.map(
            lambda s: jnp.zeros((most, *s.shape), s.dtype), jax.eval_shape(body, ts, u0)[1]
        )

        def step(carry):
            i, ts, u, rows = carry
            ts, out = body(ts, u)
            rows = jax.tree.map(lambda r, v: r.at[i].set(v), rows, out)
            return i + 1, ts, u + self.updates_per_body, rows

        init = (jnp.int32(0), ts, u0, rows)
        _, ts, _, rows = jax.lax.while_loop(lambda c: c[0] < n, step, init)
        return ts, rows

    def warmup(self, ts: TrainState, steps: int):
        """`steps` vectorised env steps of uniform random actions, no updates."""
        ts, stats = jax.lax.scan(lambda t, _: self.env_step(t, True), ts, None, length=steps)
        return ts, {"stats": jnp.sum(stats, axis=0)[None]}

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, agent_state: Any, eval_env: Any, key: Array, length: int) -> Array:
        """Mean return of the first episode of each eval env, acting deterministically."""
        env_state, step = eval_env.reset(jax.random.wrap_key_data(key))
        n = step.obs.shape[0]

        def body(carry, _):
            env_state, obs, done, ret = carry
            action = self.agent.act(agent_state, obs.astype(jnp.float32), key, True)
            env_state, step = eval_env.step(env_state, action)
            ended = (step.terminated | step.truncated) & ~done
            ret = jnp.where(ended, step.episode_return.astype(jnp.float32), ret)
            return (env_state, step.obs, done | ended, ret), None

        init = (env_state, step.obs, jnp.zeros(n, bool), jnp.zeros(n, jnp.float32))
        (_, _, done, ret), _ = jax.lax.scan(body, init, None, length=length)
        count = jnp.maximum(jnp.sum(done), 1).astype(jnp.float32)
        return jnp.sum(jnp.where(done, ret, 0.0)) / count


def last_finite(x: Array) -> Array:
    """The last finite entry along the leading axis, per trailing entry (NaN if there is none)."""
    finite = jnp.isfinite(x)
    position = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    idx = jnp.max(jnp.where(finite, position, -1), axis=0)
    picked = jnp.take_along_axis(x, jnp.maximum(idx, 0)[None], axis=0)[0]
    return jnp.where(idx >= 0, picked, jnp.nan)


@dataclasses.dataclass(frozen=True)
class Packing:
    """Named float32 figures of fixed shapes laid end to end in one vector, and back."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, shapes: dict[str, Any]) -> Packing:
        return cls(tuple((k, tuple(s.shape)) for k, s in shapes.items()))

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape in self.entries)

    def pack(self, values: dict[str, Array]) -> Array:
        if not self.entries:
            return jnp.zeros((0,), jnp.float32)
        parts = [jnp.ravel(jnp.asarray(values[k], jnp.float32)) for k, _ in self.entries]
        return jnp.concatenate(parts)

    def unpack(self, vector: Array) -> dict[str, Array]:
        out, start = {}, 0
        for k, shape in self.entries:
            n = math.prod(shape)
            out[k] = vector[start : start + n].reshape(shape)
            start += n
        return out
