"""`neurosurgery sweep`: studies read from a file, checked before any work, trained through
submitit's local executor like `neurosurgery train`, continued after a kill, and their status."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.training import read_metrics
from agents.training._checkpoint import read_header
from agents.training._study import (
    LauncherConfig,
    StudyError,
    expand,
    read_study_file,
    study_from_dict,
)
from agents.training._sweep import (
    _lock_path,
    _write_state,
    default_parallel,
    prepare,
    read_state,
    status_report,
    sweep,
)
from agents.training._trainer import CHECKPOINT, Trainer
from agents.training.cli import main

#: the options of tests/agents/conftest.py's BASE, as a study file's [base]
BASE = """
[base]
env = "test/point-mass"
steps = 1000
num_envs = 2
episode_length = 20
learning_starts = 200
buffer_size = 2000
log_every = 200
eval_every = 400
eval_episodes = 2
checkpoint_every = 200
sinks = ["csv", "jsonl"]
surgery.every = 50

[base.sac]
batch_size = 16
actor = { width = 16, depth = 1 }
critic = { width = 16, depth = 1 }
"""
#: the same options as `neurosurgery train` flags
FLAGS = [
    *("--env", "test/point-mass", "--steps", "1000", "--num-envs", "2"),
    *("--episode-length", "20", "--learning-starts", "200", "--buffer-size", "2000"),
    *("--log-every", "200", "--eval-every", "400", "--eval-episodes", "2"),
    *("--checkpoint-every", "200", "--sinks", "csv", "jsonl", "--surgery.every", "50"),
    *("--sac.batch-size", "16", "--sac.actor.width", "16", "--sac.actor.depth", "1"),
    *("--sac.critic.width", "16", "--sac.critic.depth", "1", "--no-progress"),
]


def _study_file(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class FailsInJobs:
    """A metric that cannot be built inside a sweep's job (where submitit sets
    SUBMITIT_EXECUTOR): the run fails at its start, before any compilation."""

    name = "fails_in_jobs"

    def __init__(self):
        if os.environ.get("SUBMITIT_EXECUTOR"):
            raise RuntimeError("this metric breaks inside jobs")

    def init(self, anatomy):  # pragma: no cover - never reached
        raise NotImplementedError

    def score(self, anatomy, observation, state):  # pragma: no cover - never reached
        raise NotImplementedError


# ---- reading and expanding ----------------------------------------------------------------
def test_the_grid_expands_into_runs_and_seeds_train_together(tmp_path):
    text = (
        BASE
        + """
[grid]
seeds = [0, 1, 2]
"sac.critic.width" = [16, 32]
reset = [{ method = "none" }, { method = "regrama", tau = 0.01, every = 50 }]
"""
    )
    study = study_from_dict(read_study_file(_study_file(tmp_path, text)))
    runs = expand(study, tmp_path / "out")
    assert [r.name for r in runs] == [
        "sac.critic.width=16,reset=method=none",
        "sac.critic.width=16,reset=method=regrama+tau=0.01+every=50",
        "sac.critic.width=32,reset=method=none",
        "sac.critic.width=32,reset=method=regrama+tau=0.01+every=50",
    ]
    assert all(r.config.seeds == (0, 1, 2) for r in runs)  # one run, vmapped seeds
    assert runs[1].config.reset.tau == 0.01 and runs[1].config.reset.method == "regrama"
    assert runs[2].config.sac.critic.width == 32 and runs[2].config.sac.actor.width == 16
    assert runs[0].config.run_dir == str(tmp_path / "out" / runs[0].name)
    assert runs[0].config.steps == 1000 and runs[0].config.sinks == ("csv", "jsonl")
    # seeds_per_run splits the seeds; [[grid.run]] tables set several options together
    text = (
        BASE.replace("[base]", "seeds_per_run = 2\n[base]")
        + """
[grid]
seeds = [0, 1, 2]
[[grid.run]]
agent = "sac"
[[grid.run]]
agent = "sac"
replay_ratio = 0.5
sac.tau = 0.01
"""
    )
    runs = expand(study_from_dict(read_study_file(_study_file(tmp_path, text))), "out")
    assert [(r.name, r.config.seeds) for r in runs] == [
        ("agent=sac,seeds=0-1", (0, 1)),
        ("agent=sac,seeds=2", (2,)),
        ("agent=sac+replay_ratio=0.5+sac.tau=0.01,seeds=0-1", (0, 1)),
        ("agent=sac+replay_ratio=0.5+sac.tau=0.01,seeds=2", (2,)),
    ]
    assert runs[2].config.sac.tau == 0.01 and runs[0].config.sac.tau == 0.005
    # without a seeds axis, each point keeps the seeds it is given
    text = BASE + "\n[[grid.run]]\nseeds = [3, 4]\n[[grid.run]]\nseeds = [5]\nsac.tau = 0.01\n"
    runs = expand(study_from_dict(read_study_file(_study_file(tmp_path, text))), "out")
    assert [r.config.seeds for r in runs] == [(3, 4), (5,)]


def test_local_runs_are_sized_from_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_parallel(LauncherConfig()) == cores
    assert default_parallel(LauncherConfig(cpus_per_run=cores + 1)) == 1


GRID = '\n[grid]\n"sac.critic.width" = [16, 24]\n'


@pytest.mark.parametrize(
    "text,message",
    [
        ('nme = "x"\n' + BASE, "unknown key 'nme'; did you mean 'name'?"),
        (
            BASE.replace("steps = 1000", "stpes = 1000"),
            "base: unknown key 'stpes'; did you mean 'steps'?",
        ),
        (
            BASE.replace("batch_size", "batch_sise"),
            "base.sac: unknown key 'batch_sise'; did you mean 'batch_size'?",
        ),
        (
            BASE + '\n[grid]\n"sac.critic.widht" = [1, 2]\n',
            "unknown key 'widht'; did you mean 'width'?",
        ),
        (BASE + "\n[grid]\nseeds = []\n", "'seeds' has no values: the grid would be empty"),
        (BASE + "\n[grid]\nsteps = 400\n", "an axis is a list of values"),
        (
            BASE + "\n[launcher]\nparalel = 2\n",
            "launcher: unknown key 'paralel'; did you mean 'parallel'?",
        ),
        (
            BASE.replace("steps = 1000", 'steps = "many"'),
            "base.steps must be a whole number, got 'many'",
        ),
        (
            BASE + '\n[grid]\nagent = ["sac", "bro"]\n',
            "option sac.batch_size is for agent sac, but this run trains bro",
        ),
        (BASE + '\n[grid]\nenv = ["test/nope"]\n', "Unknown environment 'test/nope'"),
        (
            BASE + '\n[grid]\nreset = [{ method = "shrink_perturb", tau = 0.1 }]\n',
            "tau do not apply to the shrink_perturb",
        ),
        (
            BASE + '\n[grid]\nreset = [{ method = "none" }, { method = "none" }]\n',
            "give the same run",
        ),
        (
            BASE + GRID + '\n[launcher]\nkind = "kubernetes"\n',
            "launcher.kind must be one of local, slurm",
        ),
        (BASE + GRID + '\n[launcher]\nkind = "slurm"\n', "no sbatch on PATH"),
        (BASE + "\n[grid\n", "is not valid TOML"),
        (
            BASE + "\n[grid]\nseeds = [0]\n[[grid.run]]\nseeds = [1]\n",
            "sets seeds in a table while [grid] has a seeds axis",
        ),
    ],
)
def test_bad_studies_fail_before_any_work(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here
    file, out = _study_file(tmp_path, text), tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_base_takes_quoted_dotted_keys_as_the_grid_does():
    """[base] reads `"sac.critic.width" = 32` as [grid] does, beside tables of the same
    options; an option given both ways is refused by name."""
    nested = {"sac": {"batch_size": 8, "critic": {"width": 32, "depth": 1}}, "steps": 500}
    dotted = {"sac.critic.width": 32, "sac": {"critic": {"depth": 1}}, "sac.batch_size": 8}
    plain = study_from_dict({"base": nested})
    mixed = study_from_dict({"base": {**dotted, "steps": 500}})
    assert mixed.base == plain.base
    assert sorted(mixed.given) == sorted(plain.given)
    assert plain.base.sac.critic.width == 32 and plain.base.sac.batch_size == 8
    with pytest.raises(StudyError, match=r"\[base\]: sac.critic.width is given twice"):
        study_from_dict({"base": {"sac": {"critic": {"width": 16}}, "sac.critic.width": 32}})
    with pytest.raises(StudyError, match="unknown key 'widht'"):
        study_from_dict({"base": {"sac.critic.widht": 32}})


def test_a_folder_with_other_content_or_another_study_is_refused(tmp_path, capsys):
    file = _study_file(tmp_path, BASE + GRID)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["sweep", str(file), "--out", str(out)]) == 2
    assert "is not empty (notes.txt) and holds no study" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # a study folder (manifest written, nothing trained yet) refuses another study's runs
    other = tmp_path / "other"
    prepare(study_from_dict(read_study_file(file) | {"name": "first"}), other)
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    wider = _study_file(tmp_path, BASE + '\n[grid]\n"sac.critic.width" = [16, 32]\n', "x.toml")
    for args, message in (
        ([str(file)], "it is study 'first', not 'study'"),
        ([str(wider), "--base.steps", "400"], "runs it does not hold: sac.critic.width=32"),
    ):
        assert main(["sweep", *args, "--out", str(other)]) == 2
        err = capsys.readouterr().err
        assert f"{other} holds another study" in err and message in err, err
    renamed = _study_file(tmp_path, 'name = "first"\n' + BASE + GRID, "first.toml")
    assert main(["sweep", str(renamed), "--out", str(other), "--base.steps", "400"]) == 2
    assert (
        "run sac.critic.width=16 has other options (steps: 1000 → 400)" in capsys.readouterr().err
    )
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


def test_command_line_options_replace_the_study_files(tmp_path, monkeypatch):
    import agents.training._sweep as sweep_module

    seen = []
    monkeypatch.setattr(sweep_module, "sweep", lambda s, out, **kw: seen.append((s, out, kw)))
    file = _study_file(tmp_path, BASE + GRID + "\n[launcher]\nparallel = 2\n")
    args = [
        "--out",
        str(tmp_path / "o"),
        "--base.eval-episodes",
        "3",
        "--launcher.cpus-per-run",
        "2",
    ]
    with pytest.raises(AttributeError):  # the stand-in returns None, which has no .code
        main(["sweep", str(file), *args, "--retry-failed"])
    study, out, kw = seen[-1]
    assert out == str(tmp_path / "o") and kw == {"retry_failed": True}
    assert study.base.eval_episodes == 3 and study.base.steps == 1000  # the file's, kept
    assert study.launcher.cpus_per_run == 2 and study.launcher.parallel == 2
    assert study.base.sac.batch_size == 16 and study.name == "study"
    # without a study file, the study saved in the folder continues
    prepare(study_from_dict(read_study_file(file)), tmp_path / "saved")
    with pytest.raises(AttributeError):
        main(["sweep", "--out", str(tmp_path / "saved")])
    configs = lambda study: [(r.name, r.config) for r in expand(study, "x")]
    assert configs(seen[-1][0]) == configs(study_from_dict(read_study_file(file)))


# ---- status -------------------------------------------------------------------------------
def test_status_lists_done_running_queued_interrupted_failed_and_pending_runs(tmp_path, capsys):
    text = BASE + '\n[grid]\n"sac.critic.width" = [10, 11, 12, 13, 14, 15]\n'
    study = study_from_dict(read_study_file(_study_file(tmp_path, text)))
    out = tmp_path / "out"
    runs = prepare(study, out)
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = {"host": host, "launcher": "local"}
    Path(runs[0].config.run_dir).mkdir()
    (Path(runs[0].config.run_dir) / "summary.json").write_text("{}")
    _write_state(out, runs[0].name, {**me, "state": "done", "job_id": "1", "env_steps": 1000})
    _write_state(out, runs[1].name, {**me, "state": "failed", "job_id": "2", "error": "E: boom"})
    _write_state(out, runs[2].name, {**me, "state": "running", "job_id": str(os.getpid())})
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    _write_state(out, runs[3].name, {**me, "state": "submitted", "job_id": str(waiting.pid)})
    _write_state(out, runs[4].name, {**me, "state": "running", "job_id": str(dead.pid)})
    with open(_lock_path(out, runs[2].name), "a") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        _, states = status_report(out)
        assert main(["sweep", "--status", str(out)]) == 0
    waiting.kill()
    waiting.wait()
    printed = capsys.readouterr().out.splitlines()
    assert list(states.values()) == [
        "done",
        "failed",
        "running",
        "queued",
        "interrupted",
        "pending",
    ]
    assert printed[0] == (
        f"study study in {out}: 6 runs: 1 done, 1 failed, 1 running, 1 queued, 1 interrupted, "
        "1 pending"
    )
    assert printed[1].split() == ["done", runs[0].name, "0/1000", "steps"]
    assert printed[2].split()[:2] == ["failed", runs[1].name] and printed[2].endswith("E: boom")
    assert printed[3].split()[-2:] == ["job", str(os.getpid())]
    assert printed[4].split()[-2:] == ["job", str(waiting.pid)]
    # a local job's id is its process id: once it has ended, the run is no longer queued
    assert status_report(out)[1][runs[3].name] == "interrupted"
    assert printed[5].split()[0] == "interrupted" and printed[6].split()[0] == "pending"
    assert main(["sweep", "--status", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err


# ---- training -----------------------------------------------------------------------------
def _wait_mid_run(driver: threading.Thread, run_dir: Path, env_steps: int = 400) -> bool:
    """Wait (400 s at most) until the run in `run_dir` has a checkpoint at `env_steps` or more
    and has not finished, while `driver` (the sweep) runs; False if that moment never came."""
    deadline = time.monotonic() + 400
    while driver.is_alive() and time.monotonic() < deadline:
        ckpt = run_dir / CHECKPOINT
        mid_run = ckpt.exists() and not (run_dir / "summary.json").exists()
        if mid_run and read_header(ckpt)["env_steps"] >= env_steps:  # written through a rename
            return True
        time.sleep(0.01)
    return False


def _curves(run_dir: Path) -> dict:
    return {
        k: v for k, v in read_metrics(run_dir / "metrics.csv").items() if not k.startswith("perf/")
    }


def test_a_study_trains_as_train_does_and_continues_after_a_kill(tmp_path, capsys, monkeypatch):
    """Two runs (seeds 0 and 1 vmapped in each) through submitit's local executor: one job is
    killed with SIGKILL after a checkpoint; re-running the sweep resumes it, skips the finished
    run, and both end with the records `neurosurgery train` writes for the same options."""
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    text = BASE + (
        '\n[grid]\nseeds = [0, 1]\nreset = [{ method = "none" }, { method = "regrama", every = 50 }]\n'
    )
    file, out = _study_file(tmp_path, text), tmp_path / "out"
    study = study_from_dict(read_study_file(file))
    runs = expand(study, out)
    victim = Path(runs[1].config.run_dir)
    result = []
    driver = threading.Thread(target=lambda: result.append(sweep(study, out)))
    driver.start()
    killed = None
    if _wait_mid_run(driver, victim):
        killed = read_state(out, runs[1].name)["pid"]
        os.kill(killed, signal.SIGKILL)
    driver.join(timeout=400)
    assert killed is not None, "the run finished before it could be killed"
    assert not (victim / "summary.json").exists()
    outcome = result[0]
    assert outcome.code == 1 and outcome.states == {
        runs[0].name: "done",
        runs[1].name: "interrupted",
    }
    printed = capsys.readouterr().out
    assert (
        f"interrupted {runs[1].name}" in printed
        and f"done {runs[0].name} (1000 env steps)" in printed
    )
    _, states = status_report(out)
    assert states == {runs[0].name: "done", runs[1].name: "interrupted"}
    finished = read_state(out, runs[0].name)
    finished_csv = (Path(runs[0].config.run_dir) / "metrics.csv").read_bytes()

    assert main(["sweep", str(file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"resuming {runs[1].name}" in printed and runs[0].name not in printed.split("resuming")[1]
    )
    assert read_state(out, runs[0].name) == finished  # skipped: no new job
    assert (Path(runs[0].config.run_dir) / "metrics.csv").read_bytes() == finished_csv
    assert read_state(out, runs[1].name)["state"] == "done"

    reference = {
        runs[0].name: [],
        runs[1].name: ["--reset.method", "regrama", "--reset.every", "50"],
    }
    for run in runs:
        ref = tmp_path / "ref" / run.name
        flags = list(FLAGS)
        assert (
            main(
                [
                    "train",
                    "sac",
                    *flags,
                    "--seeds",
                    "0",
                    "1",
                    "--run-dir",
                    str(ref),
                    *reference[run.name],
                ]
            )
            == 0
        )
        config = json.loads((Path(run.config.run_dir) / "config.json").read_text())["config"]
        expected = json.loads((ref / "config.json").read_text())["config"]
        assert {**config, "run_dir": ""} == {**expected, "run_dir": "", "progress": False}
        assert _curves(Path(run.config.run_dir)) == _curves(ref), run.name
    # a second sweep of a finished study trains nothing
    capsys.readouterr()
    assert main(["sweep", "--out", str(out)]) == 0
    assert "training 0 now" in capsys.readouterr().out


def test_a_failed_run_is_reported_and_retried_only_when_asked(tmp_path, capsys):
    text = BASE + '\n[grid]\n"surgery.metrics" = [["tests.agents.test_sweep:FailsInJobs"]]\n'
    file, out = _study_file(tmp_path, text), tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    name = "surgery.metrics=tests.agents.test_sweep-FailsInJobs"
    assert f"failed {name}: RuntimeError: this metric breaks inside jobs" in printed
    first = read_state(out, name)
    assert first["state"] == "failed" and "Traceback" in first["traceback"]
    text, _ = status_report(out)
    assert "failed" in text and "RuntimeError: this metric breaks inside jobs" in text
    # run again: reported, not retried
    assert main(["sweep", str(file), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "failed earlier, not retried (--retry-failed)" in printed and "training 0 now" in printed
    assert read_state(out, name) == first
    # asked: retried in a new job (which fails the same way)
    assert main(["sweep", str(file), "--out", str(out), "--retry-failed"]) == 1
    assert f"retrying {name}" in capsys.readouterr().out
    again = read_state(out, name)
    assert again["state"] == "failed" and again["job_id"] != first["job_id"]


def test_the_docs_study_files_read_as_they_say(tmp_path):
    import re

    page = (Path(__file__).parents[2] / "docs" / "sweep.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", page, re.S)
    assert len(blocks) == 2
    first = expand(study_from_dict(read_study_file(_study_file(tmp_path, blocks[0]))), "o")
    assert len(first) == 12 and all(r.config.seeds == (0, 1, 2, 3) for r in first)
    assert "2 × 2 × 3 = 12 runs" in page
    second = expand(
        study_from_dict(read_study_file(_study_file(tmp_path, blocks[1], "b.toml"))), "o"
    )
    assert [r.config.agent for r in second] == ["sac", "bro", "sac", "bro"]
    assert second[1].config.bro.critic_blocks == 2


def test_the_main_job_is_a_study(tmp_path):
    """The main preset (agents/experiments/presets/main.toml) gives the main job's two runs,
    option for option."""
    import argparse

    from agents.experiments import main_job
    from agents.training import read_preset

    study = read_preset("main")
    runs = expand(study, tmp_path)
    args = argparse.Namespace(
        out=str(tmp_path),
        env="dmc/cartpole-balance",
        steps=12000,
        seeds=[0, 1],
        width=64,
        learning_starts=1000,
        log_every=1000,
        reset_period=1000,
    )
    for run, method in zip(runs, main_job.METHODS, strict=True):
        expected = main_job._config(args, method)
        assert run.config == dataclasses.replace(
            expected, run_dir=run.config.run_dir, progress=False
        )


def test_local_runs_with_gpus_get_their_own_and_pass_them_on(tmp_path, capsys, monkeypatch):
    """With gpus_per_run = 1 and two GPUs visible, at most two runs train at once, each job sees
    only its own GPU (CUDA_VISIBLE_DEVICES), and the third run takes the GPU a finished one
    gave back. (JAX here runs on the CPU: what the test checks is what each job was shown.)"""
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    text = BASE.replace("steps = 1000", "steps = 400") + (
        '\n[grid]\n"sac.critic.width" = [16, 24, 32]\n\n[launcher]\ngpus_per_run = 1\n'
    )
    file, out = _study_file(tmp_path, text), tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    runs = expand(study_from_dict(read_study_file(file)), out)
    states = [read_state(out, r.name) for r in runs]
    assert [s["state"] for s in states] == ["done"] * 3
    assert sorted(s["gpus"] for s in states[:2]) == ["3", "5"]  # the first two, side by side
    # the third starts after a run has finished, on a GPU given back (both may be back by then)
    given_back = {s["gpus"] for s in states[:2] if s["finished"] <= states[2]["started"]}
    assert given_back and states[2]["gpus"] in given_back, states
    assert printed.count("(CUDA_VISIBLE_DEVICES=") == 3
    for a, b in [(0, 1), (0, 2), (1, 2)]:  # runs that overlapped in time had different GPUs
        sa, sb = states[a], states[b]
        if sa["started"] < sb["finished"] and sb["started"] < sa["finished"]:
            assert sa["gpus"] != sb["gpus"]


@pytest.mark.parametrize(
    "visible,launcher,message",
    [
        ("0", "gpus_per_run = 2", "gpus_per_run=2 but the GPUs this machine shows are 1 (0)"),
        ("", "gpus_per_run = 1", "gpus_per_run=1 but the GPUs this machine shows are none"),
        (
            "0,1",
            "gpus_per_run = 1\nparallel = 3",
            "parallel=3 runs of 1 GPU(s) each need 3 GPUs, this machine shows 2 (0, 1); "
            "lower launcher.parallel to 2",
        ),
    ],
)
def test_local_gpus_that_cannot_serve_the_runs_fail_before_any_work(
    tmp_path, capsys, monkeypatch, visible, launcher, message
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    file = _study_file(tmp_path, BASE + GRID + f"\n[launcher]\n{launcher}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not out.exists()
