"""Where the trainer's time per vectorised env step goes, part by part, against what it could be.

For each agent (sac, bro, dacer) × environment × hidden width this builds the trainer of a run
(`--seeds` vmapped seeds, replay ratio `--replay-ratio`, batch `--batch`, one environment per
seed, no surgery and no evaluation unless asked), times its learning segments through
`Trainer.segment` (steady state: the random warm-up and the first, compiling, learning segment
are left out, as `_timing.SegmentTimer` does), and times the pieces of a step on their own.
Every figure is milliseconds per vectorised env step (one `env.step` of every seed's
environments), all seeds together, the median over `--repeats` repetitions:

* `env step`: host tasks (`dmc/...`): the trainer's `step_all`, the worker pools of all seeds
  stepped side by side (`step_async` then `step_wait`), random actions. JAX tasks: `env.step`
  vmapped over seeds, compiled alone.
* `transfers` (host tasks only): what the host loop does to move a step across: `np.asarray` of
  the actions the device computed, the seeds' step arrays stacked with NumPy, and these handed
  as NumPy arguments to a compiled call that only sums them (the conversion the trainer's step
  call does, and that call's dispatch; `jax.device_put` of the same pytree costs ~20× more).
* `act`: `agent.act` (exploration) on the seeds' observations, compiled alone.
* `replay insert`: `Loop.insert` (the transition into the replay buffer, the episode stats).
* `replay sample`: `replay_sample` of one batch, × updates per env step.
* `update, <network>`: one optimizer step of that network alone (forward, backward, optimizer,
  its targets included: `agent.objectives(state, batch, key)[name]` through
  `agents.algorithms._steps.objective_step` with `agent.optimizer(name)`, the state updated
  with `agent.replace_network`; for DACER's actor `agent.actor_objective`, the reverse chain
  its update differentiates, since its `objectives` entry is the call-by-call view a surgery
  step observes), × that network's steps per update (SAC: 1 and 1, its actor
  taking `policy_delay` steps every `policy_delay` updates; BRO: 1 each; DACER: critic 1,
  actor, the denoiser, 1/`policy_delay`) × updates per env step. The networks are
  `agent.surgery_networks`.
* `update, other`: `agent.update` timed whole (a full update cycle, divided by its length,
  × updates per env step) minus the networks above: the temperature α, BRO's optimism
  adjustment (β, λ), target updates, the metrics. It can come out slightly negative where
  the whole update compiles tighter than its networks alone.
* `surgery` (with `--surgery`): one surgery step (`Surgery.step`: the default scores of
  `SurgeryConfig` on the critic, logged, no resets) × updates per env step / `--surgery-every`.
* `evaluation` (with `--eval-every N`): one `Trainer.evaluate` call × env steps per vectorised
  step / max(N, env steps per segment), as the run calls it at most once per segment.
* `rest`: the trainer's wall time per vectorised env step (learning segments, plus the
  evaluation row) minus every row above: the host loop's Python, dispatch and stacking, the
  update cycle's glue (`Loop.updates`: key splits, the agent's scheduled events, metric
  means, the surgery branch), and whatever the pieces cost less or more inside the trainer's
  one program than compiled alone (for JAX tasks it can be negative).

Below the rows: `wall` (the trainer), `limit` = env step + one `agent.update` (every network in
one compiled call, vmapped over seeds) × updates per env step, `limit / wall`, and
`rest / wall`. Scheduled events (BRO's full resets, DACER's entropy estimate, every 10,000
updates by default) are not timed apart; they land in `rest` only where a timed segment holds
one.

Each compiled piece is a `jax.jit` function (its first, compiling call left out) that runs
`--inner` iterations inside one `lax.scan` per call, and is called `--calls` times per
repetition, timed to `jax.block_until_ready`. Its state (agent state, replay buffer,
observations, env state) is donated and fed back from call to call and from one iteration to
the next; each iteration has its own replay batch and key. The scan makes a piece's figure its
computation: dispatching a call whose arguments hold the training state costs a few hundred
microseconds on a CPU, which the trainer pays once per vectorised step (host tasks) or once per
segment (JAX tasks) and which lands in `rest`. The pieces work on copies of the trainer's state
taken after the first learning segment. Within a repetition the segments and the pieces run in
a shuffled order, so that load from other processes spreads over all of them.

Run (a dm_control task needs `MUJOCO_GL=disable` or a renderer; the script sets it if unset):

    MUJOCO_GL=disable .venv/bin/python benchmarks/bench_step_breakdown.py \\
        [--agents sac bro dacer] [--envs dmc/cheetah-run test/point-mass] [--widths 64 256] \\
        [--seeds 5] [--replay-ratio 2] [--batch 128] [--repeats 3] [--segment-steps 500] \\
        [--surgery] [--eval-every N] [--plot PATH] [--json PATH]

The defaults (12 configurations) take a long while on a few CPU cores; pick configurations with
`--agents`, `--envs` and `--widths`. A quick check: `--agents sac --envs test/point-mass
--widths 16 --seeds 2 --repeats 1 --segment-steps 100 --learning-starts 256`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("MUJOCO_GL", "disable")

import jax
import jax.numpy as jnp
import numpy as np
from _timing import SegmentTimer

from agents import SurgeryConfig, TrainConfig, Trainer, replay_sample
from agents.algorithms import Agent
from agents.algorithms._steps import objective_step
from agents.training._host import step_all

NETWORKS = ("critic", "actor", "optimistic_actor")
#: the rows of the table, in order (network rows for the networks some agent has)
PARTS = (
    "env step",
    "transfers",
    "act",
    "replay insert",
    "replay sample",
    *(f"update, {n}" for n in NETWORKS),
    "update, other",
    "surgery",
    "evaluation",
    "rest",
)
SUMMARY = ("wall", "limit", "limit / wall", "rest / wall")


# --- configuration ---------------------------------------------------------------------------
def agent_options(agent: str, width: int, batch: int) -> dict[str, Any]:
    """The TrainConfig fields that set `agent`'s hidden width (actor and critic) and batch."""
    if agent == "sac":
        c = TrainConfig().sac
        actor = dataclasses.replace(c.actor, width=width)
        critic = dataclasses.replace(c.critic, width=width)
        return {"sac": dataclasses.replace(c, batch_size=batch, actor=actor, critic=critic)}
    if agent == "bro":
        c = TrainConfig().bro
        return {
            "bro": dataclasses.replace(c, batch_size=batch, critic_width=width, actor_width=width)
        }
    if agent == "dacer":
        c = TrainConfig().dacer
        critic = dataclasses.replace(c.critic, width=width)
        return {
            "dacer": dataclasses.replace(c, batch_size=batch, denoiser_width=width, critic=critic)
        }
    raise ValueError(f"unknown agent {agent!r}")


def train_config(args: argparse.Namespace, agent: str, env: str, width: int) -> TrainConfig:
    surgery = (
        SurgeryConfig(every=args.surgery_every)
        if args.surgery
        else SurgeryConfig(networks=(), metrics=())
    )
    return TrainConfig(
        agent=agent,
        env=env,
        seeds=tuple(range(args.seeds)),
        steps=10**9,
        num_envs=args.num_envs,
        replay_ratio=args.replay_ratio,
        learning_starts=args.learning_starts,
        buffer_size=args.buffer_size,
        log_every=args.segment_steps,
        eval_every=args.eval_every,
        # evaluation environments are built whether or not the run evaluates: without
        # evaluation one per seed, stepped in the training process (no idle worker pools)
        eval_episodes=args.eval_episodes if args.eval_every else 1,
        sinks=(),
        progress=False,
        surgery=surgery,
        **agent_options(agent, width, args.batch),
    )


def steps_per_update(agent: Agent, name: str) -> float:
    """Optimizer steps of network `name` per gradient update, averaged over the update cycle."""
    c: Any = agent.config
    if agent.name == "dacer" and name == "actor":  # the denoiser: once per policy-delay cycle
        return 1.0 / c.policy_delay
    if agent.name == "bro" and name == "optimistic_actor" and not c.optimism:
        return 0.0
    return 1.0  # SAC's actor: policy_delay steps in a row every policy_delay updates


def update_objective(agent: Any, state: Any, batch: Any, key: jax.Array, name: str) -> Any:
    """The objective `agent.update` steps network `name` on: `agent.objectives`'s entry, except
    for DACER's actor, whose entry there is the denoiser seen call by call (what a surgery step
    observes, dearer than the update); its update differentiates `actor_objective`, the reverse
    chain whole."""
    if agent.name == "dacer" and name == "actor":
        return agent.actor_objective(state, batch, key)
    return agent.objectives(state, batch, key)[name]


# --- compiled pieces -------------------------------------------------------------------------
def over_seeds(fn: Callable, n_seeds: int) -> Callable:
    """`jax.vmap(fn)` over the leading seed axis of every argument; with one seed, `fn` on the
    arguments without it and the axis put back on its outputs (as the trainer does)."""
    if n_seeds > 1:
        return jax.vmap(fn)

    def one(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return one


def copy(tree: Any) -> Any:
    """Fresh buffers of every array of `tree` (the trainer donates its state to each segment)."""
    return jax.tree.map(jnp.copy, tree)


def total(tree: Any) -> jax.Array:
    """The sum of every leaf of `tree` (float32): keeps outputs alive without storing them."""
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(x.astype(jnp.float32)) for x in leaves), jnp.zeros((), jnp.float32))


class Piece:
    """A compiled piece `fn(carry, *args) -> (carry, out)`, `iterations` units of work per call,
    its carry donated and fed back from call to call."""

    def __init__(self, fn: Callable, n_seeds: int, carry: Any, *args: Any, iterations: int):
        # called through `jax.jit` (its C++ dispatch), as the trainer's host loop calls its
        # step: an ahead-of-time `Compiled` object dispatches more slowly
        self.fn = jax.jit(over_seeds(fn, n_seeds), donate_argnums=0)
        self.carry, self.args, self.iterations = carry, args, iterations
        t0 = time.perf_counter()
        self.carry, out = self.fn(self.carry, *self.args)  # compiles
        jax.block_until_ready((self.carry, out))
        self.compile_s = time.perf_counter() - t0

    def time(self, calls: int) -> float:
        """Seconds per unit of work, over `calls` chained calls."""
        out = None
        t0 = time.perf_counter()
        for _ in range(calls):
            self.carry, out = self.fn(self.carry, *self.args)
        jax.block_until_ready((self.carry, out))
        return (time.perf_counter() - t0) / (calls * self.iterations)


def keys_for(seed: int, *shape: int) -> jax.Array:
    """Raw (uint32) keys of this shape, as the trainer's state holds them."""
    return jax.random.key_data(jax.random.split(jax.random.key(seed), shape))


def build_pieces(trainer: Trainer, ts: Any, args: argparse.Namespace) -> dict[str, Piece]:
    """The compiled pieces of one configuration, on copies of the training state `ts`."""
    agent, loop, env = trainer.agent, trainer.loop, trainer.envs[0]
    n_seeds, inner, cycle = len(trainer.config.seeds), args.inner, agent.update_cycle
    size = agent.config.batch_size
    n, a = ts.obs.shape[1], env.action_size
    pieces: dict[str, Piece] = {}

    # batches drawn from the trainer's replay buffer: one per iteration and update phase
    def draw(replay, keys):
        flat = jax.vmap(lambda k: replay_sample(replay, k, size))(keys.reshape(-1, 2))
        return jax.tree.map(lambda x: x.reshape(inner, cycle, *x.shape[1:]), flat)

    batches = jax.jit(over_seeds(draw, n_seeds))(ts.replay, keys_for(1, n_seeds, inner, cycle))
    update_keys = keys_for(2, n_seeds, inner, cycle)
    first = jax.tree.map(lambda x: x[:, :, 0], batches)  # [S, inner, batch, ...]
    step_keys = keys_for(3, n_seeds, inner)
    actions = jax.random.uniform(jax.random.key(4), (n_seeds, inner, n, a), jnp.float32, -1, 1)

    def act(obs, agent_state, keys):
        def body(obs, key):
            action = agent.act(agent_state, obs, key, False)
            return obs + 1e-6 * jnp.mean(action), None  # the next call acts on other inputs

        obs, _ = jax.lax.scan(body, obs, keys)
        return obs, jnp.zeros((), jnp.float32)

    pieces["act"] = Piece(act, n_seeds, copy(ts.obs), copy(ts.agent), step_keys, iterations=inner)

    if trainer.jittable:

        def env_step(env_state, actions):
            def body(carry, action):
                env_state, acc = carry
                env_state, step = env.step(env_state, action)
                return (env_state, acc + total((step.obs, step.reward))), None

            (env_state, acc), _ = jax.lax.scan(body, (env_state, jnp.zeros(())), actions)
            return env_state, acc

        pieces["env step"] = Piece(env_step, n_seeds, copy(ts.env_state), actions, iterations=inner)
        one_step = jax.jit(jax.vmap(env.step))(copy(ts.env_state), actions[:, 0])[1]
    else:
        outs = step_all(trainer.envs, trainer.env_states, np.asarray(actions[:, 0]))
        trainer.env_states = [o[0] for o in outs]
        one_step = jax.tree.map(
            lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *[o[1] for o in outs]
        )

    def insert(ts, actions, step):
        def body(ts, action):
            return loop.insert(ts, action, step, ts.env_state)

        ts, stats = jax.lax.scan(body, ts, actions)
        return ts, jnp.sum(stats)

    pieces["replay insert"] = Piece(insert, n_seeds, copy(ts), actions, one_step, iterations=inner)

    def sample(acc, replay, keys):
        def body(acc, key):
            return acc + total(replay_sample(replay, key, size)), None

        return jax.lax.scan(body, acc, keys)[0], jnp.zeros((), jnp.float32)

    acc0 = jnp.zeros((n_seeds,), jnp.float32)
    pieces["replay sample"] = Piece(
        sample, n_seeds, acc0, copy(ts.replay), step_keys, iterations=inner
    )

    def update(agent_state, batches, keys):
        def body(carry, xs):
            agent_state, acc = carry
            batch, key = xs
            for phase in range(cycle):
                one = jax.tree.map(lambda x, p=phase: x[p], batch)
                agent_state, metrics = agent.update(agent_state, one, key[phase], phase)
                acc = acc + total(metrics)
            return (agent_state, acc), None

        init = (agent_state, jnp.zeros((), jnp.float32))
        (agent_state, acc), _ = jax.lax.scan(body, init, (batches, keys))
        return agent_state, acc

    pieces["update"] = Piece(
        update, n_seeds, copy(ts.agent), batches, update_keys, iterations=inner * cycle
    )

    for name in agent.surgery_networks:
        optimizer = agent.optimizer(name)

        def network(agent_state, batches, keys, name=name, optimizer=optimizer):
            def body(carry, xs):
                agent_state, acc = carry
                batch, key = xs
                objective = update_objective(agent, agent_state, batch, key, name)
                model, opt_state, loss, _ = objective_step(
                    optimizer, objective, agent.opt_state(agent_state, name)
                )
                agent_state = agent.replace_network(agent_state, name, model, opt_state)
                return (agent_state, acc + loss), None

            init = (agent_state, jnp.zeros((), jnp.float32))
            (agent_state, acc), _ = jax.lax.scan(body, init, (batches, keys))
            return agent_state, acc

        pieces[f"update, {name}"] = Piece(
            network, n_seeds, copy(ts.agent), first, step_keys, iterations=inner
        )

    surgery = trainer.surgery
    if surgery.active:
        every = jnp.int32(surgery.every)

        def surgery_step(carry, batches, keys):
            def body(carry, xs):
                (agent_state, states), acc = carry
                batch, key = xs
                agent_state, states, metrics = surgery.step(
                    agent, agent_state, states, batch, key, every, jnp.int32(0)
                )
                return ((agent_state, states), acc + total(metrics)), None

            init = (carry, jnp.zeros((), jnp.float32))
            (carry, acc), _ = jax.lax.scan(body, init, (batches, keys))
            return carry, acc

        carry = (copy(ts.agent), copy(ts.surgery))
        pieces["surgery"] = Piece(surgery_step, n_seeds, carry, first, step_keys, iterations=inner)
    return pieces


# --- host-side pieces ------------------------------------------------------------------------
def time_host_env(trainer: Trainer, actions: list[np.ndarray]) -> tuple[float, list]:
    """Seconds per vectorised step of every seed's host environment (the trainer's `step_all`)
    and the last step's per-seed outputs."""
    outs: list = []
    t0 = time.perf_counter()
    for action in actions:
        outs = step_all(trainer.envs, trainer.env_states, action)
        trainer.env_states = [o[0] for o in outs]
    return (time.perf_counter() - t0) / len(actions), outs


def stack_steps(outs: list) -> Any:
    """The seeds' steps (`step_all`'s outputs) as one Step of NumPy arrays, as the trainer's
    host loop stacks them."""
    return jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *[o[1] for o in outs])


def time_transfers(device_actions: list[jax.Array], outs: list, consume: Callable) -> float:
    """Seconds per vectorised step of the host loop's transfers: the actions the device computed
    to NumPy, the seeds' step arrays stacked, and handed to a compiled call (`consume`, which
    only sums them) as NumPy arrays, as the trainer hands them to its step. Each action array
    is fresh (a JAX array keeps its NumPy copy once made), used once and dropped."""
    count = len(device_actions)
    t0 = time.perf_counter()
    while device_actions:
        np.asarray(device_actions.pop())
        jax.block_until_ready(consume(stack_steps(outs)))
    return (time.perf_counter() - t0) / count


# --- one configuration -----------------------------------------------------------------------
def measure(args: argparse.Namespace, agent: str, env: str, width: int) -> dict[str, Any]:
    label = f"{agent} {env} w{width}"
    say = lambda msg: print(f"[{label}] {msg}", file=sys.stderr, flush=True)
    config = train_config(args, agent, env, width)
    trainer = Trainer(config)
    try:
        return _measure(args, trainer, width, say)
    finally:
        trainer.close()


def _measure(
    args: argparse.Namespace, trainer: Trainer, width: int, say: Callable
) -> dict[str, Any]:
    config, loop = trainer.config, trainer.loop
    n_seeds, n_envs = len(config.seeds), config.num_envs
    t0 = time.perf_counter()
    timer = SegmentTimer(trainer)  # warm-up, then the first (compiling) learning segment
    say(f"warm-up and first segment {time.perf_counter() - t0:.1f} s")
    vec_per_segment = trainer.bodies * loop.env_per_body
    updates_per_vec = loop.updates_per_body / loop.env_per_body
    segments = args.segments
    if trainer.surgery.active:  # whole surgery periods in every timed repetition
        per_segment = trainer.bodies * loop.updates_per_body
        period = trainer.surgery.every // math.gcd(trainer.surgery.every, per_segment)
        segments = period * math.ceil(segments / period)
        if period > 1:
            say(f"{segments} segments per repetition: whole surgery periods")

    t0 = time.perf_counter()
    pieces = build_pieces(trainer, timer.ts, args)
    say(f"pieces compiled in {time.perf_counter() - t0:.1f} s")
    jobs: dict[str, Callable[[], float]] = {
        name: (lambda p=piece: p.time(args.calls)) for name, piece in pieces.items()
    }
    jobs["wall"] = lambda: sum(timer.step() for _ in range(segments)) / (segments * vec_per_segment)
    n_seeds_actions = (n_seeds, n_envs, trainer.envs[0].action_size)
    rng = np.random.default_rng(0)
    if not trainer.jittable:
        host = lambda: rng.uniform(-1, 1, n_seeds_actions).astype(np.float32)
        last_outs: list = time_host_env(trainer, [host()])[1]
        fresh = jax.jit(lambda k: jax.random.uniform(k, n_seeds_actions, jnp.float32, -1, 1))
        consume = jax.jit(total)
        jax.block_until_ready(consume(stack_steps(last_outs)))  # compiles

        def env_job() -> float:
            nonlocal last_outs
            seconds, last_outs = time_host_env(trainer, [host() for _ in range(args.env_steps)])
            return seconds

        def transfer_job() -> float:
            keys = jax.random.split(jax.random.key(5), args.env_steps)
            device_actions = [fresh(k) for k in keys]
            jax.block_until_ready(device_actions)
            return time_transfers(device_actions, last_outs, consume)

        jobs["env step"], jobs["transfers"] = env_job, transfer_job
    if config.eval_every:
        trainer.evaluate(timer.ts, 0)  # compiles
        jobs["evaluation"] = lambda: _time_eval(trainer, timer)

    times: dict[str, list[float]] = {name: [] for name in jobs}
    order = list(jobs)
    shuffle = random.Random(0)
    for r in range(args.repeats):
        shuffle.shuffle(order)
        for name in order:
            times[name].append(jobs[name]())
        say(f"repetition {r + 1}/{args.repeats}")
    s = {name: statistics.median(t) for name, t in times.items()}

    agent = trainer.agent
    parts: dict[str, float | None] = dict.fromkeys(PARTS)
    parts["env step"] = s["env step"]
    parts["transfers"] = s.get("transfers")
    parts["act"] = s["act"]
    parts["replay insert"] = s["replay insert"]
    parts["replay sample"] = s["replay sample"] * updates_per_vec
    networks = 0.0
    for name in agent.surgery_networks:
        value = s[f"update, {name}"] * steps_per_update(agent, name) * updates_per_vec
        parts[f"update, {name}"] = value
        networks += value
    update = s["update"] * updates_per_vec
    parts["update, other"] = update - networks
    if trainer.surgery.active:
        parts["surgery"] = s["surgery"] * updates_per_vec / trainer.surgery.every
    if config.eval_every:
        per_vec = n_envs / max(config.eval_every, trainer.segment_env_steps)
        parts["evaluation"] = s["evaluation"] * per_vec
    wall = s["wall"] + (parts["evaluation"] or 0.0)
    parts["rest"] = wall - sum(v for k, v in parts.items() if v is not None and k != "rest")
    limit = s["env step"] + update
    ms = lambda v: None if v is None else 1e3 * v
    return {
        "agent": agent.name,
        "env": config.env,
        "width": width,
        "seeds": n_seeds,
        "num_envs": n_envs,
        "replay_ratio": updates_per_vec,
        "batch": agent.config.batch_size,
        "surgery_every": trainer.surgery.every if trainer.surgery.active else None,
        "eval_every": config.eval_every or None,
        "repeats": args.repeats,
        "env_steps_per_segment": trainer.segment_env_steps,
        "segments_per_repeat": segments,
        "parts_ms": {k: ms(v) for k, v in parts.items()},
        "wall_ms": ms(wall),
        "limit_ms": ms(limit),
        "limit_fraction": limit / wall,
        "rest_fraction": parts["rest"] / wall,
        "segment_compile_s": timer.compile_s,
        "pieces_compile_s": {k: p.compile_s for k, p in pieces.items()},
        "times_ms": {k: [1e3 * x for x in t] for k, t in times.items()},
    }


def _time_eval(trainer: Trainer, timer: SegmentTimer) -> float:
    t0 = time.perf_counter()
    trainer.evaluate(timer.ts, timer.updates)
    return time.perf_counter() - t0


# --- output ----------------------------------------------------------------------------------
def fmt(value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "—"
    if ratio:
        return f"{100 * value:.1f} %"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(results: list[dict[str, Any]]) -> str:
    """Rows: the parts and the summary; columns: agent, width and environment."""
    rows = [p for p in PARTS if any(r["parts_ms"][p] is not None for r in results)]
    col = max(14, *(len(r["env"].split("/")[-1]) + 2 for r in results))
    head1 = "".join(f"{r['agent'] + ' w' + str(r['width']):>{col}}" for r in results)
    head2 = "".join(f"{r['env'].split('/')[-1]:>{col}}" for r in results)
    lines = [f"{'ms per vec env step':<24}{head1}", f"{'':<24}{head2}"]
    for p in rows:
        lines.append(f"{p:<24}" + "".join(f"{fmt(r['parts_ms'][p]):>{col}}" for r in results))
    lines.append("-" * (24 + col * len(results)))
    summary = {
        "wall": lambda r: fmt(r["wall_ms"]),
        "limit": lambda r: fmt(r["limit_ms"]),
        "limit / wall": lambda r: fmt(r["limit_fraction"], True),
        "rest / wall": lambda r: fmt(r["rest_fraction"], True),
    }
    for name in SUMMARY:
        lines.append(f"{name:<24}" + "".join(f"{summary[name](r):>{col}}" for r in results))
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """A stacked bar of the parts per configuration, one panel per environment, with the
    trainer's wall time (black) and the limit (red, dashed) marked on each bar. A negative part
    (`update, other` or `rest` where pieces alone cost more than inside the trainer) is stacked
    below zero, so that the bar's top minus what lies below zero is the wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env_names = list(dict.fromkeys(r["env"] for r in results))
    width = max(8.0, 4.0 + 1.3 * len(results))
    fig, axes = plt.subplots(1, len(env_names), figsize=(width, 5.5), squeeze=False)
    colors = {p: plt.get_cmap("tab20")(i) for i, p in enumerate(PARTS)}
    for ax, env in zip(axes[0], env_names, strict=True):
        mine = [r for r in results if r["env"] == env]
        for x, r in enumerate(mine):
            up, down = 0.0, 0.0
            for p in PARTS:
                v = r["parts_ms"][p]
                if not v:
                    continue
                hatch = "//" if p == "rest" else ("xx" if v < 0 else None)
                bottom = up if v > 0 else down
                ax.bar(x, v, bottom=bottom, color=colors[p], hatch=hatch, edgecolor="white")
                up, down = (up + v, down) if v > 0 else (up, down + v)
            ax.hlines(r["wall_ms"], x - 0.45, x + 0.45, colors="black", lw=2)
            ax.hlines(r["limit_ms"], x - 0.45, x + 0.45, colors="red", lw=2, linestyles="--")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(mine)), [f"{r['agent']}\nw{r['width']}" for r in mine])
        ax.set_title(env, fontsize=9)
        ax.set_ylabel("ms per vectorised env step")
        ax.grid(True, axis="y", alpha=0.3)
    shown = [p for p in PARTS if any(r["parts_ms"][p] for r in results)]
    handles: list[Any] = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in shown]
    handles += [plt.Line2D([], [], color="black", lw=2), plt.Line2D([], [], color="red", ls="--")]
    labels = [*shown, "wall (trainer)", "limit (env step + updates)"]
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title.replace("; ", "\n", 1), fontsize=8)
    fig.subplots_adjust(left=0.08, right=1 - 2.4 / width, top=0.86, bottom=0.12, wspace=0.35)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["sac", "bro", "dacer"])
    parser.add_argument("--envs", nargs="+", default=["dmc/cheetah-run", "test/point-mass"])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--seeds", type=int, default=5, help="seeds, vmapped")
    parser.add_argument("--replay-ratio", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-envs", type=int, default=1, help="environments per seed")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (medians)")
    parser.add_argument(
        "--segment-steps", type=int, default=500, help="env steps per learning segment"
    )
    parser.add_argument("--segments", type=int, default=1, help="segments per repetition")
    parser.add_argument("--inner", type=int, default=32, help="iterations per compiled call")
    parser.add_argument("--calls", type=int, default=2, help="compiled calls per repetition")
    parser.add_argument("--env-steps", type=int, default=100, help="host env steps per repetition")
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--buffer-size", type=int, default=100_000)
    parser.add_argument("--surgery", action="store_true", help="log surgery scores")
    parser.add_argument("--surgery-every", type=int, default=1000, help="updates between them")
    parser.add_argument("--eval-every", type=int, default=0, help="env steps; 0: no evaluation")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--plot", metavar="PATH", help="draw the stacked bars into this file")
    parser.add_argument("--json", metavar="PATH", help="write the figures to this file")
    args = parser.parse_args()

    results = []
    for env in args.envs:
        for agent in args.agents:
            for width in args.widths:
                results.append(measure(args, agent, env, width))
    title = (
        f"{args.seeds} seeds vmapped, replay ratio {args.replay_ratio:g}, batch {args.batch}, "
        f"{args.num_envs} env(s) per seed; medians of {args.repeats} repetitions; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(title)
    print(table(results))
    if args.plot:
        plot(results, args.plot, title)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
