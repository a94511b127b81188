"""The `neurosurgery train` command line: help, bad options, a run and its resumption."""

import dataclasses
import json

import pytest

import agents.training.cli as cli
from agents import TrainConfig, Trainer
from agents.training._trainer import make_env, program_options
from agents.training.cli import _config, main, parse

pytestmark = pytest.mark.usefixtures("quick_compiles")

TINY = [
    "--env",
    "test/point-mass",
    "--seeds",
    "0",
    "1",
    "--steps",
    "1000",
    "--num-envs",
    "2",
    "--episode-length",
    "20",
    "--learning-starts",
    "200",
    "--buffer-size",
    "2000",
    "--log-every",
    "200",
    "--eval-every",
    "400",
    "--eval-episodes",
    "2",
    "--checkpoint-every",
    "200",
    "--sinks",
    "csv",
    "jsonl",
    "tensorboard",
    "console",
    "--sac.batch-size",
    "16",
    "--sac.actor.width",
    "16",
    "--sac.actor.depth",
    "1",
    "--sac.critic.width",
    "16",
    "--sac.critic.depth",
    "1",
]
#: TINY's options of no agent in particular (for runs of another agent than SAC)
SHARED = TINY[: TINY.index("--sac.batch-size")]


@pytest.mark.parametrize("agent", ["sac", "bro", "dacer"])
def test_help_lists_the_agents_options_and_the_shared_ones_only(capsys, agent):
    with pytest.raises(SystemExit) as exit_:
        main(["train", agent, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    shared = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in cli.AGENT_CONFIGS]
    for name in shared:
        if name != "agent":  # the subcommand
            assert "--" + name.replace("_", "-") in out, name
    for other in cli.AGENT_CONFIGS:
        assert (f"--{other}." in out) == (other == agent), other
    for name in (
        "--surgery.metrics",
        "--surgery.every",
        "--reset.method",
        "--reset.tau",
        "--reset.networks",
        "--reset.every",
    ):
        assert name in out
    assert "--agent" not in out and "--resume" not in out
    own = [f.name for f in dataclasses.fields(cli.AGENT_CONFIGS[agent])]
    assert out.count("(default:") >= len(shared) + len(own) - 1


def test_train_lists_one_subcommand_per_agent(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(f"{a} " in out for a in ("sac", "bro", "dacer")) and "{sac,bro,dacer}" in out


@pytest.mark.parametrize(
    "args,named",
    [
        (["sac", "--bro.critic-width", "64"], "--bro.critic-width"),
        (["dacer", "--bro.n-quantiles", "5"], "--bro.n-quantiles"),
        (["bro", "--sac.batch-size", "5"], "--sac.batch-size"),
        (["ppo"], "ppo"),
    ],
)
def test_another_agents_option_is_refused_by_name(tmp_path, capsys, args, named):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args, "--run-dir", str(run_dir)])
    assert exit_.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert named in err
    if named.startswith("--"):  # and the subcommand that takes it
        assert f"neurosurgery train {named[2:].split('.')[0]} --help" in err
    assert not run_dir.exists()


def test_another_agents_options_are_refused_from_python_too(tmp_path):
    """The library's validation refuses what the command line cannot express: options of an
    agent that the run does not train (it would ignore them)."""
    config = TrainConfig(run_dir=str(tmp_path / "run"))
    bro = dataclasses.replace(config.bro, critic_width=64, n_quantiles=5)
    bad = dataclasses.replace(config, bro=bro)
    with pytest.raises(
        ValueError,
        match=r"bro.critic_width, bro.n_quantiles are options of "
        r"agent bro, but this run trains sac",
    ):
        bad.validate()
    sac = dataclasses.replace(config.sac, critic=dataclasses.replace(config.sac.critic, width=8))
    with pytest.raises(ValueError, match=r"^sac.critic.width is an option of agent sac, but"):
        dataclasses.replace(config, agent="bro", sac=sac).validate()
    dataclasses.replace(bad, agent="bro").validate()  # the run's own agent: fine


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--reset.method", "regrama", "--reset.start", "10", "--reset.end", "5"],
            "end > start",
        ),
        (["--reset.method", "magic"], "unknown reset strategy 'magic'; known: redo"),
        (["--reset.method", "regrama", "--reset.tau", "-1"], "tau=-1.0 is invalid"),
        (
            ["--reset.method", "shrink_perturb", "--reset.tau", "0.1"],
            "tau do not apply to the shrink_perturb strategy",
        ),
        (["--reset.tau", "0.1"], "reset options tau are set but reset.method is none"),
        (
            ["--reset.method", "redo", "--reset.networks", "value"],
            "reset.networks: sac has no network 'value'",
        ),
        (["--surgery.metrics", "gramma"], "unknown metric 'gramma'"),
        (["--surgery.metrics", "grama", "grama"], "surgery.metrics: each metric once"),
        (["--surgery.every", "0"], "surgery.every must be > 0"),
        (["--surgery.tau", "-1"], "surgery.tau must be >= 0"),
        (["--reset-tau", "0.1"], "--reset-tau is now --reset.tau"),
        (["--sac.tau", "-0.1"], "sac.tau must be in [0, 1]"),
        (["--steps", "0"], "steps must be > 0"),
        (["--replay-ratio", "0"], "replay_ratio must be > 0"),
        (["--sac.critic.activation", "swishy"], "activation 'swishy' is unknown"),
        (["--env", "test/nope"], "Unknown environment 'test/nope'"),
        (["--env-workers", "2"], "env_workers applies to dm_control environments"),
        (["--env", "dmc/cartpole-balance", "--env-workers", "-1"], "env_workers must be >= 0"),
        (["--env-impl", "warp"], "env_impl applies to Playground environments"),
        (
            ["--env", "playground/CartpoleBalance", "--env-impl", "mjx"],
            "env_impl must be one of 'jax', 'warp'",
        ),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    code = main(["train", "sac", *TINY, "--no-progress", "--run-dir", str(run_dir), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_run_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["train", "sac", *TINY, "--no-progress", "--run-dir", str(blocker / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot write the run folder {blocker / 'run'}" in err and "is a file" in err
    assert "Traceback" not in err


@pytest.mark.newest
def test_train_and_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "sac", *TINY, "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "done: 1000 env steps" in out.out
    assert "step      1000 | train_return" in out.out  # console sink
    assert "1000/1000" in out.err  # progress bar
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1000
    saved = lambda: json.loads((run_dir / "config.json").read_text())["config"]
    # a finished run resumes to the same summary without more work
    assert main(["resume", str(run_dir), "--no-progress", "--sinks", "csv"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 1000
    assert saved()["sinks"] == ["csv"] and saved()["progress"] is False
    # --steps extends a finished run; options not given keep their saved values (csv only)
    # (and --keep-checkpoints, a resume option, keeps the checkpoint it writes at 1200)
    assert main(["resume", str(run_dir), "--steps", "1200", "--keep-checkpoints"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 1200
    assert saved()["steps"] == 1200 and saved()["sinks"] == ["csv"] and saved()["keep_checkpoints"]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["1200.ckpt"]
    assert (run_dir / "checkpoints" / "1200.ckpt").read_bytes() == (
        run_dir / "checkpoint.ckpt"
    ).read_bytes()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(ln)["env_steps"] for ln in lines) == 1000  # jsonl was not on
    with open(run_dir / "metrics.csv") as f:
        assert max(int(line.split(",")[0]) for line in list(f)[1:]) == 1200
    capsys.readouterr()

    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    refused = [
        (["--seeds", "5"], "--seeds"),
        (["--sac.batch-size=64", "--run-dir", "x"], "--sac.batch-size"),
        (["--reset.method", "redo"], "--reset.method"),
    ]
    for extra, message in refused:  # not resume options: the command line refuses them
        with pytest.raises(SystemExit) as exit_:
            main(["resume", str(run_dir), *extra])
        assert exit_.value.code == 2, extra
        assert message in capsys.readouterr().err, extra
    invalid = [
        (["--steps", "400"], "already at 1200 env steps, past steps = 400"),
        (["--env_workers=1"], "env_workers applies to dm_control"),  # allowed, then validated
    ]
    for extra, message in invalid:
        assert main(["resume", str(run_dir), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert main(["resume", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err

    # a damaged checkpoint is refused by name, and the folder is left as it was
    (run_dir / "checkpoint.ckpt").write_bytes(before["checkpoint.ckpt"][:-100])
    assert main(["resume", str(run_dir), "--steps", "1400"]) == 2
    assert "is truncated or damaged" in capsys.readouterr().err
    assert (run_dir / "config.json").read_bytes() == before["config.json"]
    # a fresh run does not write into a folder that holds an earlier run's files
    (run_dir / "checkpoint.ckpt").unlink()
    assert main(["train", "sac", *TINY, "--run-dir", str(run_dir)]) == 2
    assert "holds files of an earlier run with no checkpoint" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").read_bytes() == before["metrics.csv"]


def test_env_workers_reach_the_dm_control_pools():
    """--env-workers sets each seed's pool size; unset, the backend's default applies."""
    config = _config(parse(["train", "sac", "--env", "dmc/cartpole-balance", "--env-workers", "1"]))
    assert config.env_workers == 1
    config.validate()
    with make_env(config, 3, seed=0) as env:
        assert env.num_workers == 1 and len(env.worker_pids) == 1
    with make_env(dataclasses.replace(config, env_workers=0), 3, seed=0) as env:
        assert env.num_workers == 0 and env.worker_pids == []
    with make_env(dataclasses.replace(config, env_workers=None), 1, seed=0) as env:
        assert env.num_workers == 0  # one environment: in-process by default
    # a runtime option: a checkpoint written with other workers resumes (same trajectories)
    assert program_options(config) == program_options(dataclasses.replace(config, env_workers=2))


def test_env_impl_reaches_playground(monkeypatch):
    """--env-impl goes to envs.make as Playground's `impl`; unset, nothing is passed (MJX)."""
    import envs

    calls = []
    monkeypatch.setattr(envs, "make", lambda name, **options: calls.append((name, options)))
    config = _config(
        parse(
            [
                "train",
                "sac",
                "--env",
                "playground/CartpoleBalance",
                "--env-impl",
                "warp",
                "--seeds",
                "0",
            ]
        )
    )
    config.validate()
    make_env(config, 2, seed=0)
    make_env(dataclasses.replace(config, env_impl=None), 2, seed=0)
    assert [name for name, _ in calls] == ["playground/CartpoleBalance"] * 2
    assert calls[0][1]["impl"] == "warp" and "impl" not in calls[1][1]
    # not a runtime option: another physics implementation is another run
    assert program_options(config) != program_options(dataclasses.replace(config, env_impl=None))


def test_ctrl_c_exits_130_and_says_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    run_dir = tmp_path / "run"
    assert main(["train", "sac", *TINY, "--run-dir", str(run_dir)]) == 130
    assert f"neurosurgery resume {run_dir}" in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_it_starts_from_zero(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = dataclasses.replace(TrainConfig(env="test/point-mass"), run_dir=str(run_dir))
    (run_dir / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
    calls = []
    summary = {"env_steps": 0}
    monkeypatch.setattr(cli, "train", lambda c, **kw: calls.append(kw) or summary)
    assert main(["resume", str(run_dir)]) == 0
    assert calls == [{"resume": True}]
    assert f"no checkpoint in {run_dir} yet: training from step 0" in capsys.readouterr().err


def test_a_run_from_before_the_options_were_nested_resumes(tmp_path, capsys, monkeypatch):
    """A run folder written by the version with flat `--reset*` options (config.json and
    checkpoint, SAC on the point mass with ReGraMa every 50 updates, 400 steps) resumes, and
    continues as a run of today started from scratch: exactly on the JAX and jaxlib that wrote
    the folder, to float rounding on others (their compilers may round differently)."""
    import shutil
    from importlib import metadata

    # the folder was written by programs compiled with XLA's default options: so are these,
    # whatever XLA_FLAGS the tests run with (the CPU's default level is 3: levels 1 and 2 round
    # this run's returns differently)
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 3})
    from pathlib import Path

    from agents import load_run_config
    from agents.training import read_metrics

    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "run-before-nesting", old)
    written = json.loads((old / "config.json").read_text())["versions"]
    exact = all(written[pkg] == metadata.version(pkg) for pkg in ("jax", "jaxlib"))
    config = load_run_config(old)
    assert config.reset.method == "regrama" and config.reset.every == 50
    assert config.surgery.every == 50 and config.surgery.networks == ("critic",)
    assert main(["resume", str(old), "--steps", "600", "--no-progress"]) == 0
    fresh = tmp_path / "fresh"
    args = ["--run-dir", str(fresh), "--steps", "600", "--seeds", "0", "1"]
    assert (
        main(
            [
                "train",
                "sac",
                *TINY,
                *args,
                "--sinks",
                "csv",
                "--no-progress",
                "--surgery.every",
                "50",
                "--reset.method",
                "regrama",
                "--reset.every",
                "50",
            ]
        )
        == 0
    )
    capsys.readouterr()
    resumed, again = read_metrics(old / "metrics.csv"), read_metrics(fresh / "metrics.csv")
    for name, by_seed in again.items():
        if name.startswith("perf/"):
            continue
        for seed, points in by_seed.items():
            later = [p for p in points if p[0] > 400]
            got = [p for p in resumed[name][seed] if p[0] > 400]
            if exact:
                assert got == later, (name, seed)
            else:
                assert [p[0] for p in got] == [p[0] for p in later], (name, seed)
                values = [p[1] for p in later]
                assert [p[1] for p in got] == pytest.approx(values, rel=1e-5), (name, seed)


def test_flags_of_earlier_versions_name_their_replacements(capsys):
    assert main(["train", "--reset", "regrama", "--reset-tau", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--reset is now --reset.method" in err and "--reset-tau is now --reset.tau" in err
    assert main(["train", "--agent", "bro", "--steps", "10"]) == 2
    assert "--agent is now the subcommand after train: neurosurgery train sac|bro|dacer" in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", "runs/x"]) == 2
    assert "--resume is now a command of its own: neurosurgery resume RUN_DIR" in (
        capsys.readouterr().err
    )


def test_migrated_schedules_reset_where_the_flat_options_did():
    """The flat options reset at multiples of --reset-period within [start, end); the nested
    schedule starts counting from a point before start so that it resets at the same updates."""
    import neurosurgery as ns
    from agents.training._config import migrate

    for start, end, period in ((0, 0, 1000), (2000, 0, 1000), (1500, 5000, 1000), (3, 20, 4)):
        old = {"reset": "redo", "reset_period": period, "reset_start": start, "reset_end": end}
        new = migrate(old)["reset"]
        schedule = ns.Schedule(new["every"], new["start"], new["end"])
        flat = [
            u
            for u in range(1, 6 * period)
            if u % period == 0 and u >= start and (not end or u < end)
        ]
        assert [u for u in range(1, 6 * period) if bool(schedule.due(u))] == flat, old
    assert migrate({"reset": "regrama_act"})["reset"]["method"] == "regrama_activation"
