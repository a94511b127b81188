"""The numerical helpers of the benchmark scripts (which are scripts, not a package)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
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
