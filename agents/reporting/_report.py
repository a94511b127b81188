"""`neurosurgery report`: one folder of results from any runs — a tidy results file, tables with
honest statistics, figures, and a self-contained `report.md` and `report.html`."""

from __future__ import annotations

import base64
import dataclasses
import html
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._published import Curve, check_published, mean_band, published_curve, published_tasks
from ._results import RETURN, Row, Run, find_runs, option, read_rows, rows_of, write_rows
from ._stats import MIN_SEEDS, FewSeedsWarning, iqm, normalised, stratified_bootstrap


@dataclasses.dataclass
class Report:
    """What `report` wrote: the folder, the runs read and those left out as partial."""

    out: Path
    runs: list[Run]
    partial: list[Run]
    markdown: str
    notes: list[str]

    @property
    def html(self) -> Path:
        return self.out / "report.html"


def final_scores(rows: Sequence[Row], last_k: int = 1) -> dict[tuple[str, str], dict[int, float]]:
    """{(exp_name, env_name): {seed: mean of the seed's last `last_k` evaluation returns}}."""
    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, got {last_k}")
    points: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r.metric == RETURN:
            points[(r.exp_name, r.env_name, r.seed)].append((r.env_step, r.value))
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for (e, env, seed), p in sorted(points.items()):
        p.sort()
        out[(e, env)][seed] = float(np.mean([v for _, v in p[-last_k:]]))
    return dict(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _bootstrap(scores: np.ndarray, seed: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSeedsWarning)  # flagged per cell instead
        return str(stratified_bootstrap(scores, iqm, seed=seed))


def report(
    folders: Sequence[Path],
    out: Path,
    *,
    baselines: Sequence[Path] = (),
    baseline_metric: str | None = None,
    normalise_by: str | None = None,
    last_k: int = 1,
    name_by: Sequence[str] = (),
    against: Sequence[str] = (),
    published: Sequence[str] = (),
    seed: int = 0,
) -> Report:
    """Read every run under `folders`, write `results.csv`, figures, `report.md` and
    `report.html` to `out`.

    Finished runs are reported; runs still in progress (or killed) are listed as partial and
    left out of every table and figure. `baselines`: tidy results files (e.g. SimbaV2's
    published baselines) put beside the runs; their return metric is `baseline_metric`
    (default: ours, `eval/episode_return`). `normalise_by`: a method (exp_name) to which every
    method's scores are normalised per task (Table 8 format) and aggregated (IQM of normalised
    scores with stratified-bootstrap 95 % CIs) and drawn as box plots. `against`: run options
    (dotted paths, e.g. `bro.critic_blocks` for a scaling study, `reset.tau` for a threshold
    sweep) each giving a figure of the final score against the option's value, per task and
    method. `published`: published algorithms (`BRO`, `BRO_fast`, `SAC`) drawn beside the runs
    on every task of theirs that has a curve, as are those the runs name in their `published`
    option; a section tabulates their IQM [95 % CI] and ours at the env steps both have (never
    interpolated) and names the steps of ours without a published point.

    Raises:
        FileNotFoundError: a folder holds no run.
        ValueError: no finished run; a baseline file in another format or without the return
            metric; `normalise_by` names a method absent from a task; a `published` algorithm
            that has no curves, or none on the runs' tasks.
    """
    runs = find_runs(folders, tuple(dict.fromkeys((*name_by, *against))))
    for key in against:
        for r in runs:
            value = option(r.config, key, "--against")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"--against {key!r}: {value!r} (in {r.path}) is not a number; plot against "
                    "a numeric option, e.g. bro.critic_blocks or reset.tau"
                )
    _check_distinct(runs)
    finished = [r for r in runs if r.finished]
    partial = [r for r in runs if not r.finished]
    if not finished:
        raise ValueError(
            f"none of the {len(runs)} runs under {[str(f) for f in folders]} has finished "
            f"(partial: {[str(r.path) for r in partial]}); report them once they have, or "
            "resume them with `neurosurgery resume RUN_DIR`"
        )
    by_run = {r.path: rows_of(r) for r in finished}
    rows = [row for r in finished for row in by_run[r.path]]
    compared = _published_for(finished, published)
    for path in baselines:
        extra = read_rows(path)
        metric = baseline_metric or RETURN
        if not any(r.metric == metric for r in extra):
            raise ValueError(
                f"{path} has no rows of metric {metric!r}; its metrics are "
                f"{sorted({r.metric for r in extra})}: name its return with --baseline-metric"
            )
        rows += [dataclasses.replace(r, metric=RETURN) if r.metric == metric else r for r in extra]
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "results.csv")
    if compared:
        write_rows(
            [
                Row(f"{c.algorithm} (published)", c.task, seed_, RETURN, step, float(v))
                for curves in compared.values()
                for c in curves
                for i, seed_ in enumerate(c.seeds)
                for step, v in zip(c.steps, c.returns[i], strict=True)
                if not np.isnan(v)
            ],
            out / "published.csv",
        )
    scores = final_scores(rows, last_k)
    methods = sorted({e for e, _ in scores})
    tasks = sorted({t for _, t in scores})
    notes: list[str] = []
    md = ["# Results", ""]
    md.append(
        f"{len(finished)} finished runs under {', '.join(str(f) for f in folders)}"
        + (f"; baselines: {', '.join(str(b) for b in baselines)}" if baselines else "")
        + f". Score: mean of the last {last_k} evaluation return(s) of each seed."
    )
    if partial:
        md += ["", "Partial runs (in progress or killed), left out of every table and figure:"]
        md += [f"- `{r.path}`" for r in partial]
    md += _runs_section(finished, by_run)
    md += ["", "## Per task", ""]
    for task in tasks:
        body = []
        for m in methods:
            s = scores.get((m, task))
            if not s:
                continue
            x = np.array(list(s.values()))
            few = " (fewer than 5 seeds)" if len(x) < MIN_SEEDS else ""
            if few:
                notes.append(f"{m} on {task}: {len(x)} seeds; its interval is too narrow to trust")
            body.append(
                (
                    m,
                    str(len(x)),
                    f"{x.mean():.1f} ± {x.std():.1f}",
                    _bootstrap(x[:, None], seed) + few,
                )
            )
        md += [f"### {task}", "", _table(("method", "seeds", "mean ± std", "IQM [95 % CI]"), body)]
        md.append("")
    if compared:
        md += _published_section(rows, compared, seed)
    figures = []
    if normalise_by is not None:
        section, per_seed = _normalised_section(scores, methods, tasks, normalise_by, seed)
        md += section
        figures.append(_boxes(per_seed, normalise_by, out / "normalised.png"))
    figures = _figures(rows, out, methods, tasks, compared, seed) + figures
    for key in against:
        figures.append(_against(finished, by_run, key, last_k, out))
    if figures:
        md += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    md += _units_section(finished, out)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text, out))
    return Report(out, finished, partial, text, notes)


#: at most this many runs get a units × env steps figure in one report
MAX_UNIT_FIGURES = 6


def _units_section(finished: Sequence[Run], out: Path) -> list[str]:
    """Per run that kept per-unit records (`--surgery.units`): its hidden units × env steps,
    coloured by a metric's score, with the units a reset replaced marked."""
    kept = [r for r in finished if any((r.path / "units").glob("*.npz"))]
    if not kept:
        return []
    md = [
        "## Units over training",
        "",
        "Every hidden unit of one network (rows, layer by layer) at each record (columns), "
        "coloured by the metric's score at the last surgery step before the record (scores are "
        "relative to the layer's mean: 1 is an average unit, 0 a silent one; clipped at 2), for "
        "the run's first seed; blank before the first surgery step. A cyan dot marks a unit "
        "that a reset replaced since the previous record.",
        "",
    ]
    for i, run in enumerate(kept[:MAX_UNIT_FIGURES]):
        name = f"units_{i}.png"
        caption = _units_figure(run, out / name)
        md += [f"`{run.path}`: {caption}", "", f"![{name}]({name})", ""]
    if len(kept) > MAX_UNIT_FIGURES:
        md += [f"({len(kept) - MAX_UNIT_FIGURES} more runs kept per-unit records; not drawn.)", ""]
    return md


def _units_figure(run: Run, path: Path) -> str:
    steps = sorted(int(p.stem) for p in (run.path / "units").glob("*.npz") if p.stem.isdigit())
    records = []
    for step in steps:
        with np.load(run.path / "units" / f"{step}.npz") as data:
            records.append({k: np.asarray(data[k]) for k in data.files})
    keys = [k for k in records[-1] if k.startswith("score/")]
    network = keys[0].split("/")[1]
    metrics = list(dict.fromkeys(k.split("/")[2] for k in keys if k.split("/")[1] == network))
    metric = "grama" if "grama" in metrics else metrics[0]
    prefix = f"score/{network}/{metric}/"
    groups = [k[len(prefix) :] for k in records[-1] if k.startswith(prefix)]

    def units_by_record(key: str) -> np.ndarray:
        """`[units, records]` of the first seed: every group's `key + group`, stacked."""
        return np.concatenate(
            [np.stack([r[key + g][0].reshape(-1) for r in records], axis=1) for g in groups]
        )

    score = units_by_record(prefix)
    resets = None
    if all(f"resets/{network}/{g}" in records[-1] for g in groups):
        counts = units_by_record(f"resets/{network}/")
        resets = np.diff(counts, axis=1, prepend=0) > 0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.5 + 3.5 * min(1.0, len(score) / 256)))
    edges = np.array([0, *steps], float)
    shown = np.ma.masked_invalid(np.clip(score, 0, 2))  # blank before the first surgery step
    mesh = ax.pcolormesh(edges, np.arange(len(score) + 1), shown, cmap="magma", vmin=0, vmax=2)
    fig.colorbar(mesh, ax=ax, label=f"{metric} score")
    if resets is not None and resets.any():
        unit, col = np.nonzero(resets)
        mid = (edges[col] + edges[col + 1]) / 2
        ax.scatter(mid, unit + 0.5, s=9, c="cyan", marker="o", lw=0)
    start = 0
    ticks = []
    for g in groups:
        n = int(np.prod(records[-1][prefix + g].shape[1:], dtype=int))
        ticks.append(start + n / 2)
        start += n
        ax.axhline(start, color="0.8", lw=0.6)
    ax.set_yticks(ticks, groups, fontsize=7)
    ax.invert_yaxis()  # the first layer on top
    ax.set(xlabel="environment steps", title=f"{run.exp_name} on {run.env_name}: {network}")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    n_reset = 0 if resets is None else int(resets.sum())
    return (
        f"{network}, {metric}, {len(score)} units × {len(steps)} records, "
        f"{n_reset} unit replacements marked"
    )


def _runs_section(finished: Sequence[Run], by_run: dict[Path, list[Row]]) -> list[str]:
    """A table of the finished runs: folder, method, task, seeds, env steps and wall time (the
    run's `perf/wall_s` at its last record: training, evaluations and compilation, summed over
    the processes of a resumed run up to the records it kept)."""
    body = []
    untimed = False
    for r in finished:
        rows = by_run[r.path]
        steps = max((x.env_step for x in rows), default=0)
        wall = [x.value for x in rows if x.metric == "perf/wall_s" and x.env_step == steps]
        if wall:
            rate = f"{steps / wall[0]:.1f}" if wall[0] > 0 else "–"
            time_ = _hms(wall[0])
        else:
            untimed, rate, time_ = True, "–", "–"
        body.append(
            (f"`{r.path}`", r.exp_name, r.env_name, str(len(r.seeds)), f"{steps:,}", time_, rate)
        )
    md = ["", "## Runs", ""]
    header = ("run", "method", "task", "seeds", "env steps", "wall time", "env steps/s per seed")
    md.append(_table(header, body))
    if untimed:
        md += ["", "–: the run was written before runs recorded their wall time (`perf/wall_s`)."]
    return md


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _published_for(runs: Sequence[Run], names: Sequence[str]) -> dict[str, list[Curve]]:
    """{task: the published curves drawn beside the runs on it}: every name of `names` on each
    task of the runs it has a curve on, and each run's own `published` on its task."""
    tasks = sorted({r.env_name for r in runs})
    for name in names:
        check_published(name)
        if not set(published_tasks(name)) & set(tasks):
            raise ValueError(
                f"--published {name}: it has no curve on the runs' tasks ({', '.join(tasks)}); "
                f"its tasks: {', '.join(published_tasks(name))}"
            )
    out: dict[str, list[Curve]] = {}
    for task in tasks:
        wanted = [n for n in names if task in published_tasks(n)]
        wanted += [r.config.published for r in runs if r.env_name == task and r.config.published]
        if wanted:
            out[task] = [published_curve(n, task) for n in dict.fromkeys(wanted)]
    return out


def _steps(points: Sequence[tuple[int, float]]) -> set[int]:
    return {s for s, _ in points}


def _published_section(rows: Sequence[Row], compared: dict[str, list[Curve]], seed: int):
    """Per task, IQM [95 % CI] of ours and of each published curve at the env steps both have."""
    md = [
        "## Beside published curves",
        "",
        "IQM over seeds [95 % stratified-bootstrap CI] of the evaluation return, at the env steps "
        "where a method of ours and a published curve both have an evaluation. Nothing is "
        "interpolated: a step of ours without a published point is named, not compared. Sources: "
        "agents/reporting/published/SOURCES.md.",
        "",
    ]
    ours: dict[tuple[str, str], dict[int, dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in rows:
        if r.metric == RETURN and r.env_name in compared:
            ours[(r.exp_name, r.env_name)][r.env_step][r.seed] = r.value
    for task, curves in compared.items():
        methods = sorted(m for m, t in ours if t == task)
        seeds_of = {m: set.union(*(set(v) for v in ours[(m, task)].values())) for m in methods}
        full = {  # steps at which every seed of a method has its evaluation
            m: sorted(s for s, v in ours[(m, task)].items() if set(v) == seeds_of[m])
            for m in methods
        }
        mine = set().union(*(set(v) for v in full.values()))
        theirs = set().union(*(set(c.steps) for c in curves))
        both = sorted(mine & theirs)
        md += [f"### {task}", ""]
        header = ["env step"] + [f"{m} ({len(seeds_of[m])} seeds)" for m in methods]
        header += [f"{c.algorithm}, published ({c.source}, {len(c.seeds)} seeds)" for c in curves]
        body = []
        for step in both:
            row = [f"{step:,}"]
            for m in methods:
                v = ours[(m, task)][step] if step in full[m] else None
                row.append("—" if v is None else _cell(np.array(list(v.values())), seed))
            for c in curves:
                row.append(_cell(c.at(step), seed) if step in c.steps else "—")
            body.append(row)
        if body:
            md += [_table(header, body), ""]
            if any("*" in cell for row in body for cell in row):
                md.append(
                    f"- \\* fewer than {MIN_SEEDS} seeds: the interval is too narrow to trust."
                )
        unmatched = sorted(mine - theirs)
        for c in curves:
            md.append(
                f"- {c.algorithm} publishes {len(c.seeds)} seeds {c.span()}."
                + (" No evaluation step of ours is one of them." if not body else "")
            )
        if unmatched:
            md.append(
                f"- Evaluations of ours with no published point (not compared): "
                f"{_list_steps(unmatched)}."
            )
        md.append("")
    return md


def _list_steps(steps: Sequence[int]) -> str:
    if len(steps) <= 6:
        return ", ".join(f"{s:,}" for s in steps)
    return f"{len(steps)} steps from {steps[0]:,} to {steps[-1]:,}"


def _cell(x: np.ndarray, seed: int) -> str:
    few = "*" if len(x) < MIN_SEEDS else ""
    return _bootstrap(x[:, None], seed) + few


def _flat_options(value: object, prefix: str = "") -> dict[str, object]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            out |= _flat_options(getattr(value, f.name), f"{prefix}{f.name}.")
        return out
    return {prefix[:-1]: value}


def _check_distinct(runs: Sequence[Run]) -> None:
    """Two runs of one method on one task with a seed in common would be mixed in its cell."""
    seen: dict[tuple[str, str, int], Run] = {}
    for r in runs:
        for s in r.seeds:
            other = seen.setdefault((r.exp_name, r.env_name, s), r)
            if other is r:
                continue
            a, b = _flat_options(other.config), _flat_options(r.config)
            skip = ("run_dir", "sinks", "progress", "env_workers", "steps")
            differ = sorted(k for k in a if a.get(k) != b.get(k) and not k.startswith(skip))
            raise ValueError(
                f"{other.path} and {r.path} are both {r.exp_name!r} on {r.env_name} with seed "
                f"{s}: their results would be mixed. Tell them apart with --name-by "
                f"{' '.join(differ[:3]) or 'OPTION'} (the options they differ in: "
                f"{differ or 'none: the same run twice'})"
            )


def _normalised_section(scores, methods, tasks, base: str, seed: int):
    missing = [t for t in tasks if not scores.get((base, t))]
    if base not in methods or missing:
        have = sorted(t for t in tasks if scores.get((base, t)))
        raise ValueError(
            f"--normalise-by {base!r}: the method has no finished runs on {missing or tasks} "
            f"(its tasks: {have}; methods: {methods}); normalise by a method run on every task"
        )
    body, per_seed = [], {}
    for m in methods:
        common = [t for t in tasks if scores.get((m, t))]
        seeds = sorted(set.intersection(*(set(scores[(m, t)]) for t in common)))
        if not seeds:
            continue
        mine = np.array([[scores[(m, t)][s] for t in common] for s in seeds])
        ref = [list(scores[(base, t)].values()) for t in common]
        ref_mean = np.array([np.mean(r) for r in ref])
        ratio = normalised(mine, ref_mean[None, :])
        per_seed[m] = (mine / ref_mean).mean(axis=1)
        body.append(
            (m, ", ".join(common), str(len(seeds)), str(ratio), _bootstrap(mine / ref_mean, seed))
        )
    return [
        f"## Normalised to {base}",
        "",
        "Each seed's score over the mean of the baseline's seeds on the same task, averaged over "
        "tasks (mean ± std over seeds), and the IQM over runs and tasks of those normalised "
        "scores with a stratified-bootstrap 95 % interval (Agarwal et al. 2021).",
        "",
        _table(("method", "tasks", "seeds", f"score / {base}", "IQM [95 % CI]"), body),
        "",
    ], per_seed


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _boxes(per_seed: dict[str, np.ndarray], base: str, path: Path) -> str:
    """Box plots of each method's per-seed normalised score (the paper's Fig. 10)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(per_seed) + 2, 3.6))
    ax.boxplot(list(per_seed.values()), showmeans=True)
    ax.set_xticks(range(1, len(per_seed) + 1), list(per_seed), rotation=20, fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(ylabel=f"score / {base}", title="normalised score per seed (mean over tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _against(runs: list[Run], by_run: dict, key: str, last_k: int, out: Path) -> str:
    """Final score against the value of run option `key`, per task and method, mean and 95 %
    interval over seeds (a scaling study, Fig. 9; a τ sweep, Fig. 13)."""
    plt = _plt()
    points: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        value = option(r.config, key, "--against")
        assert isinstance(value, int | float)  # checked in `report`
        name = " ".join(
            p for p in r.exp_name.split(" ") if not p.startswith(key.rsplit(".")[-1] + "=")
        )
        for (_, task), s in final_scores(by_run[r.path], last_k).items():
            points[(name, task)][float(value)] += list(s.values())
    tasks = sorted({t for _, t in points})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for (name, t), by_value in sorted(points.items()):
            if t != task:
                continue
            xs = sorted(by_value)
            bands = np.array(
                [np.array(seed_band(np.asarray(by_value[x])[:, None]))[:, 0] for x in xs]
            )
            m, low, high = bands.T
            ax.errorbar(xs, m, yerr=(m - low, high - m), marker="o", capsize=3, label=name)
        ax.set(title=task, xlabel=key, ylabel="final evaluation return")
        _legend(ax)
    fig.tight_layout()
    name = f"against_{key.replace('.', '_')}.png"
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _figures(
    rows: Sequence[Row],
    out: Path,
    methods: list[str],
    tasks: list[str],
    compared: dict[str, list[Curve]],
    seed: int,
) -> list[str]:
    plt = _plt()

    curves: dict[tuple[str, str, str], dict[int, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in rows:
        curves[(r.metric, r.exp_name, r.env_name)][r.seed].append((r.env_step, r.value))
    written = []

    def band(ax, by_seed, label, color):
        steps = sorted(set.intersection(*(set(s for s, _ in p) for p in by_seed.values())))
        if not steps:
            return
        values = np.array([[dict(p)[s] for s in steps] for p in by_seed.values()])
        m, low, high = seed_band(values, seed)
        ax.plot(steps, m, label=f"{label} ({len(values)} seeds)", color=color)
        if len(values) > 1:
            ax.fill_between(steps, low, high, alpha=0.2, color=color, lw=0)

    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        last = 0
        for m in methods:
            if curves.get((RETURN, m, task)):
                band(ax, curves[(RETURN, m, task)], m, colors[m])
                last = max(last, *(s for p in curves[(RETURN, m, task)].values() for s, _ in p))
        for i, c in enumerate(compared.get(task, ())):
            _grey_band(ax, c, last, i, seed)
        ax.set(title=task, xlabel="environment steps", ylabel="evaluation return")
        _legend(ax)
    fig.tight_layout()
    fig.savefig(out / "returns.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append("returns.png")
    inactive = sorted(
        {r.metric for r in rows if r.metric.startswith("surgery/") and r.metric.count("/") == 2}
    )
    if inactive:
        fig, axes = plt.subplots(
            len(inactive), len(tasks), figsize=(5 * len(tasks), 2.8 * len(inactive)), squeeze=False
        )
        for i, metric in enumerate(inactive):
            for ax, task in zip(axes[i], tasks, strict=True):
                for m in methods:
                    if curves.get((metric, m, task)):
                        band(ax, curves[(metric, m, task)], m, colors[m])
                _, network, name = metric.split("/")
                ax.set(title=f"{task}: {network}, {name}", ylabel="inactive fraction")
                _legend(ax)
        axes[-1][0].set_xlabel("environment steps")
        fig.tight_layout()
        fig.savefig(out / "inactive.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("inactive.png")
    return written


def seed_band(
    values: np.ndarray, seed: int = 0, reps: int = 2000, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (rows of `values`, `[seeds, steps]`) at each step and its `level`
    percentile bootstrap interval (seeds resampled with replacement). The interval lies within
    the seeds' range, so a band of fractions stays within [0, 1] (mean ± k·std does not)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)  # [reps, steps]
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return values.mean(axis=0), low, high


def _legend(ax) -> None:
    """The legend beside the axes, where it hides no curve."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _grey_band(ax, c: Curve, last: int, i: int, seed: int) -> None:
    """A published curve in grey: its mean over seeds with a 95 % bootstrap band, up to our last
    step (at least to its first point, so that it shows where it starts), points marked."""
    upto = max(last, c.steps[0])
    keep = [j for j, s in enumerate(c.steps) if s <= upto]
    m, low, high = (a[keep] for a in mean_band(c, seed=seed))
    xs = [c.steps[j] for j in keep]
    grey = ("0.35", "0.6", "0.15")[i % 3]
    style = ("--", ":", "-.")[i % 3]
    label = f"{c.algorithm}, published ({len(c.seeds)} seeds)"
    ax.plot(xs, m, color=grey, ls=style, marker=".", label=label)
    ax.fill_between(xs, low, high, color=grey, alpha=0.25, lw=0)


def _html(markdown: str, out: Path) -> str:
    """The report as one HTML file: tables as tables, figures embedded."""
    parts = ["<!doctype html><meta charset='utf-8'><title>Results</title>"]
    parts.append(
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style>"
    )
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, body = block[0], block[2:]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head))
            for row in body:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row))
            parts.append("</table>")
            continue
        if line.startswith("!["):
            name = line[line.index("(") + 1 : line.index(")")]
            data = base64.b64encode((out / name).read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            parts.append(f"<li>{html.escape(line[2:])}")
        elif line:
            parts.append(f"<p>{html.escape(line)}")
        i += 1
    return "\n".join(parts) + "\n"
