"""How close can a synchronous step of dm_control environments on worker processes come to
independent single-core loops? Bare dm_control, none of the pool's own bookkeeping.

    python benchmarks/bench_dmc_barrier.py                      # cheetah-run, 16 and 64 envs
    python benchmarks/bench_dmc_barrier.py --task humanoid-walk --envs 16 --rounds 4

The reference is `cores` independent processes, each stepping `envs / cores` environments in
turn (no synchronisation at all). Against it, each round times three ways of stepping all
`envs` environments once per call, every call waiting for all of them (a barrier):

- `pipe`: `cores` workers, woken by a pipe message and answering by pipe (the design of
  `envs`' dm_control pool);
- `pipe+poll, caller steps a slice`: `cores - 1` workers and the caller stepping one slice
  itself, both sides polling the pipe for 200 µs before sleeping;
- `shared-memory spin, caller steps a slice`: the same, with the command and the answers as
  counters in shared memory that the other side spins on (no system call at all while both
  are busy; after 200 µs a worker sleeps on its pipe). x86 only (it relies on the x86 memory
  order); this is a measurement, not something to ship.

Each ratio is divided by the mean of the reference runs before and after it. The last part
measures the ceiling that jitter alone puts on any barrier: each of the `cores` independent
loops records how long every pass over its environments takes, and mean ÷ E[max over the
loops] (passes paired at random) is the speed a zero-cost barrier would keep.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np

SPIN_S = 200e-6
_ctx = mp.get_context("spawn")


def _tasks(task: str, count: int, seed: int) -> tuple[list, np.ndarray]:
    from absl import logging as absl_logging
    from dm_control import suite

    absl_logging.set_verbosity(absl_logging.ERROR)
    domain, name = task.split("-", 1)
    envs = [
        suite.load(domain, name, task_kwargs={"random": seed + i, "time_limit": float("inf")})
        for i in range(count)
    ]
    for env in envs:
        env.reset()
    spec = envs[0].action_spec()
    actions = np.random.default_rng(seed).uniform(spec.minimum, spec.maximum, (count, *spec.shape))
    return envs, actions


def _step_all(envs: list, actions: np.ndarray) -> None:
    for env, action in zip(envs, actions, strict=True):
        env.step(action)


# ------------------------------------------------------------------ reference: no barrier
def _free_loop(task: str, count: int, seconds: float, seed: int, out: Any) -> None:
    envs, actions = _tasks(task, count, seed)
    _step_all(envs, actions)
    passes, clock = [], time.perf_counter
    start = clock()
    while clock() - start < seconds:
        t = clock()
        _step_all(envs, actions)
        passes.append(clock() - t)
    out.put((len(passes) * count / (clock() - start), passes))


def free_loops(task: str, envs: int, cores: int, seconds: float) -> tuple[float, list]:
    """Env-steps/s of `cores` independent loops together, and each loop's pass durations."""
    queue = _ctx.Queue()
    procs = [
        _ctx.Process(target=_free_loop, args=(task, envs // cores, seconds, 10 * i, queue))
        for i in range(cores)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(r[0] for r in results), [r[1] for r in results]


# ------------------------------------------------------------------ barriers
def _pipe_worker(task: str, count: int, seed: int, conn: Any, spin_s: float) -> None:
    envs, actions = _tasks(task, count, seed)
    conn.send_bytes(b"ok")
    clock = time.perf_counter
    while True:
        if spin_s:
            t = clock()
            while not conn.poll(0) and clock() - t < spin_s:
                pass
        if conn.recv_bytes() == b"close":
            return
        _step_all(envs, actions)
        conn.send_bytes(b"ok")


def pipe_pool(task: str, envs: int, cores: int, seconds: float, caller_steps: bool) -> float:
    """Barrier by pipe messages; with `caller_steps`, one slice is stepped by the caller and
    both sides poll before sleeping."""
    workers = cores - 1 if caller_steps else cores
    spin_s = SPIN_S if caller_steps else 0.0
    count = envs // cores
    conns, procs = [], []
    for i in range(workers):
        parent, child = _ctx.Pipe()
        proc = _ctx.Process(target=_pipe_worker, args=(task, count, 10 * i, child, spin_s))
        proc.start()
        conns.append(parent)
        procs.append(proc)
    for conn in conns:
        conn.recv_bytes()
    mine, actions = _tasks(task, count, 99) if caller_steps else ([], None)
    clock = time.perf_counter
    calls, start = 0, clock()
    while clock() - start < seconds:
        for conn in conns:
            conn.send_bytes(b"step")
        if mine:
            _step_all(mine, actions)
        for conn in conns:
            if spin_s:
                t = clock()
                while not conn.poll(0) and clock() - t < spin_s:
                    pass
            conn.recv_bytes()
        calls += 1
    rate = calls * envs / (clock() - start)
    for conn in conns:
        conn.send_bytes(b"close")
    for proc in procs:
        proc.join()
    return rate


def _spin_worker(task: str, count: int, seed: int, index: int, shared: Any, conn: Any) -> None:
    envs, actions = _tasks(task, count, seed)
    counters = np.frombuffer(shared, dtype=np.int64)  # [command, done_0.., asleep_0..]
    done, asleep = 1 + index, 1 + len(counters) // 2 + index
    conn.send_bytes(b"ok")
    seen, clock = 0, time.perf_counter
    while True:
        t = clock()
        while counters[0] == seen and clock() - t < SPIN_S:
            pass
        if counters[0] == seen:
            counters[asleep] = 1
            while counters[0] == seen:  # timed sleeps: a missed wake-up costs 1 ms, no hang
                if conn.poll(0.001):
                    conn.recv_bytes()
            counters[asleep] = 0
        seen = int(counters[0])
        if seen < 0:
            return
        _step_all(envs, actions)
        counters[done] = seen


def spin_pool(task: str, envs: int, cores: int, seconds: float) -> float:
    """Barrier by counters in shared memory; the caller steps one slice."""
    workers, count = cores - 1, envs // cores
    shared = _ctx.RawArray("b", 8 * 2 * (workers + 1))
    counters = np.frombuffer(shared, dtype=np.int64)
    half = len(counters) // 2
    conns, procs = [], []
    for i in range(workers):
        parent, child = _ctx.Pipe()
        proc = _ctx.Process(target=_spin_worker, args=(task, count, 10 * i, i, shared, child))
        proc.start()
        conns.append(parent)
        procs.append(proc)
    for conn in conns:
        conn.recv_bytes()
    mine, actions = _tasks(task, count, 99)
    clock = time.perf_counter
    calls, start = 0, clock()
    while clock() - start < seconds:
        calls += 1
        counters[0] = calls
        for i, conn in enumerate(conns):
            if counters[1 + half + i]:
                conn.send_bytes(b"w")
        _step_all(mine, actions)
        for i in range(workers):
            t = clock()
            while counters[1 + i] != calls:
                if clock() - t > 30.0:
                    raise RuntimeError(f"worker {i} did not answer within 30 s")
    rate = calls * envs / (clock() - start)
    counters[0] = -1
    for conn in conns:
        conn.send_bytes(b"w")
    for proc in procs:
        proc.join()
    return rate


# ------------------------------------------------------------------ main
def jitter_ceiling(passes: list[list[float]], seed: int = 0) -> float:
    """mean pass ÷ E[max over loops of one pass each], passes paired at random."""
    rng = np.random.default_rng(seed)
    n = min(len(p) for p in passes)
    columns = np.stack([rng.permutation(np.asarray(p[:n])) for p in passes])
    return float(columns.mean() / columns.max(axis=0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cheetah-run", help="dm_control <domain>-<task>")
    parser.add_argument("--envs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=1.5, help="per timed run")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        raise SystemExit("needs at least 2 CPU cores (a barrier between processes on one core)")
    designs: dict[str, Callable[[int], float]] = {
        "pipe": lambda n: pipe_pool(args.task, n, cores, args.seconds, caller_steps=False),
        "pipe+poll, caller steps a slice": lambda n: pipe_pool(
            args.task, n, cores, args.seconds, caller_steps=True
        ),
    }
    if platform.machine() in ("x86_64", "AMD64"):
        designs["shared-memory spin, caller steps a slice"] = lambda n: spin_pool(
            args.task, n, cores, args.seconds
        )
    print(f"dmc/{args.task}, {cores} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"reference: {cores} independent loops of envs/{cores} environments each\n")
    print("| envs | design | median ratio | range | rounds |")
    print("|---|---|---|---|---|")
    for n in args.envs:
        if n % cores:
            raise SystemExit(f"--envs {n}: use a multiple of the {cores} cores")
        ratios: dict[str, list[float]] = {name: [] for name in designs}
        ceilings, references = [], []
        before, passes = free_loops(args.task, n, cores, args.seconds)
        for _ in range(args.rounds):
            rates = {name: run(n) for name, run in designs.items()}
            after, passes = free_loops(args.task, n, cores, args.seconds)
            reference = (before + after) / 2
            references.append(reference)
            ceilings.append(jitter_ceiling(passes))
            for name, rate in rates.items():
                ratios[name].append(rate / reference)
            before = after
        for name, values in ratios.items():
            print(
                f"| {n} | {name} | {statistics.median(values):.2f} | "
                f"{min(values):.2f}–{max(values):.2f} | {len(values)} |",
                flush=True,
            )
        print(
            f"| {n} | ceiling from jitter alone (zero-cost barrier) | "
            f"{statistics.median(ceilings):.2f} | {min(ceilings):.2f}–{max(ceilings):.2f} | "
            f"{len(ceilings)} |"
        )
        print(
            f"| {n} | (reference env-steps/s) | {statistics.median(references):,.0f} | "
            f"{min(references):,.0f}–{max(references):,.0f} | {len(references)} |",
            flush=True,
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
