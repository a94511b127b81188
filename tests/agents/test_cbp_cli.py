"""Continual backprop from the command line: a SAC run on test/point-mass, and its bad options."""

import numpy as np
import pytest

from agents.training import read_metrics
from agents.training.cli import main

from .test_cli import TINY


def test_sac_trains_with_cbp_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--seeds", "0", "--steps", "600", "--no-progress", "--sinks", "csv"]
    args += ["--reset.method", "cbp", "--reset.replacement-rate", "0.01", "--reset.maturity", "20"]
    assert main(["train", *TINY, *args, "--run-dir", str(run_dir)]) == 0
    curves = read_metrics(run_dir / "metrics.csv")
    layer = "members[0].net.layers[0].linear"
    mature = [v for _, v in curves[f"surgery/critic/mature/{layer}"][0] if np.isfinite(v)]
    assert mature and mature[-1] > 0  # units lived past maturity: CBP tracked their ages
    assert f"surgery/critic/reset/{layer}" in curves


@pytest.mark.parametrize(
    "args,message",
    [
        (["--reset.method", "cbp", "--reset.replacement-rate", "1.5"], "replacement_rate=1.5"),
        (["--reset.method", "cbp", "--reset.maturity", "-1"], "maturity=-1 is invalid"),
        (["--reset.method", "cbp", "--reset.decay", "1"], "decay=1.0 is invalid"),
        (["--reset.method", "cbp", "--reset.tau", "0.1"], "tau do not apply to the cbp strategy"),
        (
            ["--reset.method", "regrama", "--reset.maturity", "5"],
            "maturity do not apply to the regrama strategy",
        ),
    ],
)
def test_bad_cbp_options_fail_before_any_work(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--no-progress", "--run-dir", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()
