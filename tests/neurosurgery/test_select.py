"""Selection of flagged units: threshold, bottom fraction, capped threshold, inactive ratios."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from neurosurgery._methods._select import (
    bottom_fraction,
    capped_threshold,
    inactive_ratio,
    network_inactive_ratio,
    threshold,
)

FAST = settings(max_examples=25, deadline=None)

# Scores on a coarse grid so that ties are common.
score_rows = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.sampled_from([0.0, 0.0, 0.01, 0.5, 1.0, 1.0, 2.0, 3.5]),
)
# Percentages, so the expected count floor(p * n / 100) is exact integer arithmetic.
percents = st.integers(0, 100)


def _bottom_reference(scores: np.ndarray, k: int) -> np.ndarray:
    """Flag the k lowest per row, ties by index, with a plain Python sort."""
    out = np.zeros(scores.shape, dtype=bool)
    for idx in np.ndindex(scores.shape[:-1]):
        row = scores[idx]
        order = sorted(range(row.shape[0]), key=lambda i: (row[i], i))
        out[idx][order[:k]] = True
    return out


def test_threshold_by_hand():
    scores = jnp.array([0.0, 0.01, 0.02, 1.5, 0.0], dtype=jnp.float32)
    np.testing.assert_array_equal(threshold(scores, 0.0), [True, False, False, False, True])
    np.testing.assert_array_equal(threshold(scores, 0.02), [True, True, True, False, True])
    np.testing.assert_array_equal(threshold(scores, 0), [True, False, False, False, True])


def test_threshold_ignores_nan():
    scores = jnp.array([jnp.nan, 0.0], dtype=jnp.float32)
    np.testing.assert_array_equal(threshold(scores, 1.0), [False, True])


def test_bottom_fraction_by_hand_with_ties():
    scores = jnp.array([[0.5, 0.1, 0.1, 0.9, 0.1], [3.0, 2.0, 1.0, 0.0, 4.0]], dtype=jnp.float32)
    # floor(0.4 * 5) = 2: the two lowest, ties broken by index (units 1 and 2, not 4).
    expected = [[False, True, True, False, False], [False, False, True, True, False]]
    np.testing.assert_array_equal(bottom_fraction(scores, 0.4), expected)
    # floor(0.5 * 5) = 2 as well.
    np.testing.assert_array_equal(bottom_fraction(scores, 0.5), expected)
    assert not bottom_fraction(scores, 0.0).any()
    assert bottom_fraction(scores, 1.0).all()


def test_bottom_fraction_decimal_fraction_counts_exactly():
    scores = jnp.arange(100, dtype=jnp.float32)
    # 0.29 * 100 is 28.999999999999996 in floating point; a percentage means 29 units.
    assert int(bottom_fraction(scores, 0.29).sum()) == 29
    assert int(bottom_fraction(scores, 0.07).sum()) == 7
    assert int(bottom_fraction(scores[:10], 0.3).sum()) == 3


@FAST
@given(scores=score_rows, percent=percents)
def test_bottom_fraction_matches_sort_reference(scores, percent):
    k = percent * scores.shape[-1] // 100
    got = np.asarray(bottom_fraction(jnp.asarray(scores), percent / 100))
    np.testing.assert_array_equal(got, _bottom_reference(scores, k))


@FAST
@given(scores=score_rows, tau=st.sampled_from([0.0, 0.01, 0.5, 1.0, 5.0]), percent=percents)
def test_capped_threshold_matches_reference(scores, tau, percent):
    k = percent * scores.shape[-1] // 100
    below = scores <= tau
    expected = np.zeros(scores.shape, dtype=bool)
    for idx in np.ndindex(scores.shape[:-1]):
        row = scores[idx]
        flagged = sorted(np.flatnonzero(below[idx]), key=lambda i: (row[i], i))
        expected[idx][flagged[:k]] = True
    got = np.asarray(capped_threshold(jnp.asarray(scores), tau, percent / 100))
    np.testing.assert_array_equal(got, expected)
    # Never more than the threshold alone, never more than the cap.
    assert not (got & ~below).any()
    assert (got.sum(axis=-1) <= k).all()


def test_capped_threshold_paper_setting():
    # 5% cap on 40 units: at most 2 flagged, the lowest two of the five below tau = 0.
    scores = jnp.ones(40, dtype=jnp.float32).at[jnp.array([3, 7, 11, 20, 30])].set(0.0)
    got = np.asarray(capped_threshold(scores, 0.0, 0.05))
    np.testing.assert_array_equal(np.flatnonzero(got), [3, 7])


def test_inactive_ratios_by_hand():
    a = jnp.array([[True, False, False, False], [True, True, False, False]])
    b = jnp.array([[True, True], [False, False]])
    np.testing.assert_allclose(inactive_ratio(a), [0.25, 0.5])
    # Weighted by unit count: (1 + 2) / 6 and (2 + 0) / 6.
    np.testing.assert_allclose(network_inactive_ratio([a, b]), [3 / 6, 2 / 6], rtol=1e-6)
    np.testing.assert_allclose(network_inactive_ratio({"a": a, "b": b}), [3 / 6, 2 / 6], rtol=1e-6)
    assert network_inactive_ratio([a[0]]).shape == ()


def test_network_inactive_ratio_needs_masks():
    with pytest.raises(ValueError, match="no masks"):
        network_inactive_ratio([])


@pytest.mark.parametrize("tau", [-0.1, -1, float("nan"), np.float32(-0.5)])
def test_negative_tau_rejected(tau):
    scores = jnp.ones(4, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"tau=.*>= 0"):
        threshold(scores, tau)
    with pytest.raises(ValueError, match="tau="):
        capped_threshold(scores, tau, 0.5)


@pytest.mark.parametrize("fraction", [-0.01, 1.5, 50, float("nan")])
def test_fraction_outside_unit_interval_rejected(fraction):
    scores = jnp.ones(4, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"fraction=.*\[0, 1\].*p / 100"):
        bottom_fraction(scores, fraction)
    with pytest.raises(ValueError, match=r"max_fraction=.*\[0, 1\]"):
        capped_threshold(scores, 0.0, fraction)


def test_jit_and_vmap_with_traced_parameters(getkey):
    scores = jax.random.uniform(getkey(), (3, 16), dtype=jnp.float32)
    eager = capped_threshold(scores, 0.5, 0.25)
    jitted = jax.jit(capped_threshold)(scores, jnp.float32(0.5), jnp.float32(0.25))
    np.testing.assert_array_equal(eager, jitted)
    # vmap over members and over per-member fractions.
    fracs = jnp.array([0.0, 0.25, 1.0], dtype=jnp.float32)
    per_member = jax.vmap(bottom_fraction)(scores, fracs)
    np.testing.assert_array_equal(per_member.sum(axis=-1), [0, 4, 16])
    taus = jnp.array([0.0, 0.5, 2.0], dtype=jnp.float32)
    np.testing.assert_array_equal(jax.vmap(threshold)(scores, taus), scores <= taus[:, None])


def test_rules_apply_to_dicts_of_scores_and_refuse_the_score_pair():
    import neurosurgery as ns

    scores = {"a": jnp.asarray([0.0, 0.5, 2.0]), "b": jnp.asarray([[1.0, 0.0], [0.2, 0.1]])}
    masks = ns.threshold(scores, 0.2)
    np.testing.assert_array_equal(masks["a"], [True, False, False])
    np.testing.assert_array_equal(masks["b"], [[False, True], [True, True]])
    np.testing.assert_array_equal(
        ns.bottom_fraction(scores, 0.5)["b"], [[False, True], [False, True]]
    )
    np.testing.assert_array_equal(ns.capped_threshold(scores, 1.0, 0.34)["a"], [True, False, False])
    assert ns.Selection("fraction", fraction=0.5)(scores).keys() == scores.keys()
    with pytest.raises(TypeError, match=r"\(scores, state\)`: unpack it first"):
        ns.threshold((scores, ns.EmptyState()), 0.1)
    with pytest.raises(TypeError, match=r"\(scores, state\)"):
        ns.Selection()((scores, ns.EmptyState()))
