"""Frozen run configuration shared by every agent, and its validation (before any work)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from envs._playground import IMPLS

from ._bro import BROConfig
from ._dacer import DACERConfig
from ._mlp import NetworkConfig
from ._sac import SACConfig

AGENTS = ("sac", "bro", "dacer")
RESETS = ("none", "redo", "regrama", "regrama_act", "regrama_weight")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: agent, environment, budget, logging, checkpoints, resets."""

    agent: str = "sac"
    """Agent to train (sac, bro, dacer)."""
    env: str = "dmc/cartpole-swingup"
    """Environment name for `envs.make` (brax/…, playground/…, dmc/…) or test/point-mass."""
    seeds: tuple[int, ...] = (0,)
    """Seeds trained together in one process (vmapped)."""
    steps: int = 1_000_000
    """Environment steps per seed (vector steps × num_envs), rounded up to whole segments."""
    num_envs: int = 1
    """Parallel environments per seed."""
    env_workers: int | None = None
    """dm_control only: worker processes of each seed's environments (0: step them in the
    training process). Default: one per core for more than one environment per seed, else 0.
    Trajectories do not depend on it, so a run may resume with another value."""
    env_impl: str | None = None
    """Playground only: physics implementation, "jax" (MJX) or "warp" (MuJoCo Warp, for
    GPUs). Default: "jax"."""
    action_repeat: int = 1
    """Environment action repeat."""
    episode_length: int = 1000
    """Time limit of an episode (truncation)."""
    replay_ratio: float = 1.0
    """Gradient updates per vectorised env step (one call of env.step); fractions like 0.5 work."""
    learning_starts: int = 5000
    """Environment steps of uniform random actions before the first update."""
    buffer_size: int = 1_000_000
    """Replay capacity per seed (transitions), on device."""
    log_every: int = 5000
    """Environment steps between metric records; also the length of one compiled segment."""
    eval_every: int = 10_000
    """Environment steps between deterministic evaluations (rounded to log_every); 0: never."""
    eval_episodes: int = 5
    """Evaluation episodes (run in parallel) per seed."""
    checkpoint_every: int = 50_000
    """Environment steps between checkpoints (rounded to log_every); the last step always saves."""
    run_dir: str = "runs/run"
    """Folder for config.json, metrics, TensorBoard events, checkpoint, plots, summary."""
    sinks: tuple[str, ...] = ("csv", "jsonl", "tensorboard", "console")
    """Metric sinks: csv, jsonl, tensorboard, console."""
    progress: bool = True
    """Show a progress bar."""
    reset: str = "none"
    """Neuron reset method: none, redo (τ-dormant), regrama (GraMa at the pre-activation),
    regrama_act (GraMa at the activation), regrama_weight (the released code's weight rule).
    Inactive ratios of every metric are logged at each surgery step whatever the method."""
    reset_tau: float = 0.0
    """Score threshold τ: a unit with score ≤ τ counts as inactive (0 is allowed)."""
    reset_period: int = 1000
    """Gradient updates between surgery steps (scores logged, resets applied)."""
    reset_start: int = 0
    """Updates before which no reset happens (scores are still logged)."""
    reset_end: int = 0
    """Updates from which no reset happens; 0: no end."""
    reset_max_fraction: float = 1.0
    """Largest fraction of a layer's neurons reset at once."""
    reset_networks: tuple[str, ...] = ("critic",)
    """Networks operated on: critic, actor (bro also: optimistic_actor)."""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyperparameters."""
    bro: BROConfig = field(default_factory=BROConfig)
    """BRO hyperparameters (agent bro)."""
    dacer: DACERConfig = field(default_factory=DACERConfig)
    """DACER hyperparameters (agent dacer)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; available: {', '.join(AGENTS)}")
        if self.reset not in RESETS:
            raise ValueError(f"unknown reset {self.reset!r}; available: {', '.join(RESETS)}")
        positive = ("steps", "num_envs", "action_repeat", "episode_length", "buffer_size")
        positive += ("log_every", "eval_episodes", "checkpoint_every", "reset_period")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.reset_end and self.reset_end <= self.reset_start:
            raise ValueError(
                f"reset_end ({self.reset_end}) must be after reset_start ({self.reset_start}), "
                "or 0 for no end"
            )
        for name in ("learning_starts", "eval_every", "reset_tau", "reset_start", "reset_end"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.replay_ratio > 0:
            raise ValueError(f"replay_ratio must be > 0, got {self.replay_ratio}")
        if not 0 < self.reset_max_fraction <= 1:
            raise ValueError(f"reset_max_fraction must be in (0, 1], got {self.reset_max_fraction}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        networks = (
            ("critic", "actor", "optimistic_actor") if self.agent == "bro" else ("critic", "actor")
        )
        for net in self.reset_networks:
            if net not in networks:
                raise ValueError(f"reset_networks: unknown network {net!r} ({', '.join(networks)})")
        for sink in self.sinks:
            if sink not in ("csv", "jsonl", "tensorboard", "console"):
                raise ValueError(f"unknown sink {sink!r} (csv, jsonl, tensorboard, console)")
        if self.env_workers is not None:
            if isinstance(self.env_workers, bool) or not isinstance(self.env_workers, int):
                raise ValueError(
                    f"env_workers must be an integer or None, got {self.env_workers!r}"
                )
            if self.env_workers < 0:
                raise ValueError(
                    f"env_workers must be >= 0 (0: step in the training process), got "
                    f"{self.env_workers}"
                )
            if not self.env.startswith("dmc/"):
                raise ValueError(
                    f"env_workers applies to dm_control environments (dmc/...), not {self.env!r}; "
                    "leave it unset"
                )
        if self.env_impl is not None:
            if self.env_impl not in IMPLS:
                raise ValueError(
                    f"env_impl must be one of {', '.join(map(repr, IMPLS))} (MJX or MuJoCo "
                    f"Warp), got {self.env_impl!r}"
                )
            if not self.env.startswith("playground/"):
                raise ValueError(
                    f"env_impl applies to Playground environments (playground/...), not "
                    f"{self.env!r}; leave it unset"
                )

        if self.buffer_size < self.num_envs:
            raise ValueError("buffer_size must hold at least one vector step (num_envs)")
        {"sac": self.sac, "bro": self.bro, "dacer": self.dacer}[self.agent].validate()


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of `config_to_dict` (tuples restored, nested configs rebuilt)."""

    def build(cls: Any, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            sub = {"sac": SACConfig, "bro": BROConfig, "dacer": DACERConfig, "actor": NetworkConfig,
                   "critic": NetworkConfig}.get(f.name)  # fmt: skip
            if sub is not None and isinstance(v, dict):
                v = build(sub, v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**kwargs)

    return build(TrainConfig, data)


def config_json(config: TrainConfig) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)
