"""Whole-network baselines: shrink-and-perturb and full reset."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurosurgery._methods._whole import full_reset, shrink_and_perturb


class Net(eqx.Module):
    """A model with float, integer and non-array leaves."""

    mlp: eqx.nn.MLP
    norm: eqx.nn.LayerNorm
    steps: jax.Array
    half: jax.Array
    name: str = eqx.field(static=True)

    def __init__(self, key: jax.Array, width: int = 4):
        self.mlp = eqx.nn.MLP(3, 2, width, 1, key=key)
        self.norm = eqx.nn.LayerNorm(width)
        self.steps = jnp.array(7, jnp.int32)
        self.half = jnp.linspace(-1.0, 1.0, 3, dtype=jnp.bfloat16)
        self.name = "net"


OLD = Net(jax.random.key(0))
FRESH = Net(jax.random.key(1))


def _float_leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))


@settings(max_examples=25, deadline=None)
@given(
    shrink=st.sampled_from([0.0, 0.2, 0.4, 0.8, 1.0]),
    perturb=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 2.0]),
)
def test_shrink_and_perturb_matches_numpy(shrink, perturb):
    new = shrink_and_perturb(OLD, FRESH, shrink, perturb)
    for got, old, fresh in zip(
        _float_leaves(new), _float_leaves(OLD), _float_leaves(FRESH), strict=True
    ):
        assert got.dtype == old.dtype
        expected = shrink * np.asarray(old, np.float64) + perturb * np.asarray(fresh, np.float64)
        tol = 1e-2 if got.dtype == jnp.bfloat16 else 1e-6
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=tol, atol=tol)
    # Non-float leaves are kept from params.
    assert new.mlp.activation is OLD.mlp.activation
    assert new.name == "net" and int(new.steps) == 7


def test_limits_are_identity_and_full_reset():
    same = shrink_and_perturb(OLD, FRESH, 1.0, 0.0)
    for a, b in zip(_float_leaves(same), _float_leaves(OLD), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = shrink_and_perturb(OLD, FRESH, 0.0, 1.0)
    for a, b in zip(_float_leaves(fresh), _float_leaves(FRESH), strict=True):
        np.testing.assert_array_equal(a, b)


def test_full_reset_returns_fresh_arrays_and_keeps_other_leaves():
    old = eqx.tree_at(lambda n: n.steps, OLD, jnp.array(99, jnp.int32))
    new = full_reset(old, FRESH)
    for a, b in zip(_float_leaves(new), _float_leaves(FRESH), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new.steps) == 99  # integer leaves are not weights
    assert eqx.tree_equal(
        eqx.filter(new, eqx.is_inexact_array), eqx.filter(FRESH, eqx.is_inexact_array)
    )


def test_works_on_filtered_params_and_plain_dicts():
    params = eqx.filter(OLD, eqx.is_array)
    fresh = eqx.filter(FRESH, eqx.is_array)
    new = shrink_and_perturb(params, fresh, 0.5, 0.5)
    np.testing.assert_allclose(
        new.mlp.layers[0].weight,
        0.5 * np.asarray(params.mlp.layers[0].weight)
        + 0.5 * np.asarray(fresh.mlp.layers[0].weight),
        rtol=1e-6,
    )
    d = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    out = full_reset(d, {"w": jnp.full(3, 2.0), "b": jnp.ones(2)})
    np.testing.assert_array_equal(out["w"], 2.0)


def test_mismatched_networks_are_rejected_naming_the_path():
    wider = Net(jax.random.key(1), width=5)
    with pytest.raises(
        ValueError, match=r"fresh_params\.mlp\.layers\[0\]\.weight is float32\[5, 3\]"
    ):
        shrink_and_perturb(OLD, wider, 0.5, 0.1)
    with pytest.raises(ValueError, match="fresh_params does not match params"):
        full_reset(OLD, eqx.filter(FRESH, eqx.is_array).mlp)
    cast = eqx.tree_at(lambda n: n.half, FRESH, FRESH.half.astype(jnp.float32))
    with pytest.raises(
        ValueError, match=r"fresh_params\.half is float32\[3\] but params\.half is bfloat16"
    ):
        full_reset(OLD, cast)


@pytest.mark.parametrize(
    ("shrink", "perturb", "match"),
    [
        (-0.1, 0.1, r"shrink=-0\.1.*\[0, 1\.0\]"),
        (1.5, 0.1, r"shrink=1\.5"),
        (0.5, -0.01, r"perturb=-0\.01.*>= 0"),
        (0.5, float("nan"), "perturb=nan"),
        (np.float32(2.0), 0.1, "shrink=2.0"),
    ],
)
def test_bad_coefficients_are_rejected(shrink, perturb, match):
    with pytest.raises(ValueError, match=match):
        shrink_and_perturb(OLD, FRESH, shrink, perturb)


def test_jit_with_traced_coefficients_and_vmap_over_seeds():
    eager = shrink_and_perturb(OLD, FRESH, 0.4, 0.1)
    jitted = eqx.filter_jit(shrink_and_perturb)(
        OLD, FRESH, jnp.asarray(0.4, jnp.float32), jnp.asarray(0.1, jnp.float32)
    )
    for a, b in zip(_float_leaves(eager), _float_leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6)

    seeds = [eqx.filter(Net(jax.random.key(s)), eqx.is_array) for s in range(3)]
    fresh = [eqx.filter(Net(jax.random.key(10 + s)), eqx.is_array) for s in range(3)]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    shrinks = jnp.array([0.0, 0.5, 1.0], jnp.float32)
    batched = jax.jit(jax.vmap(lambda p, f, s: shrink_and_perturb(p, f, s, 1.0 - s)))(
        stack(seeds), stack(fresh), shrinks
    )
    for i in range(3):
        expected = shrink_and_perturb(
            seeds[i], fresh[i], float(shrinks[i]), 1.0 - float(shrinks[i])
        )
        got = jax.tree.map(lambda x, i=i: x[i], batched)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(
                np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6
            )
