"""Command line: `neurosurgery train --agent sac --env dmc/cartpole-swingup --seeds 0 1 ...`.

Every option of `TrainConfig` (and the agent's nested config, e.g. `--sac.batch-size`) is a flag;
`--help` lists them with their defaults. `--resume RUN_DIR` continues a run from its checkpoint
with the configuration saved in that folder.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import tyro

from ._checkpoint import CheckpointError
from ._config import TrainConfig
from ._run import load_run_config, train
from ._trainer import NonFiniteError


@dataclass(frozen=True)
class TrainCommand(TrainConfig):
    """Train an agent; metrics, checkpoints and plots go to the run folder."""

    resume: str | None = None
    """Continue the run in this folder from its checkpoint with its saved config; of the other
    options only --steps (to extend the run), --sinks, --progress and --env-workers apply."""


def _config(cmd: TrainCommand) -> TrainConfig:
    fields = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**fields)


def parse(args: Sequence[str]) -> TrainCommand:
    """The parsed command line (`--help` and malformed flags exit, as tyro does)."""
    return tyro.extras.subcommand_cli_from_dict(
        {"train": TrainCommand}, args=list(args), prog="neurosurgery"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `neurosurgery` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = parse(args)
    try:
        if cmd.resume is not None:
            config = load_run_config(cmd.resume)
            given = lambda flag: any(a.split("=")[0] == flag for a in args)
            steps = cmd.steps if given("--steps") else config.steps
            workers = cmd.env_workers if given("--env-workers") else config.env_workers
            config = dataclasses.replace(
                config, progress=cmd.progress, sinks=cmd.sinks, steps=steps, env_workers=workers
            )
            summary = train(config, resume=True)
        else:
            summary = train(_config(cmd))
    except NonFiniteError as err:
        print(f"neurosurgery: {err}", file=sys.stderr)
        return 3
    except (ValueError, CheckpointError) as err:
        print(f"neurosurgery: error: {err}", file=sys.stderr)
        return 2
    ret = summary.get("eval/episode_return", summary.get("train/episode_return"))
    print(f"done: {summary['env_steps']} env steps, final return per seed: {ret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
