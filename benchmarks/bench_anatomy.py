"""Time to map a BRO-size critic (width 512, 2 blocks) and DACER's 3×256 denoiser, on CPU.

Run: `.venv/bin/python benchmarks/bench_anatomy.py [--repeats N]`. Prints the median and range of
`ns.anatomy(...)` wall time (tracing the model once and following its units), and the time of one
plain `jax.make_jaxpr` of the same call for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import neurosurgery as ns
from agents.networks import BroCritic, Denoiser


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm caches (imports, primitive dispatch)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    obs, act = 67, 21  # humanoid-sized observation and action
    cases = {
        "BRO critic (512 wide, 2 blocks)": (
            BroCritic(obs, act, width=512, blocks=2, key=jax.random.key(0)),
            (jnp.zeros(obs), jnp.zeros(act)),
        ),
        "DACER denoiser (3×256 mish)": (
            Denoiser(obs, act, key=jax.random.key(1)),
            (jnp.zeros(obs), jnp.zeros(act), jnp.float32(0.5)),
        ),
    }
    print(f"device: {jax.devices()[0].device_kind}, repeats: {args.repeats}")
    print(
        f"{'model':34s} {'anatomy (median)':>17s} {'min':>8s} {'max':>8s} {'make_jaxpr':>11s} {'ratio':>6s}"
    )
    for name, (model, example) in cases.items():
        t_map = timed(lambda m=model, e=example: ns.anatomy(m, *e), args.repeats)
        t_jaxpr = timed(
            lambda m=model, e=example: jax.make_jaxpr(lambda *a: m(*a))(*e), args.repeats
        )
        med, ref = statistics.median(t_map), statistics.median(t_jaxpr)
        print(
            f"{name:34s} {med * 1e3:15.0f}ms {min(t_map) * 1e3:6.0f}ms {max(t_map) * 1e3:6.0f}ms "
            f"{ref * 1e3:9.1f}ms {med / ref:5.0f}×"
        )


if __name__ == "__main__":
    main()
