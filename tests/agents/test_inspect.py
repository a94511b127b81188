"""`neurosurgery inspect`: every metric on a run's checkpoint and replay data."""

import dataclasses
import shutil

import numpy as np
import pytest

from agents import train
from agents.reporting import inspect, jaccard, quadrants
from agents.reporting._inspect import DEFAULT_METRICS
from agents.training._checkpoint import read_header
from agents.training.cli import main

from .conftest import BASE

pytestmark = pytest.mark.usefixtures("quick_compiles")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "run"
    config = dataclasses.replace(BASE, steps=400, run_dir=str(path), sinks=("csv",))
    train(dataclasses.replace(config, keep_checkpoints=True))
    return path


def test_a_run_keeping_its_checkpoints_holds_each_one(run_dir):
    """With keep_checkpoints every checkpoint stays as checkpoints/<env step>.ckpt (BASE writes
    one every 200 steps): the last is the run's checkpoint, the earlier one its own state."""
    kept = run_dir / "checkpoints"
    assert sorted(p.name for p in kept.iterdir()) == ["200.ckpt", "400.ckpt"]
    assert [read_header(kept / f"{s}.ckpt")["env_steps"] for s in (200, 400)] == [200, 400]
    latest = (run_dir / "checkpoint.ckpt").read_bytes()
    assert (kept / "400.ckpt").read_bytes() == latest != (kept / "200.ckpt").read_bytes()


def test_jaccard_and_quadrants_by_hand():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 1], bool)
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert np.isnan(jaccard(np.zeros(3, bool), np.zeros(3, bool)))
    act = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])  # top 25 %: 6, 7
    grad = np.array([7.0, 6, 5, 4, 3, 2, 1, 7.5])  # top 25 %: units 0 and 7
    assert quadrants(act, grad) == {
        "high activation, high gradient": 1,  # unit 7
        "high activation, low gradient": 1,  # unit 6
        "low activation, high gradient": 1,  # unit 0
        "low activation, low gradient": 5,
    }


def test_inspect_a_checkpoint(run_dir, tmp_path):
    against = tmp_path / "copy.ckpt"
    shutil.copy(run_dir / "checkpoint.ckpt", against)
    got = inspect(run_dir, tmp_path / "out", against=against, batch_size=32)
    assert got.env_steps == 400 and got.seed == 0
    critic = got.inactive["critic"]
    assert set(critic) == set(DEFAULT_METRICS) and "saturation_tanh" not in critic
    for metric, layers in critic.items():
        ratios = [v for k, v in layers.items() if k != "network"]
        assert all(0 <= v <= 1 for v in ratios), metric
        # equal-width layers: the network's ratio is the mean of the layers'
        assert layers["network"] == pytest.approx(np.mean(ratios)), metric
    assert sum(got.quadrants["critic"].values()) == 2 * 16  # twin critic: one layer of 16 each
    for metric, change in got.pruned["critic"].items():
        if critic[metric]["network"] == 0:
            assert change == 0.0, metric  # nothing flagged: nothing pruned
    # the same checkpoint again: every flagged unit is still flagged
    assert got.persist is not None
    for metric, still in got.persist["critic"].items():
        assert still == 1.0 or (np.isnan(still) and critic[metric]["network"] == 0), metric
    assert {p.name for p in got.files} == {"inspect.md", "inspect.json", "quadrants.png"}
    assert "## critic" in got.markdown and "Jaccard" in got.markdown


def test_everything_flagged_prunes_every_unit(run_dir, tmp_path):
    got = inspect(run_dir, tmp_path, metrics=("grama", "dormant"), tau=1e30, batch_size=32)
    assert got.inactive["critic"]["grama"]["network"] == 1.0
    assert got.jaccard["critic"] == {"grama & dormant": 1.0}
    assert got.pruned["critic"]["grama"] == got.pruned["critic"]["dormant"] != 0.0


def test_bad_input(run_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"network 'policy' is not one of this agent's"):
        inspect(run_dir, tmp_path, networks=("policy",), metrics=("grama",))
    with pytest.raises(ValueError, match=r"seed_index 5: the run has seeds \[0, 1\]"):
        inspect(run_dir, tmp_path, seed_index=5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inspect(run_dir, tmp_path, against=tmp_path / "none.ckpt", metrics=("grama",))
    assert main(["inspect", str(run_dir), "--metrics", "grama", "--out", str(tmp_path)]) == 0
    assert "written:" in capsys.readouterr().out
    assert main(["inspect", str(run_dir), "--metrics", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
