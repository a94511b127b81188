"""The main job runs end to end (tiny settings) and writes what it promises."""

import json

import pytest

from agents.experiments.main_job import main

pytestmark = pytest.mark.usefixtures("quick_compiles")


def test_main_job_writes_runs_plot_and_table(tmp_path, capsys):
    out = tmp_path / "main"
    main(
        [
            "--out",
            str(out),
            "--env",
            "test/point-mass",
            "--steps",
            "600",
            "--seeds",
            "0",
            "--width",
            "16",
            "--learning-starts",
            "200",
            "--log-every",
            "200",
            "--reset-period",
            "50",
        ]
    )
    printed = capsys.readouterr().out
    assert "regrama" in printed and "final eval return" in printed
    for method in ("none", "regrama"):
        assert (out / method / "metrics.csv").exists() and (out / method / "summary.json").exists()
    assert (out / "comparison.png").stat().st_size > 10_000
    result = json.loads((out / "comparison.json").read_text())
    assert result["none"]["reset_sum"] == 0.0
    assert set(result) == {"none", "regrama"} and len(result["regrama"]["final_eval_return"]) == 1
