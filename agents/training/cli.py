"""Command line: `neurosurgery train sac|bro|dacer --env dmc/cartpole-swingup --seeds 0 1 ...`.

`train AGENT` takes the options every run has and that agent's own (`train bro --help` lists
BRO's and the shared ones only; another agent's option is refused by name). Nested options take
a dot (`--sac.batch-size`, `--surgery.metrics`, `--reset.method regrama --reset.tau 0.01`).
`neurosurgery resume RUN_DIR` continues a run from its checkpoint with the configuration saved in
that folder.

`neurosurgery sweep STUDY_FILE --out DIR` trains a study, a grid of runs (see `_study.py`);
`neurosurgery sweep --preset NAME [--smoke]` one shipped with the package (`_presets.py`);
`neurosurgery sweep --status DIR` shows how its runs stand.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

from neurosurgery._presets import strategy_factory

from ..algorithms import BROConfig, DACERConfig, SACConfig
from ._checkpoint import CheckpointError, RunWriteError
from ._config import AGENTS, ResetConfig, TrainConfig, WandbConfig
from ._run import load_run_config, train
from ._study import LauncherConfig, StudyError
from ._trainer import CHECKPOINT, NonFiniteError


@dataclass(frozen=True)
class TrainCommand(TrainConfig):
    """Train an agent; metrics, checkpoints and plots go to the run folder. The command line
    takes one subclass per agent (`TRAIN_COMMANDS`), each without the other agents' options."""


#: each agent's options, by the option that holds them
AGENT_CONFIGS: dict[str, type] = {"sac": SACConfig, "bro": BROConfig, "dacer": DACERConfig}
AGENT_DESCRIPTIONS = {
    "sac": "Train SAC, soft actor-critic (Haarnoja et al., 2018); by default the GraMa paper's "
    "SAC table.",
    "bro": "Train BRO, bigger regularized optimistic (Nauman et al., 2024): BroNet critics, a "
    "quantile critic loss and an optimistic exploration actor.",
    "dacer": "Train DACER, diffusion actor-critic with entropy regulator (Wang et al., 2024): a "
    "diffusion policy whose action noise the entropy estimate regulates.",
}


def _train_command(agent: str, reset: type[ResetConfig] | None = None) -> type[TrainCommand]:
    """`TrainCommand` for one agent: `agent` fixed and the other agents' options hidden from the
    command line (given there, tyro refuses them and names the subcommand that takes them);
    with `reset`, the reset options shown are that view's (see `_reset_view`)."""
    hidden: list[tuple[str, Any, Any]] = [
        ("agent", Annotated[str, tyro.conf.Suppress], dataclasses.field(default=agent))
    ]
    for other, cls in AGENT_CONFIGS.items():
        if other != agent:
            suppressed = Annotated[cls, tyro.conf.Suppress]
            hidden.append((other, suppressed, dataclasses.field(default_factory=cls)))
    if reset is not None:
        hidden.append(("reset", reset, dataclasses.field(default_factory=reset)))
    name = f"Train{agent.upper()}"
    made = dataclasses.make_dataclass(name, hidden, bases=(TrainCommand,), frozen=True)
    made.__doc__ = AGENT_DESCRIPTIONS[agent]
    made.__module__ = __name__
    return made


def _reset_view(method: str) -> type[ResetConfig] | None:
    """`ResetConfig` showing only the options the named method takes (`train AGENT
    --reset.method cbp --help` lists CBP's and no other method's); None where the name is not
    one the registry or an import resolves (the parse then says what is wrong)."""
    import neurosurgery as ns

    try:
        takes = ns.strategy_options(method)
        factory = None if "+" in method else strategy_factory(method)
    except (ValueError, ImportError):
        return None
    hints = typing.get_type_hints(ResetConfig)
    options = ns.method_options(factory) if factory is not None and takes else {}
    what = " ".join((getattr(factory, "__doc__", None) or "").split("\n\n")[0].split())
    what = what or method
    described = tyro.conf.arg(constructor=str, help=f"{what} Its options follow.")
    fields: list[tuple[str, Any, Any]] = [
        ("method", Annotated[str | ns.Strategy, described], dataclasses.field(default=method))
    ]
    for f in dataclasses.fields(ResetConfig):
        if f.name in ("method", "networks"):
            continue
        if f.name not in takes:
            kind: Any = Annotated[hints[f.name], tyro.conf.Suppress]
        else:
            own = options.get(f.name)
            text = own.help if own is not None else f"an option of {method}"
            hint = f"(default: {takes[f.name]!r})"
            kind = Annotated[hints[f.name], tyro.conf.arg(help=text, help_behavior_hint=hint)]
        fields.append((f.name, kind, dataclasses.field(default=None)))
    view = dataclasses.make_dataclass("ResetConfig", fields, bases=(ResetConfig,), frozen=True)
    view.__doc__ = ResetConfig.__doc__
    view.__module__ = __name__
    return view


def _asked_method(args: Sequence[str]) -> str | None:
    """The method named by `--reset.method` where the command line asks for help."""
    if not any(a in ("-h", "--help") for a in args):
        return None
    for i, a in enumerate(args):
        if a == "--reset.method" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--reset.method="):
            return a.partition("=")[2]
    return None


#: `neurosurgery train AGENT`'s options, by agent
TRAIN_COMMANDS: dict[str, type[TrainCommand]] = {a: _train_command(a) for a in AGENTS}


@dataclass(frozen=True)
class ResumeCommand:
    """Continue a run from its checkpoint with the options saved in its folder. Only the options
    below may be given; each then replaces the saved value (the others keep it). To train with
    other options, start a new run folder."""

    run_dir: tyro.conf.Positional[str]
    """The run folder (its checkpoint and config.json)."""
    steps: Annotated[int, tyro.conf.arg(help_behavior_hint="(default: the saved value)")] = 0
    """Environment steps per seed, to extend the run."""
    sinks: Annotated[
        tuple[str, ...], tyro.conf.arg(help_behavior_hint="(default: the saved value)")
    ] = ()
    """Where metrics go (csv, jsonl, tensorboard, console, wandb)."""
    progress: Annotated[bool, tyro.conf.arg(help_behavior_hint="(default: the saved value)")] = True
    """Show a progress bar."""
    env_workers: Annotated[
        int | None, tyro.conf.arg(help_behavior_hint="(default: the saved value)")
    ] = None
    """dm_control only: worker processes of each seed's environments (trajectories do not
    depend on it)."""
    shard_seeds: Annotated[bool, tyro.conf.arg(help_behavior_hint="(default: the saved value)")] = (
        False
    )
    """Shard the seed axis over this process's devices (the records stay the same)."""
    keep_checkpoints: Annotated[
        bool, tyro.conf.arg(help_behavior_hint="(default: the saved value)")
    ] = False
    """Keep every checkpoint as checkpoints/<env step>.ckpt besides the latest."""
    published: Annotated[
        str | None, tyro.conf.arg(help_behavior_hint="(default: the saved value)")
    ] = None
    """Published curve drawn beside this run's (BRO, BRO_fast, SAC)."""
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    """Weights & Biases project, group and entity (default: the saved values)."""


@dataclass(frozen=True)
class SweepCommand:
    """Train a study: the runs of a grid read from a study file, each in its own run folder.
    Run again, it skips finished runs, resumes killed ones from their checkpoints and retries
    failed ones only when asked."""

    study: tyro.conf.Positional[str | None] = None
    """The study file (TOML; YAML where PyYAML is installed). Without it (and without
    --preset), the study saved in --out continues."""
    preset: str | None = None
    """A study shipped with the package, by name, instead of a study file: main (the main job),
    bro-dmc, bro-scaling, sac-activations, dacer-mujoco (the GraMa paper's setups; see
    docs/presets.md)."""
    smoke: bool = False
    """With --preset: the preset's smoke variant, the same grid on a seconds-long budget
    (test/point-mass, 400 env steps, 16-wide networks, seeds 0 1), named NAME-smoke."""
    out: str | None = None
    """The study folder: its manifest, one folder per run (default: the study file's `out`)."""
    status: str | None = None
    """Print how the runs of the study in this folder stand (done, running, failed, ...)."""
    retry_failed: bool = False
    """Train failed runs again (from their last checkpoint)."""
    launcher: LauncherConfig = dataclasses.field(default_factory=LauncherConfig)
    """Where the runs train (replaces the study file's [launcher] options given here)."""
    base: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """The options shared by every run (replaces the study file's [base] options given here)."""


@dataclass(frozen=True)
class ReportCommand:
    """Tables, figures, report.md and report.html from the finished runs under the folders."""

    folders: tyro.conf.Positional[tuple[str, ...]]
    """Run folders, or folders of runs (a study)."""
    out: str = "report"
    """Folder the report is written to."""
    baseline: tuple[str, ...] = ()
    """Tidy results files (exp_name, env_name, seed, metric, env_step, value) put beside the runs,
    e.g. published baselines."""
    baseline_metric: str | None = None
    """The baseline files' name of the evaluation return (default: eval/episode_return)."""
    normalise_by: str | None = None
    """A method (exp_name, e.g. sac or bro+regrama) every method's scores are normalised to."""
    last_k: int = 1
    """Score of a seed: the mean of its last k evaluation returns."""
    name_by: tuple[str, ...] = ()
    """Options that tell methods apart besides agent and reset method (e.g. sac.critic.width)."""
    against: tuple[str, ...] = ()
    """Numeric options to plot the final score against (bro.critic-blocks, reset.tau)."""
    published: tuple[str, ...] = ()
    """Published curves drawn beside the runs and tabulated at the env steps both have (BRO,
    BRO_fast, SAC), besides those the runs name in their `published` option."""
    seed: int = 0
    """Seed of the bootstrap."""


def _report(cmd: ReportCommand) -> int:
    import warnings

    from ..reporting import report

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done = report(
                [Path(f) for f in cmd.folders],
                Path(cmd.out),
                baselines=[Path(b) for b in cmd.baseline],
                baseline_metric=cmd.baseline_metric,
                normalise_by=cmd.normalise_by,
                last_k=cmd.last_k,
                name_by=[n.replace("-", "_") for n in cmd.name_by],
                against=[n.replace("-", "_") for n in cmd.against],
                published=cmd.published,
                seed=cmd.seed,
            )
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"neurosurgery: error: {err}", file=sys.stderr)
        return 2
    print(done.markdown)
    print(f"\nreport: {done.html}")
    return 0


@dataclass(frozen=True)
class InspectCommand:
    """Score every metric on a run's checkpoint, on its own replay data."""

    run_dir: tyro.conf.Positional[str]
    """The run folder (its checkpoint and config.json)."""
    out: str | None = None
    """Folder for inspect.md, inspect.json and quadrants.png (default: RUN_DIR/inspect)."""
    against: str | None = None
    """A second checkpoint file of the run: which flagged units are still flagged there."""
    metrics: tuple[str, ...] = ()
    """Metrics to score (default: every named metric but saturation_tanh and saturation_sigmoid,
    which apply to tanh or sigmoid layers only)."""
    networks: tuple[str, ...] = ()
    """Networks to inspect (default: the run's --surgery.networks)."""
    tau: float = 0.0
    """A unit is flagged when its score is <= tau."""
    batch_size: int = 256
    """Replay samples scored."""
    seed_index: int = 0
    """Which of the run's seeds (position in its --seeds)."""


def _inspect(cmd: InspectCommand) -> int:
    from ..reporting import inspect
    from ..reporting._inspect import DEFAULT_METRICS

    try:
        done = inspect(
            Path(cmd.run_dir),
            None if cmd.out is None else Path(cmd.out),
            against=None if cmd.against is None else Path(cmd.against),
            metrics=cmd.metrics or DEFAULT_METRICS,
            networks=cmd.networks or None,
            tau=cmd.tau,
            batch_size=cmd.batch_size,
            seed_index=cmd.seed_index,
        )
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"neurosurgery: error: {err}", file=sys.stderr)
        return 2
    print(done.markdown)
    print("written: " + ", ".join(str(f) for f in done.files))
    return 0


def _config(cmd: TrainCommand) -> TrainConfig:
    fields = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**fields)


def _train_entry(commands: dict[str, type[TrainCommand]]) -> Any:
    """`neurosurgery train`: one subcommand per agent, each taking `commands[agent]`'s options
    (tyro reads the union of the members' subcommand names from the annotation)."""
    union = Union[  # noqa: UP007
        tuple(
            Annotated[cls, tyro.conf.subcommand(a, description=cls.__doc__)]
            for a, cls in commands.items()
        )
    ]

    def train(agent: Any) -> TrainCommand:
        """Train an agent (`neurosurgery train sac|bro|dacer [OPTIONS]`; `train AGENT --help`
        lists the agent's options); metrics, checkpoints and plots go to the run folder."""
        return agent

    train.__annotations__ = {"agent": union, "return": TrainCommand}
    return train


_train = _train_entry(TRAIN_COMMANDS)


def parse(
    args: Sequence[str],
) -> TrainCommand | ResumeCommand | SweepCommand | ReportCommand | InspectCommand:
    """The parsed command line (`--help` and malformed flags exit, as tyro does)."""
    train = _train
    method = _asked_method(args)
    view = _reset_view(method) if method is not None else None
    if view is not None:  # help asked after --reset.method: that method's options only
        train = _train_entry({a: _train_command(a, view) for a in AGENTS})
    return tyro.extras.subcommand_cli_from_dict(
        {
            "train": train,
            "resume": ResumeCommand,
            "sweep": SweepCommand,
            "report": ReportCommand,
            "inspect": InspectCommand,
        },
        args=list(args),
        prog="neurosurgery",
        config=(tyro.conf.OmitSubcommandPrefixes,),
    )


def sweep_main(args: Sequence[str]) -> int:
    """`neurosurgery sweep ...`: the study file's options as defaults, the command line's on
    top of them; returns the exit status (0: every run done; 1: some are not; 2: bad input)."""
    from ._presets import preset_names, read_preset
    from ._study import read_manifest, read_study, study_from_dict
    from ._sweep import status_report, sweep

    args = list(args)
    first = tyro.cli(SweepCommand, args=args, prog="neurosurgery sweep")
    try:
        _check_sources(first)
        if first.status is not None:
            print(status_report(first.status)[0])
            return 0
        if first.preset is not None:
            study = read_preset(first.preset, smoke=first.smoke)
        elif first.study is not None:
            study = read_study(first.study)
        elif first.out is not None:
            saved = read_manifest(first.out)
            if saved is None:
                raise StudyError(
                    f"{first.out} holds no study to continue; give the study file "
                    f"(neurosurgery sweep STUDY_FILE --out {first.out}) or a preset "
                    f"(--preset NAME; presets: {', '.join(preset_names())})"
                )
            study = study_from_dict(saved["definition"], str(Path(first.out) / "study.json"))
        else:
            raise StudyError(
                "give a study file (neurosurgery sweep STUDY_FILE --out DIR) or a preset "
                f"(neurosurgery sweep --preset NAME; presets: {', '.join(preset_names())})"
            )
        default = SweepCommand(
            study=first.study,
            out=first.out,
            preset=first.preset,
            smoke=first.smoke,
            launcher=study.launcher,
            base=study.base,
        )
        cmd = tyro.cli(SweepCommand, args=args, default=default, prog="neurosurgery sweep")
        study = dataclasses.replace(study, base=cmd.base, launcher=cmd.launcher)
        out = cmd.out or study.out
        if out is None:
            raise StudyError("give the study folder with --out DIR (or `out = ...` in the file)")
        return sweep(study, out, retry_failed=cmd.retry_failed).code
    except (ValueError, CheckpointError) as err:
        print(f"neurosurgery sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _check_sources(cmd: SweepCommand) -> None:
    """Refuse combinations of study sources that cannot mean one study (before any work)."""
    if cmd.status is not None:
        given = [f for f, on in (("--preset", cmd.preset), ("--smoke", cmd.smoke)) if on]
        if cmd.study is not None or given:
            raise StudyError(
                f"--status {cmd.status} shows the study saved in that folder; it takes no study "
                f"file or {'/'.join(given) or '--preset'}: drop them"
            )
    if cmd.preset is not None and cmd.study is not None:
        raise StudyError(
            f"give a study file ({cmd.study}) or --preset {cmd.preset}, not both: a preset is a "
            "study file shipped with the package"
        )
    if cmd.smoke and cmd.preset is None:
        if cmd.study is not None:
            where = f"the study file {cmd.study}"
            fix = (
                "set its budget on the command line (--base.steps N, --base.env test/point-mass, "
                "...) or in the file"
            )
        else:
            where = f"the study saved in {cmd.out}" if cmd.out else "no study"
            fix = (
                "a study continues with the options it was started with (a smoke variant with "
                "--smoke already applied: neurosurgery sweep --out DIR)"
            )
        raise StudyError(
            f"--smoke applies to presets (neurosurgery sweep --preset NAME --smoke), not to "
            f"{where}: {fix}"
        )


#: flags of earlier versions and what replaced them
RENAMED = {
    "agent": "the subcommand after train: neurosurgery train sac|bro|dacer [OPTIONS]",
    "resume": "a command of its own: neurosurgery resume RUN_DIR [--steps N ...]",
    "reset": "--reset.method",
    "reset-tau": "--reset.tau (the reset threshold) and --surgery.tau (the logged one)",
    "reset-period": "--reset.every (updates between resets) and --surgery.every (between logs)",
    "reset-start": "--reset.start",
    "reset-end": "--reset.end",
    "reset-max-fraction": "--reset.max-fraction",
    "reset-networks": "--reset.networks (reset) and --surgery.networks (logged)",
}


def _flag(arg: str) -> str:
    """`--env_workers=2` → `env-workers`: the option a command-line word names."""
    return arg[2:].split("=", 1)[0].replace("_", "-")


def _resumed(cmd: ResumeCommand, given: set[str]) -> TrainConfig:
    """The run's saved configuration with the options given on the command line replaced."""
    config = load_run_config(cmd.run_dir)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(ResumeCommand):
        if f.name in ("run_dir", "wandb"):
            continue
        flag = f.name.replace("_", "-")
        if given & {flag, f"no-{flag}"}:
            changes[f.name] = getattr(cmd, f.name)
    wandb = {
        k: getattr(cmd.wandb, k) for k in ("project", "group", "entity") if f"wandb.{k}" in given
    }
    return dataclasses.replace(config, **changes, wandb=dataclasses.replace(config.wandb, **wandb))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `neurosurgery` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sweep"]:
        return sweep_main(args[1:])
    renamed = [f for f in (_flag(a) for a in args if a.startswith("--")) if f in RENAMED]
    if renamed:
        print(
            "neurosurgery: error: "
            + "; ".join(f"--{f} is now {RENAMED[f]}" for f in renamed)
            + " (see neurosurgery --help)",
            file=sys.stderr,
        )
        return 2
    cmd = parse(args)
    if isinstance(cmd, ReportCommand):
        return _report(cmd)
    if isinstance(cmd, InspectCommand):
        return _inspect(cmd)
    if isinstance(cmd, SweepCommand):  # `neurosurgery sweep` is handled above
        return sweep_main(args[1:])
    given = {_flag(a) for a in args if a.startswith("--")}
    run_dir = cmd.run_dir
    try:
        if isinstance(cmd, ResumeCommand):
            config = _resumed(cmd, given)
            if not (Path(cmd.run_dir) / CHECKPOINT).exists():
                print(
                    f"neurosurgery: no checkpoint in {cmd.run_dir} yet: training from step 0 "
                    "with the options saved there",
                    file=sys.stderr,
                )
            summary = train(config, resume=True)
        else:
            summary = train(_config(cmd))
    except NonFiniteError as err:
        print(f"neurosurgery: {err}", file=sys.stderr)
        return 3
    except RunWriteError as err:
        print(f"neurosurgery: error: {err}", file=sys.stderr)
        return 4
    except (ValueError, CheckpointError) as err:
        print(f"neurosurgery: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"neurosurgery: interrupted; the run folder keeps its last checkpoint (if one was "
            f"written): continue with `neurosurgery resume {run_dir}`",
            file=sys.stderr,
        )
        return 130
    ret = summary.get("eval/episode_return", summary.get("train/episode_return"))
    print(f"done: {summary['env_steps']} env steps, final return per seed: {ret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
