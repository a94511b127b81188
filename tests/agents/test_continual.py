"""The continual-learning demonstration runs end to end and writes a complete run folder."""

import csv
import math

import pytest

from agents.experiments import continual

pytestmark = pytest.mark.usefixtures("quick_compiles")

NETWORKS = {"mlp", "bronet"}


def test_quick_demo_writes_run_folder(tmp_path, capsys):
    out = continual.main(["--quick", "--out", str(tmp_path / "run")])
    cfg = continual.QUICK
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_run = cfg.tasks * cfg.updates_per_task // cfg.measure_every
    assert len(rows) == len(NETWORKS) * len(continual.STRATEGIES) * len(cfg.seeds) * per_run
    assert {r["network"] for r in rows} == NETWORKS
    assert {r["strategy"] for r in rows} == set(continual.STRATEGIES)
    ratios = [c for c in rows[0] if "@" in c]
    assert len(ratios) == len(continual.METRICS) * len(continual.TAUS)
    for r in rows:
        for key in ("train_loss", "eval_loss"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0.0
        for key in [*ratios, "reset_fraction"]:
            assert 0.0 <= float(r[key]) <= 1.0
        if r["strategy"] == "none":
            assert float(r["reset_fraction"]) == 0.0
        # GraMa's threshold is a subset of the next: inactive ratios grow with τ
        for name in ("grama", "grama_activation", "grama_weight", "dormant"):
            values = [float(r[continual.column(name, tau)]) for tau in continual.TAUS]
            assert values == sorted(values)
    # the losses fall within the first task
    first = [r for r in rows if r["task"] == "0" and r["strategy"] == "none"]
    assert float(first[-1]["eval_loss"]) < float(first[0]["train_loss"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    expected = ["loss.png", "metrics.png", *(f"inactive_{m.name}.png" for m in continual.METRICS)]
    assert pngs == sorted(expected)
    assert all((out / p).stat().st_size > 10_000 for p in pngs)
    table = (out / "summary.txt").read_text()
    assert "final-task loss" in table and "regrama" in table
    assert table in capsys.readouterr().out
