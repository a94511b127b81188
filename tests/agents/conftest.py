"""Fixtures shared by the agents' tests: a small replay batch and the trainer's base config."""

import jax.numpy as jnp
import numpy as np
import pytest

from agents import Batch, NetworkConfig, SACConfig, TrainConfig, Trainer

#: the trainer's tests: SAC with 16-wide networks on the point-mass task, two seeds
NET = NetworkConfig(width=16, depth=1)
BASE = TrainConfig(
    env="test/point-mass",
    seeds=(0, 1),
    steps=1000,
    num_envs=2,
    episode_length=20,
    learning_starts=200,
    buffer_size=2000,
    log_every=200,
    eval_every=400,
    eval_episodes=2,
    checkpoint_every=200,
    sinks=("csv", "jsonl", "tensorboard"),
    progress=False,
    sac=SACConfig(batch_size=16, actor=NET, critic=NET),
)


@pytest.fixture(scope="session")
def base_config() -> TrainConfig:
    """A small training run of SAC on `test/point-mass` (every test overrides run_dir)."""
    return BASE


@pytest.fixture(scope="session")
def random_batch():
    """`random_batch(terminated)`: four transitions with 3-dim observations and 2-dim actions
    in (-1, 1), from a fixed seed."""

    def make(terminated: list[float]) -> Batch:
        rng = np.random.default_rng(0)
        f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
        return Batch(
            f(4, 3), jnp.tanh(f(4, 2)), f(4), f(4, 3), jnp.asarray(terminated, jnp.float32)
        )

    return make


@pytest.fixture(scope="module")
def quick_compiles():
    """The trainer's programs compiled with less LLVM optimisation for a whole module (its
    module-scoped runs included): the same programs, slower to run and about 4x faster to
    compile, which is what short test runs spend their time on. Use with
    `pytestmark = pytest.mark.usefixtures("quick_compiles")`."""
    before = Trainer.compiler_options
    Trainer.compiler_options = {"xla_backend_optimization_level": 0}
    yield
    Trainer.compiler_options = before
