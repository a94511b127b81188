"""The numerical helpers of the benchmark scripts (which are scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    """A benchmark script as a module, its folder importable (as when it runs: `_timing`)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jitter_ceiling_by_hand():
    barrier = _load("bench_dmc_barrier")
    # Loop A: passes of 1 and 1; loop B: 1 and 3. Whatever the pairing, the maxima are 1 and 3
    # (mean 2) and the mean pass is 6 / 4 = 1.5: a barrier keeps 1.5 / 2 = 0.75.
    assert barrier.jitter_ceiling([[1.0, 1.0], [1.0, 3.0]]) == pytest.approx(0.75)
    # Identical constant passes: no jitter, no loss. Unequal lengths use the common prefix.
    assert barrier.jitter_ceiling([[2.0] * 5, [2.0] * 7]) == pytest.approx(1.0)


def test_jitter_ceiling_matches_numpy_pairing():
    barrier = _load("bench_dmc_barrier")
    rng = np.random.default_rng(3)
    passes = [rng.exponential(1.0, 50).tolist(), rng.exponential(1.0, 60).tolist()]
    pair = np.random.default_rng(0)  # the helper's own pairing (seed 0), redone here
    a = pair.permutation(np.asarray(passes[0][:50]))
    b = pair.permutation(np.asarray(passes[1][:50]))
    expected = np.concatenate([a, b]).mean() / np.maximum(a, b).mean()
    assert barrier.jitter_ceiling(passes) == pytest.approx(expected, rel=1e-12)
    assert 0.5 < expected < 1.0


def test_env_benchmark_figure(tmp_path):
    bench = _load("bench_envs")
    path = tmp_path / "envs.png"
    throughput = {
        "a (MJX)": {1: 10.0, 16: 150.0, 64: 500.0},
        "dmc/x (2 workers)": {1: 3e3, 16: 1e4},
    }
    scaling = {"dmc/cheetah-run": {16: (0.42, 0.63), 64: (0.73, 0.86)}}
    bench.plot(throughput, scaling, str(path), "title")
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1] > 300


def test_step_breakdown_table_and_figure_of_the_committed_figures(tmp_path):
    """The figures on the training page: every configuration's parts add up to its wall time
    (`rest` is what is left), the limit is the env step plus the updates, and the table and
    the stacked bar are drawn from them."""
    import json

    bench = _load("bench_step_breakdown")
    data = json.loads((ROOT / "docs" / "figures" / "step-breakdown.json").read_text())
    results = data["results"]
    assert {(r["agent"], r["width"]) for r in results} >= {("sac", 64), ("bro", 64), ("dacer", 64)}
    for r in results:
        parts = [v for v in r["parts_ms"].values() if v is not None]
        assert sum(parts) == pytest.approx(r["wall_ms"], rel=1e-9)
        assert r["rest_fraction"] == pytest.approx(r["parts_ms"]["rest"] / r["wall_ms"])
        assert r["limit_fraction"] == pytest.approx(r["limit_ms"] / r["wall_ms"])
    text = bench.table(results)
    assert "update, optimistic_actor" in text and "rest / wall" in text
    path = tmp_path / "breakdown.png"
    bench.plot(results, str(path), data["title"])
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]


def test_released_bro_schedule_of_full_resets():
    bench = _load("bench_bro_vs_released")
    assert bench.full_resets(2) == (15_000,)
    assert bench.full_resets(10)[:3] == (15_000, 50_000, 250_000)


def test_the_released_bro_results_become_tidy_rows(tmp_path):
    curve = _load("released_bro_curve")
    (tmp_path / "1.txt").write_text("25000 12.5\n50000 80.0\n")
    (tmp_path / "0.txt").write_text("25000 3.0\n")
    rows = curve.tidy_rows(tmp_path, "walker-run", "bro-released-w64")
    assert [(r["seed"], r["env_step"], r["value"]) for r in rows] == [
        (0, 25000, 3.0),
        (1, 25000, 12.5),
        (1, 50000, 80.0),
    ]
    assert {(r["exp_name"], r["env_name"], r["metric"]) for r in rows} == {
        ("bro-released-w64", "dmc/walker-run", "eval/episode_return")
    }
    with pytest.raises(SystemExit, match="no result files"):
        curve.tidy_rows(tmp_path / "empty", "walker-run", "x")
