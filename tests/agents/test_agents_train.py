"""BRO and DACER through the shared trainer: vmapped seeds, scheduled events, checkpoint, resume."""

import dataclasses
import json

import numpy as np
import pytest

import agents
from agents import BROConfig, DACERConfig, NetworkConfig, ResetConfig, SurgeryConfig, TrainConfig
from agents.training import CheckpointError, Trainer, load_checkpoint_extras, save_checkpoint
from agents.training.cli import main

BASE = TrainConfig(
    env="test/point-mass",
    seeds=(0, 1),
    steps=400,
    episode_length=20,
    learning_starts=200,
    buffer_size=1000,
    log_every=100,
    eval_every=200,
    eval_episodes=2,
    checkpoint_every=200,
    sinks=("csv",),
    progress=False,
)
TINY = {
    "bro": dict(
        bro=BROConfig(
            batch_size=8, critic_width=8, actor_width=8, n_quantiles=5, full_resets=(250,)
        )
    ),
    "dacer": dict(
        dacer=DACERConfig(
            batch_size=8,
            denoiser_width=8,
            denoiser_depth=1,
            critic=NetworkConfig(width=8),
            diffusion_steps=4,
            entropy_every=50,
            entropy_states=2,
            entropy_samples=16,
            gmm_iters=5,
        ),
        # the denoiser is scored per call of the chain and reset inside the compiled loop
        surgery=SurgeryConfig(every=50, networks=("critic", "actor")),
        reset=ResetConfig(method="regrama", tau=0.5, every=50, networks=("critic", "actor")),
    ),
}


@pytest.fixture(autouse=True)
def quick_compiles(monkeypatch):
    """The same programs with less LLVM optimisation: compiling dominates these short runs."""
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("agent", ["bro", "dacer"])
def test_train_seeds_and_resume(agent, tmp_path):
    config = dataclasses.replace(BASE, agent=agent, run_dir=str(tmp_path), **TINY[agent])
    summary = agents.train(config)
    assert summary["env_steps"] == 400 and summary["updates"] == 200
    finals = summary["eval/episode_return"]["final"]
    assert len(finals) == 2 and all(np.isfinite(finals))
    metrics = (tmp_path / "metrics.csv").read_text()
    assert "train/critic_loss" in metrics
    event = {"bro": "train/full_reset", "dacer": "train/entropy_estimate"}[agent]
    assert event in metrics
    if agent == "dacer":
        rows = [r.split(",") for r in metrics.splitlines()[1:]]
        resets = [float(v) for _, _, name, v in rows if name == "surgery/actor/reset"]
        assert resets and all(np.isfinite(resets)) and max(resets) > 0
    resumed = agents.train(dataclasses.replace(config, steps=500), resume=True)
    assert resumed["env_steps"] == 500
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert saved["agent"] == agent
    if agent == "bro":
        refuses_an_older_state_layout(config, tmp_path)


def refuses_an_older_state_layout(config: TrainConfig, run_dir) -> None:
    """A BRO checkpoint of the layout before the critics became two networks (no layout in its
    header) is refused before any array is read, naming what changed; the file is untouched."""
    path = run_dir / "checkpoint.ckpt"
    state, header, extras = load_checkpoint_extras(path, Trainer(config).state_shapes())
    assert header["state_layout"] == 2
    header.pop("state_layout")
    header.pop("leaves")
    save_checkpoint(path, state, header, extras)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"layout 1.*layout 2 \(layout 2: BRO's two critics"):
        agents.train(dataclasses.replace(config, steps=600), resume=True)
    assert path.read_bytes() == before


def test_cli_lists_the_agents_options(capsys):
    for agent, option in (("bro", "--bro.critic-width"), ("dacer", "--dacer.sampler")):
        with pytest.raises(SystemExit):
            main(["train", agent, "--help"])
        assert option in capsys.readouterr().out


def test_unknown_option_values_fail_before_work(tmp_path):
    bad = dataclasses.replace(
        BASE, agent="dacer", run_dir=str(tmp_path), dacer=DACERConfig(sampler="sde")
    )
    with pytest.raises(ValueError, match="sampler"):
        agents.train(bad)
    assert not (tmp_path / "config.json").exists()
