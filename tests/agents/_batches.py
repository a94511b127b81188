"""A small replay batch shared by the agents' tests."""

import jax.numpy as jnp
import numpy as np

from agents import Batch


def random_batch(terminated: list[float]) -> Batch:
    """Four transitions with 3-dim observations and 2-dim actions in (-1, 1), from a fixed seed."""
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return Batch(f(4, 3), jnp.tanh(f(4, 2)), f(4), f(4, 3), jnp.asarray(terminated, jnp.float32))
