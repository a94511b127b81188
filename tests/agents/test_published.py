"""Published learning curves shipped as data: they load as published, name their gaps, and
`neurosurgery report` draws and tabulates them beside our runs at the env steps both have."""

import csv
import json

import numpy as np
import pytest

import envs
from agents import TrainConfig
from agents.reporting import (
    check_published,
    mean_band,
    published_algorithms,
    published_curve,
    published_tasks,
    read_rows,
    report,
)
from agents.training._config import encode
from agents.training._trainer import program_options
from agents.training.cli import main

TASK = "dmc/cheetah-run"
SEEDS = (0, 1, 2, 3, 4)


def test_the_curves_load_as_published():
    assert published_algorithms() == ("BRO", "BRO_fast", "SAC")
    for algorithm in published_algorithms():
        tasks = published_tasks(algorithm)
        assert len(tasks) == 14 and set(tasks) <= set(envs.names())
    bro = published_curve("BRO_fast", TASK)
    assert bro.seeds == tuple(range(10)) and bro.steps == tuple(range(25_000, 1_000_001, 25_000))
    assert not np.isnan(bro.returns).any()
    # values read off the published files by hand: trainingdata.zip BRO_fast/cheetah-run.npy
    # [0, 0] and tdmpc2 results/sac/cheetah-run.csv (step 100000, seed 1)
    assert bro.returns[0, 0] == 29.51
    sac = published_curve("SAC", TASK)
    assert sac.seeds == (1, 2, 3) and sac.steps == tuple(range(0, 1_000_001, 100_000))
    assert sac.at(100_000)[0] == 362.4
    # row i of BRO's files is env step 25,000 (i + 1): BRO's curves (replay ratio 10) drop most
    # at the first evaluations after its full resets at 250k, 500k and 750k (rows 10, 20, 30)
    for task in ("cheetah-run", "dog-run", "dog-stand", "dog-trot", "dog-walk", "hopper-hop"):
        c = published_curve("BRO", f"dmc/{task}")
        m = c.returns.mean(axis=0)
        worst = np.argsort(np.diff(m) / m[:-1])[:3] + 1
        assert [c.steps[i] for i in sorted(worst)] == [275_000, 525_000, 775_000], task
    # and the last row is the 1M scores of the BRO paper's table (10 seeds; RR 10 / RR 2)
    paper = {"dog-stand": (968, 967), "dog-walk": (928, 931), "dog-run": (477, 375)}
    paper |= {"humanoid-stand": (937, 920), "humanoid-walk": (909, 673), "humanoid-run": (297, 205)}
    for task, scores in paper.items():
        for algorithm, score in zip(("BRO", "BRO_fast"), scores, strict=True):
            assert published_curve(algorithm, f"dmc/{task}").at(1_000_000).mean() == (
                pytest.approx(score, abs=0.5)
            )


def test_mean_band_is_the_bootstrap_of_the_seed_mean():
    c = published_curve("BRO_fast", TASK)
    mean, low, high = mean_band(c, seed=3)
    np.testing.assert_allclose(mean, c.returns.mean(axis=0))
    assert (low <= mean).all() and (mean <= high).all()
    # the 95 % band of a mean of 10 seeds: about 1.96 standard errors each side
    se = c.returns.std(axis=0, ddof=1) / np.sqrt(10)
    np.testing.assert_allclose(high - low, 2 * 1.96 * se, rtol=0.3)


def test_bad_names_and_missing_points_are_refused_by_name():
    with pytest.raises(ValueError, match=r"no published curves of 'BROfast'.*BRO, BRO_fast, SAC"):
        check_published("BROfast")
    with pytest.raises(ValueError, match=r"SAC has no published curve on dmc/reacher-easy.*"):
        check_published("SAC", "dmc/reacher-easy")
    with pytest.raises(KeyError, match=r"no published point at env step 30000.*every 25,000"):
        published_curve("BRO", TASK).at(30_000)
    with pytest.raises(ValueError, match=r"published: BRO has no published curve on test/point"):
        TrainConfig(env="test/point-mass", published="BRO").validate()
    TrainConfig(env=TASK, published="BRO_fast").validate()
    # a report-only option: it is not part of what a run's program depends on
    assert "published" not in program_options(TrainConfig(env=TASK, published="SAC"))


def write_run(folder, steps, value, published=None):
    """A finished run folder with evaluation returns `value(step, seed)` at `steps`."""
    folder.mkdir(parents=True)
    config = TrainConfig(agent="bro", env=TASK, seeds=SEEDS, steps=steps[-1], published=published)
    (folder / "config.json").write_text(json.dumps({"config": encode(config), "versions": {}}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "seed", "name", "value"])
        for step in steps:
            for s in SEEDS:
                w.writerow([step, s, "eval/episode_return", value(step, s)])
    (folder / "summary.json").write_text(json.dumps({"env_steps": steps[-1]}))


def iqm(x):
    x = np.sort(x)
    cut = len(x) // 4
    return x[cut : len(x) - cut].mean()


def test_report_puts_published_curves_beside_ours_at_common_steps(tmp_path, capsys):
    def value(step, seed):
        return step / 100 + 10 * seed

    steps = (25_000, 50_000, 60_000, 100_000)
    write_run(tmp_path / "study" / "bro", steps, value, published="BRO_fast")
    done = report([tmp_path / "study"], tmp_path / "out")
    md = done.markdown
    assert "## Beside published curves" in md
    bro = published_curve("BRO_fast", TASK)
    for step in (25_000, 50_000):
        ours = iqm(np.array([value(step, s) for s in SEEDS]))
        theirs = iqm(bro.at(step))
        line = next(x for x in md.splitlines() if x.startswith(f"| {step:,} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1].startswith(f"{ours:.4g} [") and cells[2].startswith(f"{theirs:.4g} [")
    # 60,000 is not a published step: named, not compared, nothing interpolated
    assert "| 60,000 |" not in md
    assert "Evaluations of ours with no published point (not compared): 60,000." in md
    assert "BRO_fast publishes 10 seeds every 25,000 env steps from 25,000 to 1,000,000." in md
    rows = read_rows(tmp_path / "out" / "published.csv")
    assert {r.exp_name for r in rows} == {"BRO_fast (published)"} and len(rows) == 400

    assert (tmp_path / "out" / "returns.png").stat().st_size > 0

    # on the command line, a published curve the runs do not name; SAC has 3 seeds: flagged
    out = tmp_path / "cli"
    assert main(["report", str(tmp_path / "study"), "--out", str(out), "--published", "SAC"]) == 0
    printed = capsys.readouterr().out
    assert "SAC, published (tdmpc2@e9f5932, 3 seeds)" in printed
    assert "No evaluation step of ours is one of them." not in printed.split("SAC publishes")[0]
    assert "fewer than 5 seeds" in printed
    assert main(["report", str(tmp_path / "study"), "--out", str(out), "--published", "X"]) == 2
    assert "no published curves of 'X'" in capsys.readouterr().err


def test_a_run_with_no_published_step_says_so(tmp_path):
    write_run(tmp_path / "s" / "bro", (3_000, 6_000), lambda step, s: 1.0 + s, published="BRO")
    md = report([tmp_path / "s"], tmp_path / "out").markdown
    assert "BRO publishes 10 seeds every 25,000 env steps from 25,000 to 1,000,000. No " in md
    assert "no published point (not compared): 3,000, 6,000." in md
    with pytest.raises(ValueError, match=r"--published SAC: it has no curve on the runs' tasks"):
        other = tmp_path / "o"
        (other / "r").mkdir(parents=True)
        config = TrainConfig(env="test/point-mass", seeds=SEEDS, steps=100)
        (other / "r" / "config.json").write_text(json.dumps({"config": encode(config)}))
        (other / "r" / "metrics.csv").write_text("env_steps,seed,name,value\n")
        (other / "r" / "summary.json").write_text(json.dumps({"env_steps": 100}))
        report([other], tmp_path / "out2", published=["SAC"])
