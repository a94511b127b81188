"""ReBorn splits: the split against numpy, function preservation on generated networks
(hypothesis), and bad options."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgery as ns
from tests.examples import examples


def dead(model, layer, units):
    """`model` with `units` of `layers[layer]` dead: a bias far below any pre-activation."""
    bias = model.layers[layer].bias.at[np.asarray(units)].set(-100.0)
    return eqx.tree_at(lambda m: m.layers[layer].bias, model, bias)


def test_split_against_numpy():
    """Receivers (dormant, in index order) take the incoming rows of the most active units, and
    the donors' outgoing columns are shared `share` / `1 − share`."""
    make = lambda k: eqx.nn.MLP(3, 2, 6, 1, key=k)
    model = dead(make(jax.random.key(0)), 0, [1, 4])
    anatomy = ns.anatomy(model, jnp.zeros(3))
    x = jax.random.normal(jax.random.key(1), (32, 3))
    _, obs = ns.observe(anatomy, model, lambda y: jnp.sum(y**2), x)
    reborn = ns.ReBorn(share=0.25, schedule=ns.Schedule(every=1))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    opt_state = jax.tree.map(lambda a: a + 1 if eqx.is_inexact_array(a) else a, opt_state)
    result = reborn.step(
        anatomy,
        ns.Operand(
            model, jax.random.key(2), 1, init=make, optimizer=optimizer, opt_state=opt_state
        ),
        obs,
        reborn.init(anatomy),
    )
    w1, b1 = np.asarray(model.layers[0].weight), np.asarray(model.layers[0].bias)
    w2 = np.asarray(model.layers[1].weight)
    h = np.maximum(np.asarray(x) @ w1.T + b1, 0)
    score = np.abs(h).mean(0) / np.abs(h).mean()
    donors = [int(i) for i in np.argsort(-score, kind="stable") if score[i] > 1][:2]
    assert len(donors) == 2 and (score[[1, 4]] == 0).all()
    ew1, eb1, ew2 = w1.copy(), b1.copy(), w2.copy()
    for r, d in zip([1, 4], donors, strict=True):
        ew1[r], eb1[r] = w1[d], b1[d]
        ew2[:, r], ew2[:, d] = 0.25 * w2[:, d], 0.75 * w2[:, d]
    new = result.model
    np.testing.assert_array_equal(new.layers[0].weight, ew1)
    np.testing.assert_array_equal(new.layers[0].bias, eb1)
    np.testing.assert_allclose(new.layers[1].weight, ew2, rtol=1e-6)
    assert float(result.info["reset/layers[0]"]) == pytest.approx(2 / 6)
    assert float(result.info["donors/layers[0]"]) == pytest.approx(2 / 6)
    mu = result.opt_state[0].mu
    assert not np.asarray(mu.layers[0].weight)[[1, 4]].any()  # the receivers' moments
    assert not np.asarray(mu.layers[1].weight)[:, [1, 4, *donors]].any()  # the split columns
    others = [i for i in range(6) if i not in (1, 4)]
    np.testing.assert_array_equal(np.asarray(mu.layers[0].weight)[others], 1.0)
    out = lambda m: jax.vmap(m)(x)
    assert float(jnp.max(jnp.abs(out(new) - out(model)))) <= 1e-6


@settings(max_examples=examples(8, 3), deadline=None)
@given(
    widths=st.lists(st.integers(3, 8), min_size=1, max_size=3),
    killed=st.integers(1, 2),
    share=st.floats(0.1, 0.9),
    ensemble=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_reborn_keeps_the_function_of_generated_networks(widths, killed, share, ensemble, seed):
    """ReLU MLPs of generated widths and depths, single or a vmapped ensemble of two, with dead
    units in every hidden layer: after the splits the outputs on random inputs differ by at most
    1e-6, and units were reborn."""
    key = jax.random.key(seed)

    def make(k):
        keys = jax.random.split(k, len(widths) + 1)
        sizes = [4, *widths, 2]
        layers = [
            eqx.nn.Linear(a, b, key=kk) for a, b, kk in zip(sizes, sizes[1:], keys, strict=False)
        ]
        return eqx.nn.Sequential(
            [item for lin in layers[:-1] for item in (lin, eqx.nn.Lambda(jax.nn.relu))]
            + [layers[-1]]
        )

    def kill(model):
        for i in range(len(widths)):
            bias = model.layers[2 * i].bias.at[..., :killed].set(-100.0)
            model = eqx.tree_at(lambda m, i=i: m.layers[2 * i].bias, model, bias)
        return model

    if ensemble:
        model = kill(eqx.filter_vmap(make)(jax.random.split(key, 2)))
        call = lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)
    else:
        model, call = kill(make(key)), None
    anatomy = ns.anatomy(model, jnp.zeros(4), fn=call)
    x = jax.random.normal(jax.random.fold_in(key, 1), (16, 4))
    _, obs = ns.observe(anatomy, model, lambda y: jnp.sum(y**2), x)
    reborn = ns.ReBorn(share=share, schedule=ns.Schedule(every=1))
    result = reborn.step(anatomy, ns.Operand(model, key, 1, init=make), obs, reborn.init(anatomy))
    assert float(result.info["reset"]) > 0
    run = (
        (lambda m: jax.vmap(lambda xx: call(m, xx))(x)) if ensemble else (lambda m: jax.vmap(m)(x))
    )
    assert float(jnp.max(jnp.abs(run(result.model) - run(model)))) <= 1e-6


def test_not_due_changes_nothing_and_bad_options():
    make = lambda k: eqx.nn.MLP(3, 1, 4, 1, key=k)
    model = dead(make(jax.random.key(0)), 0, [0])
    anatomy = ns.anatomy(model, jnp.zeros(3))
    _, obs = ns.observe(anatomy, model, jnp.sum, jnp.ones((4, 3)))
    reborn = ns.ReBorn(schedule=ns.Schedule(every=10))
    result = reborn.step(
        anatomy, ns.Operand(model, jax.random.key(1), 5, init=make), obs, reborn.init(anatomy)
    )
    for a, b in zip(jax.tree.leaves(result.model), jax.tree.leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(result.info["reset"]) == 0.0 and float(result.info["flagged"]) > 0
    with pytest.raises(ValueError, match=r"share=1.0 is invalid.*\(0, 1\)"):
        ns.ReBorn(share=1.0)
    with pytest.raises(ValueError, match=r"overactive=0.0 must exceed tau=0.0"):
        ns.ReBorn(overactive=0.0)
    with pytest.raises(ValueError, match=r"tau=-1.0 is invalid"):
        ns.ReBorn(tau=-1.0)
    with pytest.raises(ValueError, match=r"share=0\.0 is invalid"):
        ns.strategy("reborn", share=0.0)
    assert ns.strategy("reborn", tau=0.01, every=50).schedule == ns.Schedule(50)


def test_units_that_are_not_interchangeable_are_refused_by_name():
    """Value units of different attention heads are weighted by different attention patterns:
    a dormant value unit that copies one of another head would not compute what its donor did
    downstream, so the split would change the function. `init` finds this by running the traced
    program with units copied onto others, names the group and the way out; `skip` takes it."""
    mha = eqx.nn.MultiheadAttention(2, 4, key=jax.random.key(0))
    anatomy = ns.anatomy(mha, jnp.zeros((3, 4)), fn=lambda m, x: m(x, x, x))
    with pytest.raises(
        ns.AnatomyError, match=r"'value_proj' \(a copy moves.*skip=\('value_proj',\)"
    ):
        ns.ReBorn().init(anatomy)
    ns.ReBorn(skip=("value_proj",)).init(anatomy)
    with pytest.raises(ValueError, match=r"skip names \['valu'\], which are not groups"):
        ns.ReBorn(skip=("valu",)).init(anatomy)
    # one head: its value units are interchangeable, and nothing is refused
    one = eqx.nn.MultiheadAttention(1, 4, key=jax.random.key(0))
    ns.ReBorn().init(ns.anatomy(one, jnp.zeros((3, 4)), fn=lambda m, x: m(x, x, x)))
