"""A training run on disk: run folder, sinks, progress bar, checkpoints, resume, summary, plots."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._checkpoint import (
    CheckpointError,
    InexactResumeWarning,
    RunWriteError,
    load_checkpoint_extras,
    read_header,
    save_checkpoint,
)
from ._config import TrainConfig, config_from_dict, config_to_dict, migrate
from ._files import named_oserror, replace_file
from ._sinks import (
    ConsoleSink,
    CSVSink,
    History,
    JSONLSink,
    Sink,
    TensorBoardSink,
    WandbSink,
    plot_curves,
)
from ._trainer import CHECKPOINT, Callback, NonFiniteError, Trainer, program_options, versions


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The configuration saved in a run folder (for `neurosurgery resume`)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json)")
    try:
        saved = json.loads(path.read_text())["config"]
        config = config_from_dict(saved)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path} cannot be read as a run configuration ({type(err).__name__}: {err}); "
            "restore it from a copy (the checkpoint holds the state, config.json the options)"
        ) from err
    return replace(config, run_dir=str(run_dir))


def _saved_steps(run_dir: Path) -> int | None:
    """`steps` as saved in the run folder's config.json (None if it cannot be read)."""
    try:
        return load_run_config(run_dir).steps
    except (OSError, CheckpointError):
        return None


#: files a run writes into its folder besides the checkpoint
RUN_FILES = (
    "config.json",
    "metrics.csv",
    "metrics.jsonl",
    "summary.json",
    "tb",
    "wandb",
    "checkpoints",
    "units",
)

#: the folder of a run's per-unit records (`surgery.units`), one file per record
UNITS = "units"


def write_units(run_dir: Path, env_steps: int, surgery_state: Any) -> None:
    """`units/<env_steps>.npz`: per network, each logged metric's last per-unit scores
    (`score/<network>/<metric>/<group>`) and each unit's reset count
    (`resets/<network>/<group>`), every array `[seeds, *unit_shape]`; written under a temporary
    name and renamed (a resumed run rewrites the records after its checkpoint)."""
    arrays = {}
    for network, states in surgery_state.items():
        for metric, groups in states.get("units", {}).items():
            for group, value in groups.items():
                arrays[f"score/{network}/{metric}/{group}"] = np.asarray(value)
        for group, value in states.get("resets", {}).items():
            arrays[f"resets/{network}/{group}"] = np.asarray(value)
    folder = run_dir / UNITS
    folder.mkdir(exist_ok=True)
    replace_file(folder / f"{env_steps}.npz", lambda f: np.savez(f, **arrays), binary=True)


def _differences(saved: Any, current: Any, default: Any, prefix: str = "") -> list[str]:
    """`option: saved → current` for every option that differs (nested options dotted). An
    option the checkpoint does not know (added to the configuration after it was written)
    counts as equal when this run leaves it at its default."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        default = default if isinstance(default, dict) else {}
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}{key}"
            if key not in current:
                out.append(f"{name} (only in the checkpoint)")
            elif key not in saved:
                if key not in default or current[key] != default[key]:
                    out.append(f"{name}: not in the checkpoint, {current[key]!r} here")
            else:
                out += _differences(saved[key], current[key], default.get(key), name + ".")
        return out
    return [] if saved == current else [f"{prefix[:-1] or 'config'}: {saved!r} → {current!r}"]


def _sinks(config: TrainConfig, run_dir: Path, keep_until: int | None) -> list[Sink]:
    """The sinks of `config.sinks`. On resume every metric file is read before any is
    rewritten, so that one that cannot be read stops the resume with the folder unchanged."""
    seeds, files = config.seeds, {"csv": CSVSink, "jsonl": JSONLSink}
    kept = {
        kind: sink.read_kept(run_dir / f"metrics.{kind}", keep_until)
        for kind, sink in files.items()
        if kind in config.sinks and keep_until is not None
    }
    out: list[Sink] = []
    try:
        for kind, sink in files.items():
            if kind in config.sinks:
                path = run_dir / f"metrics.{kind}"
                out.append(sink(path, seeds, keep_until, kept=kept.get(kind)))
        if "tensorboard" in config.sinks:
            out.append(TensorBoardSink(run_dir / "tb", seeds, keep_until))
        if "console" in config.sinks:
            out.append(ConsoleSink(extra_keys=tuple(_inactive_keys(config).values())))
        if "wandb" in config.sinks:
            w = config.wandb
            group = w.group or run_dir.resolve().name
            out.append(
                WandbSink(run_dir, seeds, w.project, group, w.entity, config_to_dict(config))
            )
    except BaseException:
        for sink in out:
            sink.close()
        raise
    return out


def _inactive_keys(config: TrainConfig) -> dict[str, str]:
    """Network → the metric name of its inactive ratio shown while training: the fraction the
    reset strategy flags on the networks it resets, else the first logged metric's."""
    keys = {}
    if config.reset.method != "none":
        keys = {net: f"surgery/{net}/flagged" for net in config.reset.networks}
    metrics = config.surgery.built_metrics()
    if metrics:
        for net in config.surgery.networks:
            keys.setdefault(net, f"surgery/{net}/{metrics[0].name}")
    return keys


def _progress_postfix(config: TrainConfig, record: dict[str, np.ndarray]) -> dict[str, str]:
    """What the progress bar shows after a segment: env-steps/s, returns, inactive ratios."""
    post = {"sps": f"{record['perf/env_steps_per_s'][0]:.0f}"}
    for key in ("eval/episode_return", "train/episode_return"):
        if key in record and np.isfinite(record[key]).any():
            post[key.split("/")[0] + "_ret"] = f"{np.nanmean(record[key]):.3g}"
    for net, key in _inactive_keys(config).items():
        if key in record and np.isfinite(record[key]).any():
            post[f"{net}_inactive"] = f"{100 * np.nanmean(record[key]):.1f}%"
    return post


def train(
    config: TrainConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Train `config.agent` on `config.env` for every seed; returns the final summary.

    Metrics reach `callbacks` and the sinks named in `config.sinks` as `(env_steps, {name:
    per-seed values})`. With `resume`, the run continues from the checkpoint in `config.run_dir`.
    """
    config.validate()
    run_dir = Path(config.run_dir)
    ckpt_path = run_dir / CHECKPOINT
    header = None
    if resume:
        header = read_header(ckpt_path) if ckpt_path.exists() else None
        missing = sorted({"config", "env_steps", "updates"} - set(header or ()))
        if header is not None and missing:
            raise CheckpointError(
                f"checkpoint {ckpt_path} lacks {', '.join(missing)} in its header: it was not "
                "written by a training run; restore it from a copy or start a new --run-dir"
            )
        defaults = program_options(TrainConfig())
        diff = (
            []
            if header is None
            else _differences(migrate(header["config"]), program_options(config), defaults)
        )
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written by a different configuration ({shown}); "
                "resume with the options saved in the run folder, or start a new --run-dir"
            )
        # a run's own `steps` may fall short of where it ended (it runs whole segments);
        # a new, smaller `steps` would be recorded against a state that is further on
        done = None if header is None else header["env_steps"]
        if done is not None and config.steps < done and config.steps != _saved_steps(run_dir):
            raise CheckpointError(
                f"{run_dir} is already at {done} env steps, past steps = {config.steps}; "
                f"resume with steps >= {done} (or leave it out)"
            )
    elif ckpt_path.exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; continue it with `neurosurgery resume {run_dir}`, or give another run dir"
        )
    elif any((run_dir / name).exists() for name in RUN_FILES):
        found = ", ".join(name for name in RUN_FILES if (run_dir / name).exists())
        raise CheckpointError(
            f"{run_dir} holds files of an earlier run with no checkpoint ({found}); a new run "
            "would mix its metrics with theirs: delete them or pick another --run-dir"
        )
    _check_writable(run_dir)
    started = time.perf_counter()
    trainer = Trainer(config)  # builds envs and the agent: bad names fail here, before any work
    try:
        return _run(config, run_dir, ckpt_path, header, resume, trainer, callbacks, started)
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise
        raise _write_error(err, run_dir, ckpt_path) from None


def _run(config, run_dir, ckpt_path, header, resume, trainer, callbacks, started) -> dict:
    """The run once its folder and options are checked: state, sinks, the loop, the summary."""
    sinks: list[Sink] = []
    try:
        env_steps = updates = 0
        if header is not None:  # checked against the state's shapes before anything runs
            _check_layout(header, trainer.agent, config.agent, ckpt_path)
            ts, header, extras = load_checkpoint_extras(ckpt_path, trainer.state_shapes())
            ts = trainer.place(ts)
            env_steps, updates = header["env_steps"], header["updates"]
            if not trainer.jittable:
                ts = _resume_host_envs(trainer, ts, header, extras, ckpt_path, env_steps)
        else:
            ts = trainer.initial_state()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(
                f"cannot make the run folder {run_dir}: {err}; pick a --run-dir you can write to"
            ) from err
        # the metric files first: one that cannot be read stops the resume before anything
        # else in the folder changes
        sinks = _sinks(config, run_dir, env_steps if resume else None)
        history = History.resumed(config.seeds, run_dir, env_steps) if resume else None
        history = history or History(config.seeds)
        # rewritten on resume too (--steps may have extended the run), through a rename
        meta = {"config": config_to_dict(config), "versions": versions()}
        text = json.dumps(meta, indent=2, sort_keys=True)
        replace_file(run_dir / "config.json", lambda f: f.write(text))
        emit = [*callbacks, history.write, *(s.write for s in sinks)]
        # the run's wall time goes on from the last record a resumed run kept
        earlier = history.curves.get("perf/wall_s", {}).get(config.seeds[0], [])
        clock = (started, earlier[-1][1] if earlier else 0.0)
        ts, env_steps, updates = _loop(trainer, ts, env_steps, updates, emit, ckpt_path, clock)
    finally:
        for s in sinks:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails too
                s.close()
        trainer.close()
    return _finish(config, run_dir, env_steps, updates, trainer, history)


#: the errors of a write that finds no room: a full disk, an exhausted quota, a file too large
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error(err: OSError, run_dir: Path, ckpt_path: Path) -> RunWriteError:
    """One line for a write that found no room: what, where, what is intact, how to go on."""
    what = err.filename or f"a file in {run_dir}"
    try:
        kept = f"the last checkpoint (env step {read_header(ckpt_path)['env_steps']}) is intact"
    except (OSError, ValueError):
        kept = "no checkpoint was written yet"
    return RunWriteError(
        f"could not write {what}: {err.strerror}; the run stopped, {kept} and no temporary "
        f"file is left: free space, then continue with `neurosurgery resume {run_dir}`"
    )


def _resume_host_envs(trainer: Trainer, ts, header: dict, extras: dict, path: Path, env_steps):
    """Put the host environments where the checkpoint left them; with no state of them in it
    (a checkpoint from before checkpoints held it, or a task whose state cannot be saved),
    restart their episodes and warn that the run will not replay an uninterrupted one."""
    saved = header.get("host_envs")
    if isinstance(saved, dict) and saved.get("saved") is True:
        try:
            trainer.restore_host_envs(extras)
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint {path}: the saved state of its {trainer.config.env} environments "
                f"does not fit the environments this run made ({err}); resume with the MuJoCo "
                "and dm_control versions the run was written with, or start again in a new "
                "--run-dir"
            ) from err
        return ts
    why = saved.get("why") if isinstance(saved, dict) else None
    warnings.warn(
        f"checkpoint {path} holds no state of the {trainer.config.env} environments "
        f"({why or 'it was written before checkpoints held it'}): they start new episodes, "
        "so the resumed run's records will differ from those of an uninterrupted run",
        InexactResumeWarning,
        stacklevel=3,
    )
    trainer.env_states, obs = trainer._reset_host(trainer.envs, env_steps)
    return eqx.tree_at(lambda t: t.obs, ts, obs)


#: the folder of a run's kept checkpoints (`keep_checkpoints`), one per checkpointed env step
KEPT = "checkpoints"


def _keep(path: Path, env_steps: int) -> None:
    """Keep the checkpoint just written as `checkpoints/<env_steps>.ckpt`: a hard link where the
    file system has them (the next checkpoint replaces `path` through a rename, so the link
    keeps this one's bytes), a copy elsewhere; written under a temporary name and renamed."""
    kept = path.parent / KEPT / f"{env_steps}.ckpt"
    kept.parent.mkdir(exist_ok=True)
    tmp = kept.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, kept)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise named_oserror(err, kept) from err


#: what changed in each agent's training state, by the layout number that came with it (a
#: checkpoint without a number has layout 1)
LAYOUT_CHANGES = {
    ("bro", 2): "BRO's two critics became two networks (they were one network stacked on a "
    "member axis) and its layers store their weights (in, out) (they were (out, in))",
}


def state_layout(agent: Any) -> int:
    """The layout number of `agent`'s training state (`Agent.state_layout`, 1 without one)."""
    return int(getattr(agent, "state_layout", 1))


def _check_layout(header: dict, agent: Any, name: str, path: Path) -> None:
    """Refuse a checkpoint whose state has another layout than `agent` (named `name`) trains,
    naming what changed, before any array is read."""
    saved = int(header.get("state_layout", 1))
    current = state_layout(agent)
    if saved == current:
        return
    changes = [
        f"layout {n}: {LAYOUT_CHANGES[(name, n)]}"
        for n in range(min(saved, current) + 1, max(saved, current) + 1)
        if (name, n) in LAYOUT_CHANGES
    ]
    raise CheckpointError(
        f"checkpoint {path} holds a {name} training state of layout {saved}, and this version "
        f"of neurosurgery trains layout {current} ({'; '.join(changes) or 'unknown change'}): it "
        "cannot be resumed here; resume it with the version that wrote it (config.json names "
        "it under versions), or start a new --run-dir"
    )


def _checkpoint(trainer: Trainer, path: Path, ts, meta: dict, warned: list) -> None:
    """Save the training state and, for host environments, theirs (warning once per run if
    they cannot be saved: a resume from this checkpoint would not be exact)."""
    extras: dict[str, np.ndarray] = {}
    if not trainer.jittable:
        extras, why = trainer.host_env_state()
        meta = dict(meta, host_envs={"saved": why is None, "why": why})
        if why is not None and not warned and hasattr(trainer.envs[0], "get_state"):
            warned.append(why)
            warnings.warn(
                f"{why}; a run resumed from the checkpoints of this run will start new episodes "
                "and not replay an uninterrupted run exactly",
                InexactResumeWarning,
                stacklevel=3,
            )
    save_checkpoint(path, ts, meta, extras)


def _check_writable(run_dir: Path) -> None:
    """The run folder can be made and written, or a clear error before any work (and before
    anything is created)."""
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem is not None:
        raise CheckpointError(
            f"cannot write the run folder {run_dir}: {problem}; pick a --run-dir you can write to"
        )


def _loop(trainer: Trainer, ts, env_steps: int, updates: int, emit, ckpt_path: Path, clock: tuple):
    """Segments until `steps`; `clock` (perf_counter at the process's start, the run's wall
    seconds before it) times `perf/wall_s`, the run's wall time so far at each record."""
    c = trainer.config
    started, wall_before = clock
    warmup_steps = trainer.warmup_vec * c.num_envs
    bar = None
    if c.progress:
        from tqdm import tqdm

        bar = tqdm(total=c.steps, initial=min(env_steps, c.steps), unit="step", dynamic_ncols=True)
    last_ckpt = env_steps if env_steps else None
    warned: list[str] = []
    try:
        while env_steps < c.steps:
            learning = env_steps >= warmup_steps
            bodies = trainer.bodies_at(env_steps) if learning else 0
            t0 = time.perf_counter()
            compile_before = trainer.compile_s
            ts, stats, metrics = trainer.segment(ts, updates, learning, bodies or None)
            jax.block_until_ready(ts)
            per_body = trainer.loop.env_per_body * c.num_envs
            seg_steps = bodies * per_body if learning else warmup_steps
            seg_updates = bodies * trainer.loop.updates_per_body
            _check_finite(trainer, ts, metrics, env_steps, updates, last_ckpt, seg_steps)
            env_steps, updates = env_steps + seg_steps, updates + seg_updates
            wall = time.perf_counter() - t0 - (trainer.compile_s - compile_before)
            record = _record(stats, metrics)
            n_seeds = len(c.seeds)
            record["perf/env_steps_per_s"] = np.full(n_seeds, seg_steps * n_seeds / wall)
            record["perf/updates_per_s"] = np.full(n_seeds, seg_updates * n_seeds / wall)
            record["perf/compile_s"] = np.full(n_seeds, trainer.compile_s)
            done = env_steps >= c.steps
            if c.eval_every and (
                done or env_steps // c.eval_every > (env_steps - seg_steps) // c.eval_every
            ):
                record["eval/episode_return"] = trainer.evaluate(ts, env_steps)
            elapsed = wall_before + time.perf_counter() - started
            record["perf/wall_s"] = np.full(n_seeds, elapsed)
            for fn in emit:
                fn(env_steps, record)
            if c.surgery.units:
                write_units(ckpt_path.parent, env_steps, ts.surgery)
            if (
                done
                or env_steps // c.checkpoint_every > (env_steps - seg_steps) // c.checkpoint_every
            ):
                meta = {"env_steps": env_steps, "updates": updates, "config": program_options(c)}
                meta["state_layout"] = state_layout(trainer.agent)
                _checkpoint(trainer, ckpt_path, ts, meta, warned)
                if c.keep_checkpoints:
                    _keep(ckpt_path, env_steps)
                last_ckpt = env_steps
            if bar is not None:
                bar.update(min(env_steps, c.steps) - bar.n)
                bar.set_postfix(_progress_postfix(c, record))
    finally:
        if bar is not None:
            bar.close()
    return ts, env_steps, updates


def _record(stats: Any, metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    sums = np.asarray(stats, np.float64).sum(axis=1)  # [S, 3]: return sum, length sum, count
    with np.errstate(invalid="ignore", divide="ignore"):
        count = np.where(sums[:, 2] > 0, sums[:, 2], np.nan)
        out = {
            "train/episode_return": sums[:, 0] / count,
            "train/episode_length": sums[:, 1] / count,
        }
    for name, metric in metrics.items():
        value = np.asarray(metric, np.float64)  # [S, B]
        if name.startswith("surgery/"):  # the latest surgery step's value
            idx = np.where(np.isfinite(value), np.arange(value.shape[1]), -1).max(axis=1)
            out[name] = np.where(idx >= 0, value[np.arange(len(idx)), idx], np.nan)
        else:
            out[("" if "/" in name else "train/") + name] = value.mean(axis=1)
    return out


def _check_finite(
    trainer: Trainer, ts, metrics, env_steps: int, updates: int, last_ckpt, seg_steps: int
) -> None:
    kept = f"last good checkpoint: env step {last_ckpt}" if last_ckpt else "no checkpoint yet"
    per_body_updates = trainer.loop.updates_per_body
    per_body_steps = trainer.loop.env_per_body * trainer.config.num_envs
    bad = {
        (metric, network): ~np.isfinite(np.asarray(metrics[metric]))  # [S, B]
        for metric, network in trainer.agent.loss_networks
        if metric in metrics
    }
    bad = {k: v for k, v in bad.items() if v.any()}
    if bad:
        body = min(int(np.argwhere(v)[:, 1].min()) for v in bad.values())
        names = ", ".join(
            f"{metric} of network '{network}' (seeds "
            f"{[trainer.config.seeds[i] for i in np.flatnonzero(v[:, body])]})"
            for (metric, network), v in bad.items()
            if v[:, body].any()
        )
        raise NonFiniteError(
            f"non-finite {names} within updates {updates + body * per_body_updates + 1}–"
            f"{updates + (body + 1) * per_body_updates}, at env step "
            f"{env_steps + (body + 1) * per_body_steps}; run stopped ({kept})"
        )
    finite = {k: np.asarray(v) for k, v in trainer._finite(ts).items()}
    for network, ok in finite.items():
        if not ok.all():
            seed = trainer.config.seeds[int(np.argmin(ok))]
            raise NonFiniteError(
                f"non-finite parameters in network '{network}' (seed {seed}) after env step "
                f"{env_steps + seg_steps}, update {updates}; run stopped ({kept})"
            )


def _finish(
    config: TrainConfig,
    run_dir: Path,
    env_steps: int,
    updates: int,
    trainer: Trainer,
    history: History,
) -> dict:
    summary: dict[str, Any] = {
        "env_steps": env_steps,
        "updates": updates,
        "seeds": list(config.seeds),
    }
    curves = history.curves
    for name in ("eval/episode_return", "train/episode_return"):
        if name in curves:
            by_seed = [curves[name].get(s, []) for s in config.seeds]
            summary[name] = {
                "final": [p[-1][1] if p else None for p in by_seed],
                "best": [max(v for _, v in p) if p else None for p in by_seed],
            }
    returns = ("eval/episode_return", "train/episode_return")
    plot_curves(curves, run_dir / "returns.png", returns, f"{config.agent} on {config.env}")
    plot_curves(
        curves, run_dir / "inactive.png", ("surgery/",), "inactive neurons (fraction)", depth=3
    )
    summary["compile_s"] = trainer.compile_s
    wall = curves.get("perf/wall_s", {}).get(config.seeds[0], [])
    summary["wall_s"] = wall[-1][1] if wall else None
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
