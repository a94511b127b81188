"""The report's statistics against values computed by hand and with scipy."""

import warnings

import numpy as np
import pytest
import scipy.stats

from agents.reporting import (
    FewSeedsWarning,
    iqm,
    mean,
    normalised,
    stratified_bootstrap,
)


def test_iqm_of_small_arrays_by_hand():
    # 8 values: cut 2 from each end, mean of the middle four
    assert iqm(np.array([9.0, 1, 2, 3, 4, 5, 6, 100])) == pytest.approx((3 + 4 + 5 + 6) / 4)
    # 5 values: cut 1 from each end
    assert iqm(np.array([[10.0, 0], [1, 2], [3, 0]])) == pytest.approx((1 + 2 + 3 + 0) / 4)
    assert iqm(np.array([7.0])) == 7.0
    with pytest.raises(ValueError, match="no scores"):
        iqm(np.array([]))


@pytest.mark.parametrize("n", [4, 5, 7, 10, 13])
def test_iqm_is_scipys_trimmed_mean(n):
    x = np.random.default_rng(n).normal(size=n)
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-12)


def test_stratified_bootstrap_resamples_runs_within_each_task():
    """Recomputed with an independent loop over the same draws: a replicate keeps every task
    and draws its runs with replacement within the task."""
    scores = np.random.default_rng(0).normal(size=(6, 3)) + np.arange(3)
    got = stratified_bootstrap(scores, mean, reps=500, seed=4)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 6, size=(500, 6, 3))
    reps = [
        np.mean([scores[idx[r, i, t], t] for i in range(6) for t in range(3)]) for r in range(500)
    ]
    low, high = np.quantile(reps, [0.025, 0.975])
    assert got.value == pytest.approx(scores.mean())
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.low < got.value < got.high


def test_bootstrap_is_reproducible_from_its_seed_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few, many = rng.normal(size=(5, 2)), rng.normal(size=(200, 2))
    a, b = stratified_bootstrap(few, seed=3), stratified_bootstrap(few, seed=3)
    assert a == b and a != stratified_bootstrap(few, seed=4)
    wide, narrow = a.high - a.low, stratified_bootstrap(many, seed=3)
    assert narrow.high - narrow.low < wide / 2


def test_fewer_than_five_seeds_warns_and_bad_input_is_refused():
    with pytest.warns(FewSeedsWarning, match="3 runs per task"):
        stratified_bootstrap(np.ones((3, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_bootstrap(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\(runs, tasks\)"):
        stratified_bootstrap(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        stratified_bootstrap(np.array([[1.0], [np.nan], [2], [3], [4]]))
    with pytest.raises(ValueError, match="level"):
        stratified_bootstrap(np.ones((5, 1)), level=95)


def test_normalised_scores_by_a_known_baseline():
    # two tasks; the baseline's means are 100 and 10
    baseline = np.array([[90.0, 8], [110, 12]])
    method = np.array([[120.0, 13], [100, 11], [140, 12]])
    # per seed: mean over tasks of score / baseline mean
    per_seed = np.array([(1.2 + 1.3) / 2, (1.0 + 1.1) / 2, (1.4 + 1.2) / 2])
    r = normalised(method, baseline)
    assert (r.mean, r.std, r.seeds) == pytest.approx((per_seed.mean(), per_seed.std(), 3))
    assert str(r) == f"{per_seed.mean():.2f} ± {per_seed.std():.2f}"
    assert normalised(baseline, baseline).mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same tasks"):
        normalised(method, baseline[:, :1])
    with pytest.raises(ValueError, match="mean score is 0 on task"):
        normalised(method, np.array([[1.0, 0], [2, 0]]))
