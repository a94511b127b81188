"""The main job: print the neuron anatomy of an MLP, a BRO critic and a DACER denoiser."""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp

import neurosurgery as ns
from agents.networks import BroCritic, Denoiser


def main() -> None:
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
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
        anatomy = ns.anatomy(model, *example)
        elapsed = time.perf_counter() - start
        print(f"\n== {title}  (mapped in {elapsed:.2f} s)")
        print(anatomy.summary())


if __name__ == "__main__":
    main()
