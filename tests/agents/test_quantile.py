"""The sorted quantile-Huber loss equals the pairwise definition in value and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.algorithms._quantile import quantile_huber, quantile_huber_pairwise
from tests.examples import examples

#: (n predicted quantiles, m targets): few shapes, so that examples share compiled functions
SHAPES = [(1, 1), (5, 7), (7, 3), (32, 32), (10, 100)]
KAPPAS = [0.1, 1.0, 2.5]


@functools.cache
def value_and_grad(fn, kappa: float):
    """jitted (loss, d loss / d pred) of `fn` for fixed targets."""
    return jax.jit(jax.value_and_grad(lambda p, t: fn(p, jax.lax.stop_gradient(t), kappa)))


def numpy_loss(pred: np.ndarray, target: np.ndarray, kappa: float) -> float:
    """The loss written out pair by pair, in float64."""
    total = 0.0
    for i, p in enumerate(pred):
        tau = (i + 0.5) / len(pred)
        for t in target:
            u = t - p
            huber = 0.5 * u**2 if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
            total += abs(tau - (u < 0)) * huber / kappa / len(target)
    return total


@st.composite
def problems(draw):
    """Predictions and targets whose spread is 1e-4 to 100 κ about a location up to 400 κ away
    from 0, all scaled by 1e-3 to 1e3 (the loss scales with them); with ties among the targets,
    predictions equal to some targets, and targets exactly κ away from a prediction."""
    n, m = draw(st.sampled_from(SHAPES))
    kappa = draw(st.sampled_from(KAPPAS))
    spread = kappa * draw(st.sampled_from([1e-4, 1e-2, 1.0, 10.0, 100.0]))
    loc = kappa * draw(st.sampled_from([0.0, 1.0, -50.0, 400.0]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    target = loc + spread * rng.standard_normal(m)
    pred = loc + spread * rng.standard_normal(n)
    if m > 2 and draw(st.booleans()):
        target[: m // 2] = target[m - 1]  # ties
    if draw(st.booleans()):
        pred[0] = target[rng.integers(m)]  # u = 0
    if n > 1 and draw(st.booleans()):
        pred[1] = target[rng.integers(m)] - kappa  # u = κ, the Huber corner
    return scale * pred, scale * target, scale * kappa


def relative_error(got, want) -> float:
    """Largest difference relative to the largest entry of `want`."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def assert_sorted_equals_pairwise(problem, dtype, tolerance: float) -> None:
    """Value and gradient of both forms in `dtype`, equal to `tolerance` (relative)."""
    pred, target, kappa = problem
    p, t = jnp.asarray(pred, dtype), jnp.asarray(target, dtype)
    v_fast, g_fast = value_and_grad(quantile_huber, kappa)(p, t)
    v_ref, g_ref = value_and_grad(quantile_huber_pairwise, kappa)(p, t)
    assert v_fast.dtype == g_fast.dtype == dtype
    assert relative_error(v_fast, v_ref) <= tolerance
    assert relative_error(g_fast, g_ref) <= tolerance


@settings(max_examples=examples(40, 15), deadline=None)
@given(problems())
def test_sorted_equals_pairwise_in_float64(problem):
    with jax.enable_x64(True):
        assert_sorted_equals_pairwise(problem, jnp.float64, 1e-10)


@pytest.mark.newest
@settings(max_examples=examples(40, 15), deadline=None)
@given(problems())
def test_sorted_equals_pairwise_in_float32(problem):
    assert_sorted_equals_pairwise(problem, jnp.float32, 1e-5)


@pytest.mark.parametrize("kappa", [1.0, 0.5])
def test_both_match_the_pairs_written_out(kappa):
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=7), rng.normal(size=5) * 2
    want = numpy_loss(pred, target, kappa)
    p, t = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    for fn in (quantile_huber, quantile_huber_pairwise):
        np.testing.assert_allclose(float(fn(p, t, kappa)), want, rtol=1e-5)


def test_gradient_by_finite_differences():
    """The custom gradient against central differences of the loss itself (float64)."""
    rng = np.random.default_rng(3)
    pred, target, kappa = rng.normal(size=6), rng.normal(size=9) * 1.5, 0.7
    with jax.enable_x64(True):
        _, grad = value_and_grad(quantile_huber, kappa)(jnp.asarray(pred), jnp.asarray(target))
        h = 1e-6
        for i in range(6):
            up, down = pred.copy(), pred.copy()
            up[i] += h
            down[i] -= h
            fd = (numpy_loss(up, target, kappa) - numpy_loss(down, target, kappa)) / (2 * h)
            assert abs(float(grad[i]) - fd) < 1e-7


def test_twin_predictions_under_vmap_and_jit():
    """Both critics against one target under vmap (the targets sorted once), batched."""
    key_p, key_t = jax.random.split(jax.random.key(0))
    pred = jax.random.normal(key_p, (4, 2, 10))
    target = jax.random.normal(key_t, (4, 10)) * 3

    def loss(fn, pred):
        one = lambda q, t: jnp.sum(jax.vmap(lambda p: fn(p, t, 1.0))(q))
        return jnp.mean(jax.vmap(one)(pred, target))

    fast = jax.jit(jax.value_and_grad(functools.partial(loss, quantile_huber)))(pred)
    ref = jax.value_and_grad(functools.partial(loss, quantile_huber_pairwise))(pred)
    assert relative_error(fast[0], ref[0]) <= 1e-5
    assert relative_error(fast[1], ref[1]) <= 1e-5


@pytest.mark.newest
def test_refuses_a_gradient_with_respect_to_the_targets():
    p, t = jnp.zeros(3), jnp.ones(4)
    with pytest.raises(TypeError, match="stop_gradient"):
        jax.grad(lambda t: quantile_huber(p, t))(t)
    # the pairwise definition does give one
    assert jax.grad(lambda t: quantile_huber_pairwise(p, t))(t).shape == (4,)


def test_a_nan_target_gives_a_nan_loss():
    """As the pairwise loss does, so that the trainer's finiteness check sees it."""
    target = jnp.asarray([0.0, jnp.nan, 1.0])
    value, _ = value_and_grad(quantile_huber, 1.0)(jnp.zeros(4), target)
    assert np.isnan(float(value)) and np.isnan(float(quantile_huber_pairwise(jnp.zeros(4), target)))


def test_refuses_a_non_positive_kappa():
    with pytest.raises(ValueError, match="kappa must be > 0"):
        quantile_huber(jnp.zeros(3), jnp.ones(4), 0.0)
