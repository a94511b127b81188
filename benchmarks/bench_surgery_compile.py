"""Compile time of one SAC learning segment with and without neuron surgery, side by side.

SAC 256×2 on `test/point-mass` (64 environments, one seed), one learning segment, compiled
afresh for each variant in turn (rounds interleave the variants, so they see the same load):

* `no surgery`: no metric logged and no reset (`--surgery.metrics` empty): no surgery code in
  the update loop at all;
* `logging`: the default four metrics logged every 1000 updates, no resets;
* `regrama`: the same logging and ReGraMa resets of the critics every 1000 updates;
* `shrink_perturb`: the same logging and shrink-and-perturb of the critics every 1000 updates.

Prints each variant's compile times (min / median) and the median ratio to `no surgery`.

    python benchmarks/bench_surgery_compile.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from agents import ResetConfig, SurgeryConfig, TrainConfig, Trainer
from agents.training import _trainer

BASE = TrainConfig(
    env="test/point-mass",
    num_envs=64,
    episode_length=50,
    learning_starts=256,
    buffer_size=100_000,
    log_every=1024,
    eval_every=0,
    sinks=(),
    progress=False,
)
VARIANTS = {
    "no surgery": dict(surgery=SurgeryConfig(metrics=())),
    "logging": {},
    "regrama": dict(reset=ResetConfig(method="regrama")),
    "shrink_perturb": dict(reset=ResetConfig(method="shrink_perturb")),
}


def compile_seconds(config: TrainConfig) -> float:
    """Seconds to trace, lower and compile one learning segment."""
    _trainer._JIT_CACHE.clear()
    trainer = Trainer(config)
    ts = trainer.initial_state()
    t0 = time.perf_counter()
    trainer._segment.lower(ts, jnp.int32(0)).compile()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; SAC 256x2, test/point-mass, 64 envs, 1 seed")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, options in VARIANTS.items():
            times[name].append(compile_seconds(dataclasses.replace(BASE, **options)))
    base = statistics.median(times["no surgery"])
    print(f"{'variant':16s} {'min s':>7s} {'median s':>9s} {'/ no surgery':>13s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:16s} {min(values):7.2f} {median:9.2f} {median / base:13.2f}")


if __name__ == "__main__":
    main()
