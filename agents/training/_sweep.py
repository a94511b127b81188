"""`neurosurgery sweep`: the runs of a study trained through submitit, on this machine
(`LocalExecutor`) or a Slurm cluster (`SlurmExecutor`, one job array), by one submission path.

Each run keeps its state in `<study>/.sweep/runs/<run>.json`, written by the job itself
(running, done, failed with its error) and by the driver at submission; a job holds a lock on
its run while it trains, so a run trains in one process at a time, and the lock tells a
running job from one that was killed. Re-running the sweep skips finished runs, resumes killed
ones from their checkpoints and retries failed ones only when asked."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import TrainConfig
from ._run import train
from ._study import (
    MANIFEST,
    SWEEP_DIR,
    LauncherConfig,
    Run,
    Study,
    StudyError,
    check_folder,
    expand,
    manifest,
    read_manifest,
)

#: how a run stands: done, failed, running (a job holds it), queued (submitted, not started
#: or requeued), interrupted (its job ended without finishing: resumed when the sweep re-runs),
#: pending (never started)
STATES = ("done", "failed", "running", "queued", "interrupted", "pending")
#: seconds between looks at the jobs while the sweep waits
POLL_S = 0.5


# ---- a run's state on disk ----------------------------------------------------------------
def _runs_dir(root: Path) -> Path:
    return root / SWEEP_DIR / "runs"


def _state_path(root: Path, name: str) -> Path:
    return _runs_dir(root) / f"{name}.json"


def _lock_path(root: Path, name: str) -> Path:
    return _runs_dir(root) / f"{name}.lock"


def read_state(root: Path, name: str) -> dict[str, Any] | None:
    path = _state_path(root, name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # torn by a kill mid-write (writes go through a rename, so unlikely)
        return {"state": "interrupted", "error": f"{path} could not be read"}


def _write_state(root: Path, name: str, state: dict[str, Any]) -> None:
    path = _state_path(root, name)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _states_locked(root: Path) -> Iterator[None]:
    """Read-modify-write of run states, one process at a time."""
    with open(root / SWEEP_DIR / "states.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_held(root: Path, name: str) -> bool:
    """Whether a job holds the run's lock (is training it now)."""
    path = _lock_path(root, name)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _is_job(pid: int) -> bool:
    """Whether `pid` is a live submitit job process (a local job's id is its process id, which
    the system may give to another process once the job has ended)."""
    if not _pid_alive(pid):
        return False
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: the process is alive, take it as the job


#: Slurm job states of a job that has not ended
_SLURM_LIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}


def _slurm_live_jobs() -> set[str] | None:
    """Ids of this user's Slurm jobs that have not ended (array tasks as `123_4`), or None
    where squeue cannot answer."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        p[0] for p in (ln.split() for ln in out.splitlines()) if len(p) == 2 and p[1] in _SLURM_LIVE
    }


def run_status(root: Path, run: Run, slurm_live: set[str] | None = None) -> tuple[str, dict]:
    """How `run` stands (one of STATES) and its saved state."""
    state = read_state(root, run.name) or {}
    if _lock_held(root, run.name):
        return "running", state
    kind = state.get("state")
    if kind == "done" and (Path(run.config.run_dir) / "summary.json").exists():
        return "done", state
    if kind == "failed":
        return "failed", state
    if kind in ("submitted", "running"):
        job = str(state.get("job_id", ""))
        if state.get("launcher") == "slurm":
            live = slurm_live if slurm_live is not None else _slurm_live_jobs()
            alive = live is None or job in live  # squeue unreachable: assume it still runs
        else:
            alive = (
                state.get("host") == socket.gethostname() and job.isdigit() and _is_job(int(job))
            )
        if alive:
            return "queued", state
        return "interrupted", state
    if kind == "done":  # the run folder was removed since: train it again
        return "pending", state
    return ("interrupted" if Path(run.config.run_dir).exists() else "pending"), state


# ---- the job ------------------------------------------------------------------------------
try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency; this keeps imports light
    _Checkpointable = object  # type: ignore[assignment,misc]


class RunJob(_Checkpointable):  # type: ignore[misc,valid-type]
    """One run of a study, as a submitit job: it takes the run's lock, trains (resuming from
    the run folder's checkpoint when there is one) and records how it ended. As a
    `Checkpointable` it is requeued when Slurm preempts it or its time runs out, and the
    requeued job resumes from the run's last checkpoint."""

    def __init__(self, compiler_options: dict[str, Any] | None = None):
        #: `Trainer.compiler_options` of the process that submitted the job, used by the job
        self.compiler_options = compiler_options

    def __call__(self, root: str, name: str, config: TrainConfig) -> dict[str, Any]:
        import submitit

        from ._trainer import Trainer

        Trainer.compiler_options = self.compiler_options

        study = Path(root)
        job_id = submitit.JobEnvironment().job_id
        lock = open(_lock_path(study, name), "a")  # noqa: SIM115 - held for the job's life
        deadline = time.monotonic() + 10  # a sweep looking at the lock holds it for an instant
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {name} is already training in another job") from None
                time.sleep(0.2)
        me = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()}
        me["launcher"] = "local" if os.environ.get("SUBMITIT_EXECUTOR") == "local" else "slurm"
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            me["gpus"] = os.environ["CUDA_VISIBLE_DEVICES"]
        started = time.time()
        with _states_locked(study):
            before = read_state(study, name) or {}
            if str(before.get("job_id")) == str(job_id) and "submitted" in before:
                me["submitted"] = before["submitted"]  # when the sweep submitted this job
            _write_state(study, name, {**me, "state": "running", "started": started})
        run_dir = Path(config.run_dir)
        try:
            resume = (run_dir / "config.json").exists()
            summary = train(config, resume=resume)
        except Exception as err:
            with _states_locked(study):
                _write_state(
                    study,
                    name,
                    {
                        **me,
                        "state": "failed",
                        "error": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc(limit=20),
                        "finished": time.time(),
                    },
                )
            raise
        with _states_locked(study):
            done = {"state": "done", "env_steps": summary["env_steps"], "finished": time.time()}
            _write_state(study, name, {**me, **done, "started": started})
        lock.close()
        return summary


# ---- launchers ----------------------------------------------------------------------------
def default_parallel(launcher: LauncherConfig) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, launcher.cpus_per_run))


def check_launcher(launcher: LauncherConfig) -> None:
    """Raise StudyError if the launcher cannot be used here (before any work)."""
    from ._study import LAUNCHERS

    if launcher.kind not in LAUNCHERS:
        raise StudyError(
            f"launcher.kind must be one of {', '.join(LAUNCHERS)}, got {launcher.kind!r}"
        )
    for name in ("cpus_per_run", "time_min", "parallel"):
        value = getattr(launcher, name)
        if value is not None and value < 1:
            raise StudyError(f"launcher.{name} must be >= 1, got {value}")
    if launcher.gpus_per_run < 0 or launcher.max_requeues < 0:
        raise StudyError("launcher.gpus_per_run and launcher.max_requeues must be >= 0")
    gpu_slots(launcher)  # local runs with GPUs: enough of them
    if launcher.kind == "slurm":
        if shutil.which("sbatch") is None:
            raise StudyError(
                "launcher slurm: no sbatch on PATH, so no Slurm cluster is reachable from this "
                "machine; run the sweep on a Slurm login node, or use --launcher.kind local"
            )
        try:
            subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            raise StudyError(
                "launcher slurm: sbatch is here but the Slurm controller does not answer "
                f"(sinfo: {detail.decode(errors='replace').strip() or err}); start Slurm or use "
                "--launcher.kind local"
            ) from err


def local_gpus() -> list[str]:
    """The GPUs local jobs may be given: this process's CUDA_VISIBLE_DEVICES entries when it is
    set (indices or UUIDs), else the indices nvidia-smi lists; empty when there are none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def gpu_slots(launcher: LauncherConfig) -> list[str] | None:
    """For a local launcher with `gpus_per_run` > 0: one CUDA_VISIBLE_DEVICES value per run
    that may train at once, the machine's GPUs dealt out without overlap; None otherwise.
    Raises StudyError when the GPUs cannot serve one run, or `parallel` asks for more."""
    if launcher.kind != "local" or launcher.gpus_per_run == 0:
        return None
    gpus, need = local_gpus(), launcher.gpus_per_run
    if len(gpus) < need:
        found = f"{len(gpus)} ({', '.join(gpus)})" if gpus else "none"
        raise StudyError(
            f"launcher local: gpus_per_run={need} but the GPUs this machine shows are {found} "
            "(CUDA_VISIBLE_DEVICES, else nvidia-smi -L); set CUDA_VISIBLE_DEVICES to the GPUs "
            "the runs may use, lower gpus_per_run, or set it to 0 (the runs see what the sweep "
            "sees)"
        )
    slots = [",".join(gpus[i : i + need]) for i in range(0, len(gpus) - need + 1, need)]
    if launcher.parallel is not None and launcher.parallel > len(slots):
        raise StudyError(
            f"launcher local: parallel={launcher.parallel} runs of {need} GPU(s) each need "
            f"{launcher.parallel * need} GPUs, this machine shows {len(gpus)} "
            f"({', '.join(gpus)}); lower launcher.parallel to {len(slots)} or leave it out"
        )
    return slots


def make_executor(root: Path, launcher: LauncherConfig) -> Any:
    """The submitit executor of the launcher; its job files go under `<study>/.sweep/jobs`."""
    import submitit

    folder = root / SWEEP_DIR / "jobs" / "%j"
    if launcher.kind == "local":
        executor: Any = submitit.LocalExecutor(folder=folder, max_num_timeout=launcher.max_requeues)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        setup = []
        if launcher.gpus_per_run == 0:  # submitit would hide the GPUs: keep what this process sees
            setup = [
                "unset CUDA_VISIBLE_DEVICES"
                if visible is None
                else f"export CUDA_VISIBLE_DEVICES={visible}"
            ]
        # with gpus_per_run > 0, `submit` gives each job its own GPUs (`gpu_slots`)
        executor.update_parameters(
            timeout_min=60 * 24 * 365, gpus_per_node=launcher.gpus_per_run, setup=setup
        )
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=launcher.max_requeues)
    params: dict[str, Any] = {
        "cpus_per_task": launcher.cpus_per_run,
        "time": launcher.time_min,
        "signal_delay_s": 60 if launcher.time_min > 5 else 10,
        "job_name": "neurosurgery-sweep",
    }
    if launcher.gpus_per_run:
        params["gpus_per_node"] = launcher.gpus_per_run
    if launcher.partition:
        params["partition"] = launcher.partition
    if launcher.mem_gb is not None:
        params["mem"] = f"{int(launcher.mem_gb * 1024)}M"
    if launcher.parallel is not None:
        params["array_parallelism"] = launcher.parallel
    executor.update_parameters(**params)
    return executor


def submit(
    executor: Any,
    root: Path,
    runs: Sequence[Run],
    launcher: str,
    gpus: Sequence[str] | None = None,
) -> list[Any]:
    """Submit `runs` as one batch (a job array on Slurm); each run's state records its job.
    `gpus`: local only, the CUDA_VISIBLE_DEVICES value of each run's job."""
    from ._trainer import Trainer

    job = RunJob(Trainer.compiler_options)
    try:
        if gpus is None:
            with executor.batch():
                jobs = [executor.submit(job, str(root), r.name, r.config) for r in runs]
        else:
            jobs = []
            for run, devices in zip(runs, gpus, strict=True):
                executor.update_parameters(setup=[f"export CUDA_VISIBLE_DEVICES={devices}"])
                jobs.append(executor.submit(job, str(root), run.name, run.config))
    except Exception as err:  # sbatch refused the array, a job folder cannot be written, ...
        raise StudyError(
            f"submitting {len(runs)} runs ({launcher}) failed: {type(err).__name__}: "
            f"{str(err).strip()[:500]}; nothing of them started: fix the cause and run the "
            "sweep again"
        ) from err
    with _states_locked(root):
        for i, (run, job) in enumerate(zip(runs, jobs, strict=True)):
            state = read_state(root, run.name) or {}
            if str(state.get("job_id")) != str(job.job_id):  # the job may be writing already
                record: dict[str, Any] = {"state": "submitted", "job_id": str(job.job_id)}
                record.update(launcher=launcher, host=socket.gethostname(), submitted=time.time())
                if gpus is not None:
                    record["gpus"] = gpus[i]
                _write_state(root, run.name, record)
    return jobs


# ---- the sweep ----------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a sweep did: every run's state at its end, and the exit status."""

    states: dict[str, str]
    code: int


def _say(msg: str) -> None:
    print(msg, flush=True)


def prepare(study: Study, root: Path) -> list[Run]:
    """The study's runs, checked, and the study folder ready (manifest written); refuses bad
    input before anything is written."""
    runs = expand(study, root)
    check_launcher(study.launcher)
    existing = check_folder(root, study, runs)
    try:
        (root / SWEEP_DIR / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StudyError(f"cannot make the study folder {root}: {err}; give another --out") from err
    if not existing:
        text = json.dumps(manifest(study, runs), indent=2)  # in order: grid values are tables
        tmp = root / f"{MANIFEST}.tmp"
        tmp.write_text(text)
        os.replace(tmp, root / MANIFEST)
    return runs


@contextlib.contextmanager
def _driving(root: Path) -> Iterator[None]:
    """One sweep drives a study at a time."""
    with open(root / SWEEP_DIR / "driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise StudyError(
                f"another neurosurgery sweep is driving {root} ({f.read().strip()}); wait for "
                f"it, or see `neurosurgery sweep --status {root}`"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep(study: Study, root: str | Path, *, retry_failed: bool = False) -> Outcome:
    """Train every run of `study` under `root` that is not done yet, and wait for them."""
    root = Path(root)
    runs = prepare(study, root)
    launcher = study.launcher
    with _driving(root):
        return _drive(study, root, runs, launcher, retry_failed)


def _drive(
    study: Study, root: Path, runs: list[Run], launcher: LauncherConfig, retry_failed: bool
) -> Outcome:
    slurm = launcher.kind == "slurm"
    live = _slurm_live_jobs() if slurm else None
    status = {r.name: run_status(root, r, live) for r in runs}
    todo, watch = [], []
    for run in runs:
        kind, state = status[run.name]
        if kind == "done":
            continue
        if kind == "failed" and not retry_failed:
            continue
        if kind in ("running", "queued"):
            watch.append(run)  # a job of an earlier sweep: wait for it
        else:
            todo.append(run)
    counts = {k: sum(1 for v, _ in status.values() if v == k) for k in STATES}
    _say(
        f"study {study.name} in {root}: {len(runs)} runs; "
        + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        + f"; training {len(todo)} now ({launcher.kind})"
    )
    for run in runs:
        kind, state = status[run.name]
        if kind == "failed" and not retry_failed:
            _say(
                f"  failed earlier, not retried (--retry-failed): {run.name}: {state.get('error')}"
            )
    slots = gpu_slots(launcher)  # local runs with GPUs: the free CUDA_VISIBLE_DEVICES values
    parallel = launcher.parallel or (len(todo) if slurm else default_parallel(launcher))
    if slots is not None:
        parallel = min(parallel, len(slots))
    held: dict[str, str] = {}  # run -> the GPUs its job holds

    def release(name: str) -> None:  # a run ended: its GPUs go to the next one
        if slots is not None and name in held:
            slots.append(held.pop(name))

    for run in watch:  # an earlier sweep's jobs keep their GPUs
        gpus = status[run.name][1].get("gpus")
        if slots is not None and isinstance(gpus, str) and gpus in slots:
            slots.remove(gpus)
            held[run.name] = gpus
    executor = make_executor(root, launcher) if todo else None
    jobs: dict[str, Any] = {}
    final: dict[str, str] = {r.name: status[r.name][0] for r in runs}
    try:
        while todo or watch or jobs:
            free = len(todo) if slurm else parallel - len(jobs) - len(watch)
            if todo and free > 0:
                batch, todo = todo[:free], todo[free:]
                given = None
                if slots is not None:
                    given = [slots.pop(0) for _ in batch]
                    held.update({r.name: g for r, g in zip(batch, given, strict=True)})
                for i, run in enumerate(batch):
                    kind = status[run.name][0]
                    verb = {"interrupted": "resuming", "failed": "retrying"}.get(kind, "starting")
                    where = "" if given is None else f" (CUDA_VISIBLE_DEVICES={given[i]})"
                    _say(f"  {verb} {run.name}{where}")
                for run, job in zip(
                    batch, submit(executor, root, batch, launcher.kind, given), strict=True
                ):
                    jobs[run.name] = (run, job)
            time.sleep(POLL_S)
            live = _slurm_live_jobs() if slurm else None
            for name, (run, job) in list(jobs.items()):
                ended = (live is not None and str(job.job_id) not in live) if slurm else job.done()
                if ended and not _lock_held(root, name):
                    del jobs[name]
                    final[name] = _report(root, run, live, job)
                    release(name)
            for run in list(watch):
                kind, _ = run_status(root, run, live)
                if kind not in ("running", "queued"):
                    watch.remove(run)
                    final[run.name] = _report(root, run, live, None)
                    release(run.name)
    except KeyboardInterrupt:
        if not slurm:
            for _, job in jobs.values():
                job.cancel(check=False)
            _say("interrupted: the runs stop at their last checkpoints; re-run to continue")
        else:
            _say(f"interrupted: the Slurm jobs go on; `neurosurgery sweep --status {root}`")
        raise
    done = sum(1 for v in final.values() if v == "done")
    left = {k: [n for n, v in final.items() if v == k] for k in STATES if k != "done"}
    _say(
        f"study {study.name}: {done} of {len(runs)} runs done"
        + "".join(f", {len(v)} {k}" for k, v in left.items() if v)
    )
    if left["interrupted"]:
        _say("  interrupted runs resume from their checkpoints when the sweep is run again")
    if left["failed"]:
        _say(f"  failed runs: see `neurosurgery sweep --status {root}`; retry with --retry-failed")
    return Outcome(final, 0 if done == len(runs) else 1)


def _report(root: Path, run: Run, live: set[str] | None, job: Any) -> str:
    kind, state = run_status(root, run, live)
    if kind in ("queued", "running"):  # the job ended before it could write: not running
        kind = "interrupted"
    if kind == "done":
        _say(f"  done {run.name} ({state.get('env_steps')} env steps)")
    elif kind == "failed":
        _say(f"  failed {run.name}: {state.get('error')}")
    else:
        log = ""
        if job is not None:
            with contextlib.suppress(Exception):
                log = f"; its log: {job.paths.stderr}"
        _say(f"  interrupted {run.name} (its job ended before the run finished{log})")
    return kind


# ---- status -------------------------------------------------------------------------------
def status_report(root: str | Path) -> tuple[str, dict[str, str]]:
    """The table `neurosurgery sweep --status` prints, and every run's state."""
    root = Path(root)
    saved = read_manifest(root)
    if saved is None:
        raise StudyError(f"{root} holds no study ({MANIFEST}); give the --out of a sweep")
    from ._config import config_from_dict

    runs = [
        Run(name, dataclasses.replace(config_from_dict(config), run_dir=str(root / name)))
        for name, config in saved["runs"].items()
    ]
    slurm = any((read_state(root, r.name) or {}).get("launcher") == "slurm" for r in runs)
    live = _slurm_live_jobs() if slurm else None
    rows, states = [], {}
    for run in runs:
        kind, state = run_status(root, run, live)
        states[run.name] = kind
        steps = _env_steps(Path(run.config.run_dir))
        where = f"{steps}/{run.config.steps} steps" if steps is not None else "-"
        detail = state.get("error", "") if kind == "failed" else ""
        if kind in ("running", "queued") and state.get("job_id"):
            detail = f"job {state['job_id']}"
        rows.append((kind, run.name, where, detail))
    counts = {k: sum(1 for v in states.values() if v == k) for k in STATES}
    head = f"study {saved['study']} in {root}: {len(runs)} runs: " + ", ".join(
        f"{counts[k]} {k}" for k in STATES
    )
    w = max(len(r[1]) for r in rows)
    lines = [head] + [f"  {k:11s} {n:{w}s}  {s:>17s}  {d}".rstrip() for k, n, s, d in rows]
    return "\n".join(lines), states


def _env_steps(run_dir: Path) -> int | None:
    from ._checkpoint import read_header
    from ._trainer import CHECKPOINT

    path = run_dir / CHECKPOINT
    if not path.exists():
        return 0 if run_dir.exists() else None
    try:
        return int(read_header(path)["env_steps"])
    except Exception:
        return None
