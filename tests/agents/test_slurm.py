"""`neurosurgery sweep` on a real Slurm: a one-node cluster on this machine, started by
scripts/slurm-one-node.sh (Debian's slurm-wlm and munge), a job killed mid-run and cancelled,
and the same records as a local study."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agents.training._study import expand, read_study_file, study_from_dict
from agents.training._sweep import read_state, sweep
from agents.training._trainer import Trainer
from agents.training.cli import main

from .test_sweep import BASE, _curves, _wait_mid_run

SCRIPT = Path(__file__).parents[2] / "scripts" / "slurm-one-node.sh"


@pytest.fixture(scope="module")
def slurm():
    """A running one-node Slurm; skipped only where its packages cannot be installed."""
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900
    )
    if started.returncode == 77:
        reason = f"Slurm's packages cannot be installed here: {started.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    assert started.returncode == 0, started.stderr
    yield
    stopped = subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr


def test_a_study_on_slurm_survives_a_killed_job_and_matches_a_local_study(
    slurm, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    # the run's training process is killed (SIGKILL: a node lost, the OOM killer) and its job
    # cancelled: a plain `scancel` alone sends SIGCONT and SIGTERM, which submitit's jobs ignore,
    # and SIGKILL only after KillWait, time in which a fast machine can finish the run
    text = BASE + (
        '\n[[grid.run]]\nreset = { method = "none" }\n'
        '\n[[grid.run]]\nreset = { method = "regrama", every = 50 }\nsteps = 2000\n'
        '\n[launcher]\nkind = "slurm"\ntime_min = 20\n'
    )
    file = tmp_path / "study.toml"
    file.write_text(text)
    out = tmp_path / "slurm"
    study = study_from_dict(read_study_file(file))
    runs = expand(study, out)
    victim = Path(runs[1].config.run_dir)
    result = []
    driver = threading.Thread(target=lambda: result.append(sweep(study, out)))
    driver.start()
    cancelled = None
    if _wait_mid_run(driver, victim):
        state = read_state(out, runs[1].name)
        cancelled = state["job_id"]
        os.kill(state["pid"], signal.SIGKILL)  # the job's training process, mid-run
        subprocess.run(["scancel", cancelled], capture_output=True)  # and its job
    driver.join(timeout=300)
    assert cancelled is not None, "the run finished before its job could be cancelled"
    assert not (victim / "summary.json").exists()
    outcome = result[0]
    assert outcome.states == {runs[0].name: "done", runs[1].name: "interrupted"}
    assert outcome.code == 1
    jobs = [read_state(out, r.name)["job_id"] for r in runs]
    assert {j.split("_")[0] for j in jobs} == {jobs[0].split("_")[0]}  # one job array
    assert sorted(j.split("_")[1] for j in jobs) == ["0", "1"]
    capsys.readouterr()

    assert main(["sweep", str(file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"resuming {runs[1].name}" in printed and "training 1 now (slurm)" in printed
    assert read_state(out, runs[1].name)["launcher"] == "slurm"

    local = tmp_path / "local"
    assert main(["sweep", str(file), "--out", str(local), "--launcher.kind", "local"]) == 0
    for run in runs:
        assert _curves(out / run.name) == _curves(local / run.name), run.name
    assert os.path.exists(out / ".sweep" / "jobs")


def test_a_preempted_job_requeues_itself_and_resumes_to_the_same_records(
    slurm, tmp_path, capsys, monkeypatch
):
    """Slurm's preemption warning (SIGUSR2, what `--signal` and a preempting partition send)
    reaches the run's job mid-run: submitit checkpoints the job, requeues it with `scontrol
    requeue`, the requeued job resumes from the run's checkpoint, and the sweep that is
    waiting on it ends with the run done and the records of an uninterrupted local run."""
    monkeypatch.setattr(Trainer, "compiler_options", {"xla_backend_optimization_level": 0})
    text = BASE + (
        '\n[[grid.run]]\nreset = { method = "regrama", every = 50 }\nsteps = 2000\n'
        '\n[launcher]\nkind = "slurm"\ntime_min = 20\n'
    )
    file = tmp_path / "study.toml"
    file.write_text(text)
    out = tmp_path / "slurm"
    study = study_from_dict(read_study_file(file))
    (run,) = expand(study, out)
    run_dir = Path(run.config.run_dir)
    result = []
    driver = threading.Thread(target=lambda: result.append(sweep(study, out)))
    driver.start()
    signalled = None
    if _wait_mid_run(driver, run_dir):
        signalled = read_state(out, run.name)["job_id"]
        # to the job's steps (the training process), as Slurm's own warning goes
        sent = subprocess.run(["scancel", "--signal=USR2", signalled], capture_output=True)
        assert sent.returncode == 0, sent.stderr
    assert signalled is not None, "the run finished before its job could be signalled"
    # Slurm holds a requeued job back (its begin time a couple of minutes ahead); an
    # administrator's release, so that the test does not wait for it
    held = time.monotonic() + 120
    while time.monotonic() < held:
        queue = subprocess.run(
            ["squeue", "-h", "-j", signalled, "-o", "%T %r"], capture_output=True, text=True
        ).stdout.split()
        if queue[:1] == ["PENDING"]:
            subprocess.run(["scontrol", "update", f"JobId={signalled}", "StartTime=now"])
            break
        time.sleep(0.1)
    driver.join(timeout=600)
    assert not driver.is_alive(), "the sweep still waits on the requeued job"
    outcome = result[0]
    assert outcome.states == {run.name: "done"} and outcome.code == 0
    # the same job, restarted once by Slurm, its log saying why
    shown = subprocess.run(
        ["scontrol", "show", "job", signalled], capture_output=True, text=True
    ).stdout
    assert "Restarts=1" in shown, shown
    logs = "".join(p.read_text() for p in (out / ".sweep" / "jobs").rglob("*.out"))
    assert "Caught signal SIGUSR2" in logs and f"Requeued job {signalled}" in logs
    assert logs.count("Starting with JobEnvironment") == 2
    # the run folder already held the run when the requeued job started, so it trained on
    # from the checkpoint (a fresh start there is refused: "already holds a run")
    state = read_state(out, run.name)
    assert state["state"] == "done" and str(state["job_id"]) == str(signalled)
    capsys.readouterr()

    local = tmp_path / "local"
    assert main(["sweep", str(file), "--out", str(local), "--launcher.kind", "local"]) == 0
    assert _curves(out / run.name) == _curves(local / run.name)
