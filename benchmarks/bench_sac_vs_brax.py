"""SAC training throughput side by side: this project's trainer against Brax's SAC trainer.

Both train SAC on the same MuJoCo Playground task (default `playground/CartpoleSwingup`, MJX
physics: `impl="jax"`) in one process, with the same settings:

* twin critics and an actor of 256×2 ReLU layers, batch 256, `--num-envs` environments (64);
* the same number of gradient updates per vectorised env step (one `env.step` of all
  environments), `--updates-per-step` (1 and 8). Brax's `grad_updates_per_step` = k means: one
  vectorised env step, then k SGD steps (each updates α, the critics and the actor on its own
  batch of 256). Our `replay_ratio` = k means k updates per vectorised env step, run in bodies
  of `q` env steps then `p` updates (p/q = k, p a whole number of policy-delay cycles: 2 steps
  then 2 updates at k = 1, 1 step then 8 updates at k = 8). Each of our updates updates the
  critics on its own batch of 256; the actor and α take `policy_delay` (2) steps in a row on
  every second update, so both sides make one actor and one critic step per update on average.
* episodes of 1,000 steps, action repeat 1, no observation normalisation, replay buffers of
  `--buffer-size` transitions on the device, `--learning-starts` env steps before learning.
  Settings that do not change the work of an update (learning rates, target entropy) keep each
  side's own values.

Our side runs **with ReGraMa resets and per-layer metric logging on** (`reset="regrama"`: every
`--reset-period` updates a surgery step scores every critic unit with GraMa at the pre-activation
and activation, the weight rule and τ-dormant, logs network- and layer-level inactive ratios and
resets the flagged units). Brax has neither.

How it is timed:

* Brax's `train` runs `num_evals − 1` compiled epochs of equal length (`--round-updates` updates
  per epoch) and calls `progress_fn` after each; its own `training/sps` times each epoch alone
  (from the call to the end of its computation, evaluation excluded). Our side runs one compiled
  segment of the same number of updates (and env steps) inside that `progress_fn`, so the two
  alternate in short rounds: Brax, ours, Brax, ours, … and see the same machine load. After the
  first (compiling) epoch and one warm-up pair, `--rounds` pairs are timed; rates and the ratio
  ours/Brax come from the total time of each side over those rounds. With the defaults the timed
  rounds hold 2,048 updates per side, four of our surgery steps.
* Compile time, the same way for both: the wall time of the first call of the training program
  minus the median wall time of a later call of the same work (Brax: the first epoch, whose call
  compiles it; ours: the first learning segment, compiled ahead of time on its first use). The
  programs that fill the replay buffer before learning (Brax's prefill, our warm-up) and Brax's
  evaluation are compiled separately and not counted.

Targets: ours ≥ 1.0× Brax's env-steps/s at 8 updates per step, ≥ 1.5× at 1 update per step.

The compute bound, printed after the table: the operations of one update (XLA's cost analysis of
a critic step and an actor-and-temperature step) and this machine's best rate for chains of
256×256 float32 products (what 256-wide layers on a batch of 256 are made of). Both sides run
the same operations per update, so the time of an update at that rate, against Brax's measured
time per update, caps the ratio any implementation of the same SAC could reach here.

    MUJOCO_GL=disable python benchmarks/bench_sac_vs_brax.py \\
        [--env playground/CartpoleSwingup] [--num-envs 64] [--updates-per-step 1 8] \\
        [--round-updates 128] [--rounds 16] [--reset-period 512]

On two CPU cores the default run takes about five minutes, half of it compiling; raise `--rounds`
for steadier figures (keep rounds × round updates a multiple of the reset period, so that the
timed rounds hold whole surgery periods).

Brax 0.14.2's SAC trainer calls `jax.device_put_replicated`, which JAX 0.10 removed. On JAX 0.10
and later this script puts an equivalent back into the `jax` module of its own process, before it
imports Brax's trainer (`_device_put_replicated`: every leaf stacked once per device and sharded
over them, what `jax.pmap` takes); on older JAX, Brax calls JAX's own function.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _timing import SegmentTimer

from agents import ResetConfig, SurgeryConfig, TrainConfig, Trainer

TARGETS = {1: 1.5, 8: 1.0}


def _flops(fn, *args) -> float:
    """Floating-point operations of one call of `fn`, from XLA's cost analysis."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def update_flops(agent: Any) -> float:
    """Operations of one SAC update, averaged over the policy-delay cycle: one critic step (with
    the soft target update) and, on average, one actor-and-temperature step. Counted per step,
    since XLA's cost analysis counts a loop body once."""
    from agents import Batch
    from agents.algorithms._steps import actor_and_alpha_step

    b, o, a = agent.config.batch_size, agent.obs_size, agent.action_size
    batch = Batch(
        jnp.zeros((b, o)), jnp.zeros((b, a)), jnp.zeros(b), jnp.zeros((b, o)), jnp.zeros(b)
    )
    state, key = agent.init(jax.random.key(0)), jax.random.key(1)
    opt_a, _, opt_t = agent._optimizers()
    critic = _flops(lambda s, bt, k: agent.update(s, bt, k, 1), state, batch, key)
    actor = _flops(
        lambda s, bt, k: actor_and_alpha_step(agent, s, bt, k, opt_a, opt_t), state, batch, key
    )
    return critic + actor


def matmul_rate(width: int = 256, reps: int = 5) -> float:
    """This machine's best rate (FLOP/s) for the products a network of this width is made of:
    a compiled chain of `width`×`width` by `width`×`width` float32 products (with a tanh between
    them), two chains side by side so both cores can work, best of `reps` runs.

    Every product of an update is this size or smaller (batch 256, width 256), and half of them
    contract over the batch (weight gradients), which runs slower: an update cannot run faster
    than its operation count at this rate.
    """
    steps = max(2, int(2e9 / (4 * width**3)))
    xs = tuple(jax.random.normal(jax.random.key(i), (width, width)) / width**0.5 for i in range(2))

    def chain(xs):
        def body(c, _):
            return tuple(jnp.tanh(x @ x) for x in c), None

        return jax.lax.scan(body, xs, None, length=steps)[0]

    f = jax.jit(chain).lower(xs).compile()
    jax.block_until_ready(f(xs))
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(xs))
        best = min(best, time.perf_counter() - t0)
    return 4 * width**3 * steps / best


def ours_timer(args: argparse.Namespace, rr: int) -> SegmentTimer:
    """This project's trainer, stepped one compiled segment at a time."""
    env_steps = args.round_updates // rr * args.num_envs
    config = TrainConfig(
        env=args.env,
        num_envs=args.num_envs,
        replay_ratio=float(rr),
        steps=10**9,
        learning_starts=args.learning_starts,
        log_every=env_steps,
        buffer_size=args.buffer_size,
        eval_every=0,
        progress=False,
        sinks=(),
        surgery=SurgeryConfig(every=args.reset_period),
        reset=ResetConfig(method="regrama", every=args.reset_period),
    )
    return SegmentTimer(Trainer(config))


def _device_put_replicated(x: Any, devices: list) -> Any:
    """`jax.device_put_replicated`, removed in JAX 0.10 and still called by Brax 0.14.2's SAC
    trainer: every leaf of `x` stacked once per device along a new leading axis, one slice on
    each device (what `jax.pmap` takes)."""
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), ("devices",)), jax.sharding.PartitionSpec("devices")
    )
    return jax.tree.map(
        lambda a: jax.device_put(jnp.broadcast_to(a, (len(devices), *jnp.shape(a))), sharding), x
    )


def run_setting(args: argparse.Namespace, rr: int) -> dict[str, Any]:
    if jax.__version_info__ >= (0, 10, 0):  # Brax's SAC trainer still calls it
        jax.device_put_replicated = _device_put_replicated
    from brax.training.agents.sac import train as brax_sac
    from mujoco_playground import registry, wrapper

    ours = ours_timer(args, rr)
    if ours.updates_per_segment != args.round_updates:
        raise SystemExit(
            f"our segment holds {ours.updates_per_segment} updates, not {args.round_updates}"
        )
    n = args.num_envs
    vec_steps = ours.env_steps_per_segment // n  # Brax epochs: the same env steps and updates
    learning_starts = math.ceil(args.learning_starts / n) * n
    epochs = args.rounds + 2  # compile, warm-up, measured rounds
    brax_times: list[float] = []

    def progress(step: int, metrics: dict[str, Any]) -> None:
        if "training/sps" not in metrics:
            return  # the evaluation before training
        brax_times.append(vec_steps * n / float(metrics["training/sps"]))
        if len(brax_times) >= 2:  # ours right after each Brax epoch (its first one compiles)
            ours.times.append(ours.step())

    name = args.env.removeprefix("playground/")
    env = registry.load(name, config_overrides={"impl": "jax"})
    brax_sac.train(
        environment=env,
        wrap_env_fn=wrapper.wrap_for_brax_training,
        num_timesteps=learning_starts + epochs * vec_steps * n,
        num_evals=epochs + 1,
        episode_length=1000,
        action_repeat=1,
        num_envs=n,
        num_eval_envs=1,
        learning_rate=1e-3,
        discounting=0.99,
        batch_size=256,
        grad_updates_per_step=rr,
        min_replay_size=learning_starts,
        max_replay_size=args.buffer_size,
        normalize_observations=False,
        seed=0,
        progress_fn=progress,
    )
    assert len(brax_times) == epochs, brax_times
    brax_total, ours_total = sum(brax_times[2:]), sum(ours.times[1:])
    brax_s, ours_s = brax_total / args.rounds, ours_total / args.rounds  # per round
    pair_ratios = sorted(b / o for b, o in zip(brax_times[2:], ours.times[1:], strict=True))
    updates = vec_steps * rr
    return {
        "update_flops": update_flops(ours.trainer.agent),
        "updates_per_step": rr,
        "env_steps_per_round": vec_steps * n,
        "updates_per_round": updates,
        "ours_env_steps_per_s": vec_steps * n / ours_s,
        "brax_env_steps_per_s": vec_steps * n / brax_s,
        "ours_updates_per_s": updates / ours_s,
        "brax_updates_per_s": updates / brax_s,
        "ratio": brax_total / ours_total,
        "pair_ratio_quartiles": statistics.quantiles(pair_ratios, n=4),
        "ours_compile_s": ours.compile_s + ours.first_s - statistics.median(ours.times[1:]),
        "ours_aot_compile_s": ours.compile_s,
        "brax_compile_s": brax_times[0] - statistics.median(brax_times[2:]),
        "ours_round_s": ours.times,
        "brax_round_s": brax_times,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| updates/env step | ours env-steps/s | Brax env-steps/s | ours updates/s | "
        "Brax updates/s | ours/Brax | target | met | ours compile s | Brax compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        target = TARGETS.get(r["updates_per_step"])
        met = "—" if target is None else ("yes" if r["ratio"] >= target else "**no**")
        rows.append(
            f"| {r['updates_per_step']} | {r['ours_env_steps_per_s']:,.0f} | "
            f"{r['brax_env_steps_per_s']:,.0f} | {r['ours_updates_per_s']:,.1f} | "
            f"{r['brax_updates_per_s']:,.1f} | {r['ratio']:.2f}× | "
            f"{'—' if target is None else f'≥ {target}×'} | {met} | "
            f"{r['ours_compile_s']:.0f} | {r['brax_compile_s']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="playground/CartpoleSwingup")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--updates-per-step", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--round-updates", type=int, default=128, help="gradient updates per timed round"
    )
    parser.add_argument("--rounds", type=int, default=16, help="timed pairs (after a warm-up)")
    parser.add_argument("--reset-period", type=int, default=512, help="updates between surgeries")
    parser.add_argument("--learning-starts", type=int, default=4096)
    parser.add_argument("--buffer-size", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="also print each result as JSON")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    if not args.env.startswith("playground/"):
        parser.error("--env must be a Playground task (playground/<Name>)")
    print("device:", jax.devices()[0], flush=True)
    for rr in args.updates_per_step:
        if args.round_updates % (2 * rr):  # whole policy-delay cycles of ours at every k
            parser.error("--round-updates must be a multiple of 2 × each updates-per-step")
    results = []
    for rr in args.updates_per_step:
        results.append(run_setting(args, rr))
        if args.json:
            print(json.dumps(results[-1]), flush=True)
    print()
    print(
        f"{args.env} (MJX), {args.num_envs} envs, batch 256, 256×2 ReLU networks; "
        f"{args.rounds} interleaved rounds of {args.round_updates} updates per side.\n"
        f"Ours with ReGraMa resets and per-layer metric logging (every {args.reset_period} "
        "updates); Brax has neither. Compile: first call minus a later call of the same work."
    )
    print()
    print(table(results))
    print()
    for r in results:
        target = TARGETS.get(r["updates_per_step"])
        if target is not None:
            verdict = "met" if r["ratio"] >= target else "NOT met"
            print(
                f"target at {r['updates_per_step']} update(s) per env step: ours ≥ {target}× "
                f"Brax; measured {r['ratio']:.2f}× — {verdict}"
            )
    # The compute bound: both sides run the same arithmetic per update (Brax's also samples an
    # action for its α loss); no implementation of it beats the machine's matrix-product rate.
    rate = matmul_rate()
    print()
    print(f"compute bound: {rate / 1e9:.0f} GFLOP/s for chains of 256×256 float32 products here")
    for r in results:
        flops = r["update_flops"]
        brax_s = 1.0 / r["brax_updates_per_s"]
        print(
            f"  {r['updates_per_step']} update(s)/env step: {flops / 1e6:.0f} MFLOP per update; "
            f"ours runs {flops * r['ours_updates_per_s'] / 1e9:.0f} GFLOP/s, Brax "
            f"{flops / brax_s / 1e9:.0f}; an update at the bound takes {1e3 * flops / rate:.2f} ms "
            f"vs Brax's {1e3 * brax_s:.2f} ms per update → at most {brax_s * rate / flops:.2f}× Brax "
            "with nothing else in the loop"
        )


if __name__ == "__main__":
    main()
