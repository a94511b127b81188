"""The demonstration `make demo` runs: the neuron anatomy of an MLP, a BRO critic and a DACER
denoiser, then the main job as a study and its report — the two commands

    neurosurgery sweep --preset main            # SAC with and without ReGraMa, runs/main-study
    neurosurgery report runs/main-study --out runs/main-study/report

— printing the report's tables and the path of its `report.html`. Run again, the finished runs
are skipped and the report is written anew.

`python -m agents.experiments.demo [--out DIR] [--smoke]` (`--smoke`: the preset's seconds-long
variant, in runs/main-study-smoke).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import neurosurgery as ns
from agents.networks import BroCritic, Denoiser


def anatomy() -> None:
    """Print the neuron groups of three networks and how long mapping each took."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    obs, act = 17, 6  # HalfCheetah-sized
    models = [
        ("MLP 256×2, ReLU", eqx.nn.MLP(obs + act, 1, 256, 2, key=k1), (jnp.zeros(obs + act),)),
        (
            "BRO critic, width 512, 2 blocks",
            BroCritic(obs, act, width=512, blocks=2, key=k2),
            (jnp.zeros(obs), jnp.zeros(act)),
        ),
        (
            "DACER denoiser, 3×256 mish",
            Denoiser(obs, act, key=k3),
            (jnp.zeros(obs), jnp.zeros(act), jnp.float32(0.5)),
        ),
    ]
    for title, model, example in models:
        start = time.perf_counter()
        found = ns.anatomy(model, *example)
        elapsed = time.perf_counter() - start
        print(f"\n== {title}  (mapped in {elapsed:.2f} s)")
        print(found.summary())


def main(argv: list[str] | None = None) -> int:
    """The demonstration; returns the exit status of the first command that failed, else 0."""
    from agents.training import read_preset
    from agents.training.cli import main as neurosurgery

    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--out", default=None, help="the study folder (default: the preset's)")
    parser.add_argument("--smoke", action="store_true", help="the seconds-long variant")
    parser.add_argument("--no-anatomy", action="store_true", help="skip the anatomy printout")
    args = parser.parse_args(argv)
    if not args.no_anatomy:
        anatomy()
    out = args.out or read_preset("main", smoke=args.smoke).out
    assert out is not None  # the preset names its folder
    sweep = ["sweep", "--preset", "main", "--out", out] + (["--smoke"] if args.smoke else [])
    print(f"\n$ neurosurgery {' '.join(sweep)}", flush=True)
    code = neurosurgery(sweep)
    if code != 0:
        return code
    report = ["report", out, "--out", str(Path(out) / "report")]
    print(f"\n$ neurosurgery {' '.join(report)}", flush=True)
    return neurosurgery(report)


if __name__ == "__main__":
    sys.exit(main())
