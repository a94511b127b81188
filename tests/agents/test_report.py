"""`neurosurgery report`: tidy results, tables checked by hand, partial runs kept apart, figures
and a self-contained HTML report, and the refusals."""

import csv
import dataclasses
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from agents import ResetConfig, TrainConfig
from agents.reporting import COLUMNS, final_scores, read_rows, report
from agents.reporting._report import seed_band
from agents.training._config import encode
from agents.training.cli import main

TASKS = ("test/point-mass", "test/point-mass-host")
SEEDS = (0, 1, 2, 3, 4)


def final_return(method: str, task: int, seed: int) -> float:
    return 10.0 * (1 + task) + seed + (5.0 if method == "regrama" else 0.0)


def write_run(folder, method, task, seeds=SEEDS, finished=True, inactive=True, wall=None):
    """A run folder as `neurosurgery train` leaves it, with known evaluation returns: at steps
    100 and 200, `final_return - 2` then `final_return`."""
    folder.mkdir(parents=True)
    config = TrainConfig(env=TASKS[task], seeds=seeds, steps=200, reset=ResetConfig(method=method))
    (folder / "config.json").write_text(json.dumps({"config": encode(config), "versions": {}}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "seed", "name", "value"])
        for step in (100, 200):
            for s in seeds:
                value = final_return(method, task, s) - (2 if step == 100 else 0)
                w.writerow([step, s, "eval/episode_return", value])
                if inactive:
                    w.writerow([step, s, "surgery/critic/grama", 0.1 * step / 200])
                if wall is not None:
                    w.writerow([step, s, "perf/wall_s", wall[step // 100 - 1]])
    if finished:
        (folder / "summary.json").write_text(json.dumps({"env_steps": 200}))


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "study"
    for method in ("none", "regrama"):
        for task in (0, 1):
            write_run(root / f"{method}-{task}", method, task)
    write_run(root / "killed", "redo", 0, finished=False)
    return root


def test_report_tables_match_values_computed_by_hand(study, tmp_path):
    out = tmp_path / "report"
    done = report([study], out, normalise_by="sac", seed=0)
    assert [str(r.path.name) for r in done.partial] == ["killed"]
    rows = read_rows(out / "results.csv")
    assert {r.exp_name for r in rows} == {"sac", "sac+regrama"}  # the killed run is left out
    assert len(rows) == 2 * 2 * 5 * 2 * 2  # methods × tasks × seeds × steps × metrics
    header = (out / "results.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == COLUMNS
    scores = final_scores(rows, last_k=1)
    assert scores[("sac+regrama", TASKS[1])] == {s: 25.0 + s for s in SEEDS}
    last2 = final_scores(rows, last_k=2)
    assert last2[("sac", TASKS[0])][3] == pytest.approx(10 + 3 - 1)
    # per task: mean ± std over seeds
    x = np.array([final_return("regrama", 0, s) for s in SEEDS])
    assert f"| sac+regrama | 5 | {x.mean():.1f} ± {x.std():.1f} |" in done.markdown
    # normalised to sac: per seed, the mean over tasks of score / sac's mean on the task
    ref = [np.mean([final_return("none", t, s) for s in SEEDS]) for t in (0, 1)]
    per_seed = [np.mean([final_return("regrama", t, s) / ref[t] for t in (0, 1)]) for s in SEEDS]
    line = next(x for x in done.markdown.splitlines() if x.startswith("| sac+regrama | test/"))
    assert f"| {np.mean(per_seed):.2f} ± {np.std(per_seed):.2f} |" in line
    assert "killed" in done.markdown and not done.notes  # 5 seeds: no warning
    page = done.html.read_text()
    assert page.count("<table>") == 4 and page.count("data:image/png;base64,") == 3
    assert (out / "returns.png").stat().st_size > 0 and (out / "inactive.png").exists()


def test_runs_table_gives_each_runs_wall_time(tmp_path):
    root = tmp_path / "study"
    write_run(root / "timed", "none", 0, wall=[40.0, 100.0])
    write_run(root / "untimed", "regrama", 0)
    done = report([root], tmp_path / "report")
    lines = done.markdown.splitlines()
    timed = next(x for x in lines if x.startswith(f"| `{root / 'timed'}`"))
    # 200 env steps in 100 s, the last record's wall time
    assert timed == f"| `{root / 'timed'}` | sac | {TASKS[0]} | 5 | 200 | 0:01:40 | 2.0 |"
    untimed = next(x for x in lines if x.startswith(f"| `{root / 'untimed'}`"))
    assert untimed.endswith("| 200 | – | – |")
    assert "before runs recorded their wall time" in done.markdown


def test_seed_bands_stay_within_the_seeds_range_and_match_the_normal_interval():
    # fractions near 0: mean ± 1.96 standard errors would cross 0 (0.1 - 0.196 < 0)
    few = np.array([[0.0], [0.0], [0.0], [0.0], [0.5]])
    m, low, high = seed_band(few)
    assert m[0] == pytest.approx(0.1) and 0.0 <= low[0] < m[0] < high[0] <= 0.5
    # many seeds: the percentile bootstrap approaches mean ± 1.96 s / sqrt(n)
    x = np.random.default_rng(3).normal(2.0, 1.0, size=(400, 2))
    m, low, high = seed_band(x, reps=4000)
    half = 1.96 * x.std(axis=0, ddof=1) / np.sqrt(len(x))
    np.testing.assert_allclose(high - m, half, rtol=0.15)
    np.testing.assert_allclose(m - low, half, rtol=0.15)


def test_per_unit_records_are_drawn_with_the_replaced_units_counted(tmp_path):
    root = tmp_path / "study"
    write_run(root / "units", "regrama", 0)
    folder = root / "units" / "units"
    folder.mkdir()
    rng = np.random.default_rng(0)
    counts = {"l1": np.zeros((5, 8), int), "l2": np.zeros((5, 4), int)}
    counts["l1"][:, 3] = 1  # unit 3 of l1 replaced before the first record (one mark)
    counts["l2"][1:, 0] = [1, 1, 2, 2]  # unit 0 of l2 replaced twice: marks at records 1 and 3
    for i, step in enumerate((100, 200, 300, 400, 500)):
        arrays = {}
        for g, n in (("l1", 8), ("l2", 4)):
            arrays[f"score/critic/grama/{g}"] = rng.random((5, n))
            arrays[f"score/critic/dormant/{g}"] = rng.random((5, n))
            arrays[f"resets/critic/{g}"] = counts[g][i][None].repeat(5, 0)
        np.savez(folder / f"{step}.npz", **arrays)
    done = report([root], tmp_path / "report")
    assert "## Units over training" in done.markdown
    assert "critic, grama, 12 units × 5 records, 3 unit replacements marked" in done.markdown
    assert (tmp_path / "report" / "units_0.png").stat().st_size > 0


def test_fewer_than_five_seeds_are_flagged(tmp_path):
    write_run(tmp_path / "s" / "a", "none", 0, seeds=(0, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = report([tmp_path / "s"], tmp_path / "out")
    assert "(fewer than 5 seeds)" in done.markdown
    assert done.notes == [f"sac on {TASKS[0]}: 3 seeds; its interval is too narrow to trust"]


def test_a_baseline_file_sits_beside_the_runs(study, tmp_path):
    base = tmp_path / "simba.csv"
    with open(base, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for s in SEEDS:
            w.writerow(["simba", TASKS[0], s, "avg_return", 200, 50 + s])
    with pytest.raises(ValueError, match=r"no rows of metric 'eval/episode_return'.*avg_return"):
        report([study], tmp_path / "r0", baselines=[base])
    done = report([study], tmp_path / "r1", baselines=[base], baseline_metric="avg_return")
    assert "| simba | 5 | 52.0 ± 1.4 |" in done.markdown


def test_bad_input_is_refused_and_names_the_fix(study, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        report([empty], tmp_path / "r")
    only_partial = tmp_path / "partial"
    write_run(only_partial / "a", "none", 0, finished=False)
    with pytest.raises(ValueError, match=r"none of the 1 runs .* has finished"):
        report([only_partial], tmp_path / "r")
    other = tmp_path / "other.csv"
    other.write_text("task,return\nx,1\n")
    with pytest.raises(ValueError, match=r"its columns are \['task', 'return'\].*exp_name"):
        report([study], tmp_path / "r", baselines=[other])
    lopsided = tmp_path / "lopsided"
    write_run(lopsided / "a", "none", 0)
    write_run(lopsided / "b", "regrama", 1)
    with pytest.raises(ValueError, match=r"'sac'.*no finished runs on \['test/point-mass-host'\]"):
        report([lopsided], tmp_path / "r", normalise_by="sac")
    with pytest.raises(ValueError, match="no option 'widht'"):
        report([study], tmp_path / "r", name_by=["sac.widht"])


def test_report_from_the_command_line(study, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["report", str(study), "--out", str(out), "--normalise-by", "sac"]) == 0
    printed = capsys.readouterr().out
    assert "## Normalised to sac" in printed and f"report: {out / 'report.html'}" in printed
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_methods_told_apart_by_an_option(tmp_path):
    for width in (64, 128):
        write_run(tmp_path / "s" / f"w{width}", "none", 0)
        cfg = json.loads((tmp_path / "s" / f"w{width}" / "config.json").read_text())
        cfg["config"]["sac"]["critic"]["width"] = width
        (tmp_path / "s" / f"w{width}" / "config.json").write_text(json.dumps(cfg))
    done = report([tmp_path / "s"], tmp_path / "out", name_by=["sac.critic.width"])
    assert "| sac width=64 |" in done.markdown and "| sac width=128 |" in done.markdown
    assert dataclasses.is_dataclass(done.runs[0].config)


def test_runs_that_differ_in_an_unnamed_option_are_not_mixed(tmp_path):
    for width in (64, 128):
        write_run(tmp_path / "s" / f"w{width}", "none", 0)
        cfg = json.loads((tmp_path / "s" / f"w{width}" / "config.json").read_text())
        cfg["config"]["sac"]["critic"]["width"] = width
        (tmp_path / "s" / f"w{width}" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"would be mixed.*--name-by sac\.critic\.width"):
        report([tmp_path / "s"], tmp_path / "out")
    # plotted against the option: one point per width, and the tables tell them apart
    done = report([tmp_path / "s"], tmp_path / "out", against=["sac.critic.width"])
    assert "| sac width=64 |" in done.markdown
    assert (tmp_path / "out" / "against_sac_critic_width.png").stat().st_size > 0
    with pytest.raises(ValueError, match="is not a number"):
        report([tmp_path / "s"], tmp_path / "out", against=["env"])


def test_normalised_scores_are_drawn_as_box_plots(study, tmp_path):
    done = report([study], tmp_path / "out", normalise_by="sac")
    assert "![normalised.png](normalised.png)" in done.markdown
    assert done.html.read_text().count("data:image/png;base64,") == 3


ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".test-artifacts"
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const shown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const tables = document.querySelectorAll('table').length;
  document.title = `images ${shown}/${images.length} tables ${tables}`;
});</script>"""


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, installed by the repository's script where it is missing."""
    script = ROOT / "scripts" / "install-chromium.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"Chromium cannot be installed here: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


def test_report_html_opens_in_a_real_browser(chromium, study, tmp_path):
    """Every figure of report.html decodes and every table is there, in headless Chromium; a
    screenshot is kept in .test-artifacts/."""
    done = report([study], tmp_path / "out", normalise_by="sac")
    probe = tmp_path / "out" / "probe.html"
    probe.write_text(done.html.read_text() + PROBE)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<title>images 3/3 tables 4</title>" in dom, dom[:500]  # runs, 2 tasks, normalised
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1200,2600", f"--screenshot={shot}", done.html.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
