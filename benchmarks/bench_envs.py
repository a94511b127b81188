"""Environment throughput: env-steps/s per backend × num_envs, and dm_control worker scaling.

    python benchmarks/bench_envs.py            # short run (a few minutes on 2 CPU cores)
    python benchmarks/bench_envs.py --full     # heavier tasks too, longer timings
    python benchmarks/bench_envs.py --gpu      # on a GPU: Playground HumanoidWalk, 1,024-4,096 envs
    python benchmarks/bench_envs.py --plot docs/figures/envs.png   # the tables, and a figure

Part 1 times `env.step` for each backend and `num_envs` in (1, 16, 64, 256): JAX backends as one
compiled `lax.scan` rollout (compile time reported apart), Playground tasks on both of its
physics implementations (MJX, `impl="jax"`, and MuJoCo Warp, `impl="warp"`), dm_control
through its worker pool.
Part 2 compares the dm_control worker pool against one plain single-core dm_control loop:
wall ratio = pool env-steps/s ÷ (native steps/s × workers), the target being ≥ 0.9, and CPU
ratio = pool env-steps per worker CPU-second ÷ native steps per CPU-second, the pool's overhead
alone, which stays meaningful when other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "disable")

import jax
import jax.numpy as jnp
import numpy as np

import envs

try:  # MuJoCo Warp logs its start-up and every kernel module it loads: keep tables readable
    import warp

    warp.config.log_level = warp.LOG_WARNING
except ImportError:
    pass

SIZES = (1, 16, 64, 256)


def bench_jax(
    name: str, num_envs: int, steps: int, repeats: int = 3, **options: object
) -> tuple[float, float]:
    """Return (env-steps/s, compile seconds) of a jitted `lax.scan` rollout of `steps` steps;
    `options` go to `envs.make` (e.g. `impl="warp"`)."""
    env = envs.make(name, num_envs=num_envs, seed=0, **options)
    actions = jax.random.uniform(
        jax.random.key(1), (steps, num_envs, env.action_size), jnp.float32, -1.0, 1.0
    )

    @jax.jit
    def rollout(key: jax.Array, actions: jax.Array) -> jax.Array:
        state, _ = env.reset(key)
        state, out = jax.lax.scan(env.step, state, actions)
        # Depend on every observation so that no simulation step can be optimised away.
        return out.obs.sum() + out.reward.sum() + state.episode_return.sum()

    start = time.perf_counter()
    jax.block_until_ready(rollout(jax.random.key(0), actions))
    compiled = time.perf_counter() - start
    best = float("inf")
    for i in range(repeats):  # best of a few: the machine may be shared
        start = time.perf_counter()
        jax.block_until_ready(rollout(jax.random.key(2 + i), actions))
        best = min(best, time.perf_counter() - start)
    return steps * num_envs / best, compiled


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of running processes, from /proc (Linux)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def bench_dmc(
    name: str, num_envs: int, seconds: float, num_workers: int | None = None
) -> tuple[float, float]:
    """Env-steps/s of the dm_control worker pool, per wall second and per worker CPU second."""
    with envs.make(name, num_envs=num_envs, seed=0, num_workers=num_workers) as env:
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (64, num_envs, env.action_size)).astype(np.float32)
        state, _ = env.reset()
        for i in range(5):  # warm-up
            state, _ = env.step(state, actions[i])
        cpu = _cpu_seconds(env.worker_pids)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            state, _ = env.step(state, actions[count % 64])
            count += 1
        wall = time.perf_counter() - start
        cpu = _cpu_seconds(env.worker_pids) - cpu
        return count * num_envs / wall, count * num_envs / max(cpu, 1e-9)


def bench_native(domain: str, task: str, seconds: float, copies: int = 1) -> tuple[float, float]:
    """Steps/s of one plain dm_control loop in this process, per wall and per CPU second.

    With `copies > 1` the loop steps that many environments in turn, as one worker does with
    its slice: the working set of many environments no longer fits the CPU caches.
    """
    from dm_control import suite

    tasks = [suite.load(domain, task, task_kwargs={"random": i}) for i in range(copies)]
    spec = tasks[0].action_spec()
    rng = np.random.default_rng(0)
    actions = rng.uniform(spec.minimum, spec.maximum, (64, *spec.shape))
    for env in tasks:
        env.reset()
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for env in tasks:
            if env.step(actions[count % 64]).last():
                env.reset()
            count += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return count / wall, count / cpu


def bench_step_record(num_envs: int = 16, obs_size: int = 17, calls: int = 20_000) -> tuple:
    """µs per `Step` built from host arrays: Equinox's constructor vs `host_step` (dm_control's
    path, once per `step` in the calling process)."""
    import timeit

    from envs._core import host_step

    rng = np.random.default_rng(0)
    fields = dict(
        obs=rng.normal(size=(num_envs, obs_size)).astype(np.float32),
        reward=np.zeros(num_envs, np.float32),
        terminated=np.zeros(num_envs, bool),
        truncated=np.zeros(num_envs, bool),
        final_obs=rng.normal(size=(num_envs, obs_size)).astype(np.float32),
        episode_return=np.zeros(num_envs, np.float32),
        episode_length=np.zeros(num_envs, np.int32),
    )
    slow = min(timeit.repeat(lambda: envs.Step(**fields), number=calls, repeat=3))
    fast = min(timeit.repeat(lambda: host_step(**fields), number=calls, repeat=3))
    return slow / calls * 1e6, fast / calls * 1e6


def plot(
    throughput: dict[str, dict[int, float]],
    scaling: dict[str, dict[int, tuple[float, float]]],
    path: str,
    title: str,
) -> None:
    """Two panels: env-steps/s against num_envs per backend (log-log), and the dm_control
    pool's ratio (k) and CPU ratio against num_envs per task, with the 0.9 target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for label, rates in throughput.items():
        ns = sorted(rates)
        left.plot(ns, [rates[n] for n in ns], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="num_envs", ylabel="env-steps/s")
    left.set_title("throughput per backend")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    for i, (task, ratios) in enumerate(scaling.items()):
        ns = sorted(ratios)
        color = f"C{i}"
        right.plot(
            ns, [ratios[n][0] for n in ns], marker="o", color=color, label=f"{task}, ratio (k)"
        )
        right.plot(
            ns,
            [ratios[n][1] for n in ns],
            marker="s",
            ls="--",
            color=color,
            label=f"{task}, CPU ratio",
        )
    right.axhline(0.9, color="gray", ls=":", label="target 0.9")
    right.set(xscale="log", xlabel="num_envs", ylabel="pool ÷ native, same work per core")
    right.set_title("dm_control worker pool against a native loop")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="heavier tasks, longer timings")
    parser.add_argument("--skip-jax", action="store_true", help="only the dm_control parts")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="JAX part: Playground HumanoidWalk and CheetahRun with 1,024, 2,048 and 4,096 envs",
    )
    parser.add_argument("--plot", metavar="PNG", help="also draw the measurements into this file")
    args = parser.parse_args()
    if args.plot:  # before minutes of timing, not after
        if not args.plot.endswith(".png"):
            parser.error(f"--plot {args.plot}: the figure is a PNG; name a file ending in .png")
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    throughput: dict[str, dict[int, float]] = {}
    scaling_ratios: dict[str, dict[int, tuple[float, float]]] = {}
    cores = len(os.sched_getaffinity(0))
    seconds = 4.0 if args.full else 1.5
    jax_steps = 200 if args.full else 100
    jax_tasks = ["brax/inverted_pendulum", "playground/CartpoleSwingup"]
    dmc_tasks = ["dmc/cartpole-swingup"]
    scaling = ["cheetah-run", "humanoid-walk"]
    if args.full:
        jax_tasks += ["brax/halfcheetah", "playground/CheetahRun"]
        dmc_tasks += ["dmc/cheetah-run", "dmc/humanoid-walk"]
        scaling += ["dog-run"]
    sizes = SIZES
    platform = jax.devices()[0].platform
    if args.gpu:
        if platform != "gpu":
            raise SystemExit(
                f"--gpu: JAX runs on {platform!r}, not on a GPU; thousands of MJX humanoids "
                "would take hours here (on a GPU machine install the cuda extra: pip install -e '.[cuda]')"
            )
        jax_tasks, sizes = ["playground/HumanoidWalk", "playground/CheetahRun"], (1024, 2048, 4096)
    print(
        f"jax {jax.__version__} on {platform}, {cores} CPU cores available, load average ", end=""
    )
    print(f"{os.getloadavg()[0]:.1f} (other processes compete for the cores above 0)\n")

    print("## env-steps/s per backend × num_envs")
    print("| task | " + " | ".join(f"{n} envs" for n in sizes) + " | compile (s) |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for name in [] if args.skip_jax else jax_tasks:
        impls = ("jax", "warp") if name.startswith("playground/") else (None,)
        for impl in impls:
            options = {} if impl is None else {"impl": impl}
            rates, compiles = [], []
            for n in sizes:
                rate, compiled = bench_jax(name, n, jax_steps, **options)
                rates.append(rate)
                compiles.append(compiled)
            cells = " | ".join(f"{r:,.0f}" for r in rates)
            label = name if impl is None else f"{name} ({'MJX' if impl == 'jax' else 'warp'})"
            throughput[label] = dict(zip(sizes, rates, strict=True))
            print(f"| {label} | {cells} | {min(compiles):.0f}–{max(compiles):.0f} |", flush=True)
    if sizes != SIZES and dmc_tasks:  # dm_control keeps its own sizes
        print("\n| task | " + " | ".join(f"{n} envs" for n in SIZES) + " | compile (s) |")
        print("|---|" + "---|" * (len(SIZES) + 1))
    for name in dmc_tasks:
        for workers, label in ((cores, f"{cores} workers"), (0, "in-process")):
            rates = [bench_dmc(name, n, seconds, num_workers=workers)[0] for n in SIZES]
            throughput[f"{name} ({label})"] = dict(zip(SIZES, rates, strict=True))
            cells = " | ".join(f"{r:,.0f}" for r in rates)
            print(f"| {name} ({label}) | {cells} | – |", flush=True)

    slow, fast = bench_step_record()
    print(
        f"\nStep record per dm_control step (calling process): Step(...) {slow:.1f} µs, "
        f"host_step(...) {fast:.1f} µs ({slow / fast:.0f}×)"
    )

    print(f"\n## dm_control worker pool vs one native loop ({cores} workers)")
    print("ratio = pool env-steps/s ÷ (native steps/s × workers), target ≥ 0.9. Native: one")
    print("environment in a loop, or as many environments in turn as one worker holds (k).")
    print("CPU ratio = pool env-steps per worker CPU-second ÷ native (k) steps per CPU-second.")
    print(f"load average before: {os.getloadavg()[0]:.1f}\n")
    print(
        "| task | envs | native, 1 env | native, k envs | pool | ratio (1) | ratio (k) | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in scaling:
        domain, name = task.split("-", 1)
        one = bench_native(domain, name, seconds)[0]
        for n in (16, 64, 256):
            k = -(-n // cores)
            pool, pool_cpu = bench_dmc(f"dmc/{task}", n, seconds, num_workers=cores)
            native, native_cpu = bench_native(domain, name, seconds, copies=k)
            ratio_k, cpu_ratio = pool / (native * cores), pool_cpu / native_cpu
            scaling_ratios.setdefault(f"dmc/{task}", {})[n] = (ratio_k, cpu_ratio)
            print(
                f"| dmc/{task} | {n} | {one:,.0f} | {native:,.0f} (k={k}) | {pool:,.0f} | "
                f"{pool / (one * cores):.2f} | {ratio_k:.2f} | {cpu_ratio:.2f} |",
                flush=True,
            )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.plot:
        title = (
            f"python benchmarks/bench_envs.py{' --full' if args.full else ''}: jax "
            f"{jax.__version__} on {platform}, {cores} CPU cores, {time.strftime('%Y-%m-%d')}"
        )
        plot(throughput, scaling_ratios, args.plot, title)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
