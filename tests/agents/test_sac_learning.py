"""Learning check: SAC solves the point-mass task (slow; run with --runslow)."""

import pytest

import agents
from agents import NetworkConfig, SACConfig, TrainConfig


@pytest.mark.slow
def test_sac_solves_point_mass(tmp_path):
    net = NetworkConfig(width=64, depth=2)
    config = TrainConfig(
        env="test/point-mass",
        seeds=(0, 1),
        steps=6000,
        episode_length=50,
        learning_starts=500,
        buffer_size=10_000,
        log_every=500,
        eval_every=1000,
        eval_episodes=8,
        checkpoint_every=6000,
        run_dir=str(tmp_path / "run"),
        sinks=("csv",),
        progress=False,
        sac=SACConfig(batch_size=64, actor=net, critic=net),
    )
    summary = agents.train(config)
    # a random policy scores about -55; reaching the target quickly scores above -10
    assert min(summary["eval/episode_return"]["final"]) > -12
