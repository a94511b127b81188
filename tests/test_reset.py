"""Resets: invariants over the anatomy's architectures, optimizer state, strategies, bad input."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import neurosurgery as ns
from agents.networks import BroNet, Denoiser
from tests.test_anatomy import ConvNet, Inline, TwoHeads


def _mlp(k):
    return eqx.nn.MLP(3, 2, 6, 2, activation=jax.nn.tanh, key=k)


def _seq(k):
    k1, k2 = jax.random.split(k)
    return eqx.nn.Sequential([eqx.nn.Linear(3, 5, key=k1), eqx.nn.Lambda(jax.nn.relu),
                              eqx.nn.Linear(5, 2, key=k2)])  # fmt: skip


def _twin(k):
    return eqx.filter_vmap(lambda kk: eqx.nn.MLP(3, 1, 4, 2, key=kk))(jax.random.split(k, 2))


def _twin_call(m, x):
    return eqx.filter_vmap(lambda c: c(x))(m)


# name: (constructor, example args, call fn)
ARCHS = {
    "mlp": (_mlp, (jnp.zeros(3),), None),
    "sequential": (_seq, (jnp.zeros(3),), None),
    "inline": (Inline, (jnp.zeros(3),), None),
    "conv": (ConvNet, (jnp.zeros((2, 6, 6)),), None),
    "two_heads": (TwoHeads, (jnp.zeros(3),), None),
    "twin": (_twin, (jnp.zeros(3),), _twin_call),
    "denoiser": (
        lambda k: Denoiser(3, 2, width=8, key=k),
        (jnp.zeros(3), jnp.zeros(2), jnp.float32(0.4)),
        None,
    ),
    "bro": (lambda k: BroNet(3, 1, width=6, blocks=1, key=k), (jnp.zeros(3),), None),
}

_CACHE: dict = {}


def arch(name):
    """(make, model, anatomy, jitted reset, batch) per architecture, built once."""
    if name not in _CACHE:
        make, example, fn = ARCHS[name]
        model = make(jax.random.key(1))
        anatomy = ns.anatomy(model, *example, fn=fn)
        batch = jax.tree_util.tree_map(
            lambda x: jax.random.normal(jax.random.key(2), (4, *x.shape)), example
        )

        @eqx.filter_jit
        def do_reset(model, masks, key):
            return ns.reset(anatomy, model, masks, key, fresh=make(jax.random.fold_in(key, 1)))[0]

        _CACHE[name] = (make, model, anatomy, do_reset, batch)
    return _CACHE[name]


def outputs(anatomy, model, batch):
    return jax.vmap(lambda *a: anatomy.tapped(model, None, *a)[0])(*batch)


def random_masks(anatomy, seed, p=0.4):
    rng = np.random.default_rng(seed)
    return {g.name: jnp.asarray(rng.random(g.unit_shape) < p) for g in anatomy.groups}


@pytest.mark.parametrize("name", list(ARCHS))
def test_empty_mask_is_bit_identical(name):
    _, model, anatomy, do_reset, _ = arch(name)
    new = do_reset(model, anatomy.unit_masks(False), jax.random.key(0))
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(list(ARCHS)))
def test_reset_changes_only_flagged_entries_and_redraws_are_invisible(seed, name):
    """Only flagged entries change, and with zeroed outgoing weights the re-drawn incoming
    weights do not reach the outputs: the result equals the old model with those outgoing
    weights zeroed (re-drawing from the model itself)."""
    _, model, anatomy, do_reset, batch = arch(name)
    masks = random_masks(anatomy, seed)
    new = do_reset(model, masks, jax.random.key(seed))
    allowed = anatomy.element_masks(ns._reset._resettable_masks(anatomy, masks, False))
    for i, (a, b) in enumerate(
        zip(anatomy.check_model(model), anatomy.check_model(new), strict=True)
    ):
        changed = np.asarray(a != b)
        ok = np.zeros_like(changed) if allowed[i] is None else np.asarray(allowed[i])
        assert not (changed & ~ok).any(), anatomy.leaf_paths[i]
    if any(g.normalized for g in anatomy.resettable):
        return  # a norm's statistics mix the units: see test_norm_groups_are_marked
    zeroed, _ = ns.reset(anatomy, model, masks, jax.random.key(seed), fresh=model)
    delta = jax.tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)),
                                   outputs(anatomy, new, batch), outputs(anatomy, zeroed, batch))  # fmt: skip
    assert max(jax.tree_util.tree_leaves(delta)) <= 1e-6


def test_resetting_dormant_units_keeps_outputs(getkey):
    """ReDo's premise: units with zero activation contribute nothing, so resetting them with
    zeroed outgoing weights leaves the outputs unchanged at the moment of reset."""
    make = lambda k: eqx.nn.MLP(3, 2, 16, 2, activation=jax.nn.relu, key=k)
    model = make(getkey())
    dead = jnp.arange(16) % 3 == 0
    model = eqx.tree_at(
        lambda m: m.layers[1].bias, model, jnp.where(dead, -1e3, model.layers[1].bias)
    )
    anatomy = ns.anatomy(model, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (64, 3))
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    scores, _ = ns.Dormant().score(anatomy, obs, ())
    masks = ns.Selection("threshold", 0.0)(scores)
    flagged = np.asarray(masks["layers[1]"])
    assert flagged[np.asarray(dead)].all()  # the units made dead, maybe others dead on this data
    new, _ = ns.reset(anatomy, model, masks, getkey(), fresh=make(getkey()))
    assert float(jnp.max(jnp.abs(jax.vmap(new)(xs) - jax.vmap(model)(xs)))) <= 1e-6
    assert not np.array_equal(np.asarray(new.layers[1].weight), np.asarray(model.layers[1].weight))


def test_norm_groups_are_marked_and_their_reset_is_not_function_preserving():
    _, model, anatomy, do_reset, batch = arch("bro")
    assert [g.name for g in anatomy.resettable] == ["blocks[0].dense1"]
    assert anatomy["blocks[0].dense1"].normalized
    mask = jnp.zeros(6, bool).at[0].set(True)
    new = do_reset(model, {"blocks[0].dense1": mask}, jax.random.key(0))
    # Unit 0's new row shifts LayerNorm's mean and variance for the other five units.
    assert (
        float(jnp.max(jnp.abs(outputs(anatomy, new, batch) - outputs(anatomy, model, batch))))
        > 1e-4
    )


def test_reset_rows_come_from_fresh_model_and_outgoing_is_zero(getkey):
    _, model, anatomy, _, _ = arch("mlp")
    fresh = _mlp(getkey())
    mask = jnp.array([True, False, True, False, False, False])
    new, _ = ns.reset(anatomy, model, {"layers[0]": mask}, getkey(), fresh=fresh)
    w, b, w_next = new.layers[0].weight, new.layers[0].bias, new.layers[1].weight
    np.testing.assert_array_equal(w[mask], fresh.layers[0].weight[mask])
    np.testing.assert_array_equal(w[~mask], model.layers[0].weight[~mask])
    np.testing.assert_array_equal(b[mask], fresh.layers[0].bias[mask])
    assert (w_next[:, mask] == 0).all()
    np.testing.assert_array_equal(w_next[:, ~mask], model.layers[1].weight[:, ~mask])


def test_norm_parameters_back_to_identity(getkey):
    _, model, anatomy, _, _ = arch("bro")
    model = eqx.tree_at(lambda m: (m.blocks[0].norm1.weight, m.blocks[0].norm1.bias), model,
                        (jnp.full(6, 3.0), jnp.full(6, 0.5)))  # fmt: skip
    mask = jnp.zeros(6, bool).at[2].set(True)
    with_fresh, _ = ns.reset(
        anatomy, model, {"blocks[0].dense1": mask}, getkey(), fresh=BroNet(3, 1, 6, 1, key=getkey())
    )
    named, _ = ns.reset(
        anatomy, model, {"blocks[0].dense1": mask}, getkey(), init=ns.lecun_normal()
    )
    for new in (with_fresh, named):
        assert new.blocks[0].norm1.weight[2] == 1.0 and new.blocks[0].norm1.bias[2] == 0.0
        np.testing.assert_array_equal(new.blocks[0].norm1.weight[~mask], 3.0)


def test_named_initializer_distribution(getkey):
    mlp = eqx.nn.MLP(400, 1, 500, 1, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(400))
    new, _ = ns.reset(
        anatomy, mlp, {"layers[0]": jnp.ones(500, bool)}, getkey(), init=ns.kaiming_normal()
    )
    w = np.asarray(new.layers[0].weight)
    assert abs(w.mean()) < 0.01 * np.sqrt(2 / 400) * 10
    assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)  # He: std = sqrt(2 / fan_in)
    assert (new.layers[0].bias == 0).all()


def test_small_random_outgoing(getkey):
    _, model, anatomy, _, _ = arch("mlp")
    mask = jnp.zeros(6, bool).at[1].set(True)
    new, _ = ns.reset(
        anatomy, model, {"layers[0]": mask}, getkey(), fresh=_mlp(getkey()), outgoing="small"
    )
    col = np.asarray(new.layers[1].weight[:, 1])
    scale = 0.02 * float(jnp.std(model.layers[1].weight))
    assert (col != 0).all() and np.abs(col).max() < 6 * scale


def test_optimizer_moments_zero_exactly_at_touched_entries(getkey):
    _, model, anatomy, _, _ = arch("mlp")
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    params = eqx.filter(model, eqx.is_array)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(params)
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        _, state = opt.update(grads, state, params)
    mask = jnp.zeros(6, bool).at[3].set(True)
    _, new_state = ns.reset(anatomy, model, {"layers[1]": mask}, getkey(), fresh=_mlp(getkey()),
                            optimizer=opt, opt_state=state)  # fmt: skip
    adam_old, adam_new = state[1][0], new_state[1][0]
    for old, new in ((adam_old.mu, adam_new.mu), (adam_old.nu, adam_new.nu)):
        assert (new.layers[1].weight[3] == 0).all() and new.layers[1].bias[3] == 0
        assert (new.layers[2].weight[:, 3] == 0).all()
        np.testing.assert_array_equal(new.layers[1].weight[:3], old.layers[1].weight[:3])
        np.testing.assert_array_equal(new.layers[0].weight, old.layers[0].weight)
        assert (old.layers[1].weight[3] != 0).all()
    assert adam_new.count == adam_old.count


def test_per_entry_step_count_reset(getkey):
    _, model, anatomy, _, _ = arch("mlp")
    opt = ns.adam_per_entry(1e-2)
    params = eqx.filter(model, eqx.is_array)
    state = opt.init(params)
    _, state = opt.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    mask = jnp.zeros(6, bool).at[0].set(True)
    _, new_state = ns.reset(anatomy, model, {"layers[0]": mask}, getkey(), fresh=_mlp(getkey()),
                            optimizer=opt, opt_state=state, reset_count=True)  # fmt: skip
    counts = jax.tree_util.tree_leaves(
        new_state, is_leaf=lambda x: isinstance(x, ns._optstate.ScaleByAdamPerEntryState)
    )
    count = next(c for c in counts if isinstance(c, ns._optstate.ScaleByAdamPerEntryState)).count
    assert (count.layers[0].weight[0] == 0).all() and (count.layers[0].weight[1:] == 1).all()


def test_outputs_never_reset_shared_only_on_request(getkey):
    _, model, anatomy, _, _ = arch("bro")
    everything = anatomy.unit_masks(True)
    new, _ = ns.reset(anatomy, model, everything, getkey(), init=ns.lecun_normal())
    np.testing.assert_array_equal(new.head.bias, model.head.bias)
    np.testing.assert_array_equal(new.stem.weight, model.stem.weight)
    shared, _ = ns.reset(
        anatomy, model, everything, getkey(), init=ns.lecun_normal(), include_shared=True
    )
    assert not np.array_equal(shared.stem.weight, model.stem.weight)
    np.testing.assert_array_equal(shared.head.bias, model.head.bias)


def test_strategy_step_under_jit_and_vmap_over_seeds(getkey):
    make = lambda k: eqx.nn.MLP(3, 1, 8, 1, key=k)
    anatomy = ns.anatomy(make(getkey()), jnp.zeros(3))
    xs = jax.random.normal(getkey(), (8, 3))
    strategy = ns.redo(tau=0.5, every=10)

    @eqx.filter_jit
    def run(key, step):
        model = make(key)
        model = eqx.tree_at(
            lambda m: m.layers[0].bias, model, model.layers[0].bias.at[:2].set(-50.0)
        )
        _, obs = ns.observe(anatomy, model, jnp.sum, xs)
        new, _, _, info = strategy.step(anatomy, model, obs, strategy.init(anatomy), key, step,
                                        fresh=make(jax.random.fold_in(key, 7)))  # fmt: skip
        return model, new, info

    keys = jax.random.split(getkey(), 3)
    for step, due in ((10, True), (15, False), (0, False)):
        old, new, info = eqx.filter_vmap(run, in_axes=(0, None))(keys, step)
        same = np.array_equal(np.asarray(old.layers[0].weight), np.asarray(new.layers[0].weight))
        assert same != due
        assert (info["inactive/layers[0]"] >= 2 / 8).all()
        assert ((info["reset/layers[0]"] > 0) == due).all()
        single = run(keys[1], step)[1]
        np.testing.assert_allclose(new.layers[0].weight[1], single.layers[0].weight, rtol=1e-6)


# ---- bad input: clear errors, nothing modified ------------------------------------------------


def test_bad_selection_and_schedule():
    with pytest.raises(ValueError, match="tau"):
        ns.Selection("threshold", tau=-0.1)
    with pytest.raises(ValueError, match="fraction"):
        ns.Selection("fraction", fraction=1.5)
    with pytest.raises(ValueError, match="selection mode 'top' is unknown"):
        ns.Selection("top")
    with pytest.raises(ValueError, match="every must be >= 1"):
        ns.Schedule(every=0)
    with pytest.raises(ValueError, match="tau"):
        ns.redo(tau=-1.0)


def test_bad_masks_and_states(getkey):
    _, model, anatomy, _, _ = arch("mlp")
    before = [np.asarray(x).copy() for x in jax.tree_util.tree_leaves(model)]
    fresh = _mlp(getkey())
    with pytest.raises(ns.AnatomyError, match=r"mask for group 'layers\[0\]' has shape \(5,\)"):
        ns.reset(anatomy, model, {"layers[0]": jnp.ones(5, bool)}, getkey(), fresh=fresh)
    with pytest.raises(ns.AnatomyError, match=r"do not have|does not have"):
        ns.reset(anatomy, model, {"fc9": jnp.ones(5, bool)}, getkey(), fresh=fresh)
    with pytest.raises(ValueError, match="fresh=make_model"):
        ns.reset(anatomy, model, {"layers[0]": jnp.ones(6, bool)}, getkey())
    other = eqx.nn.MLP(3, 2, 7, 2, key=getkey())
    opt = ns.adam_per_entry(1e-3)
    with pytest.raises(ValueError, match="opt_state"):
        ns.reset(anatomy, model, {"layers[0]": jnp.ones(6, bool)}, getkey(), fresh=fresh,
                 optimizer=opt, opt_state=opt.init(eqx.filter(other, eqx.is_array)))  # fmt: skip
    with pytest.raises(ns.AnatomyError, match="does not match this anatomy"):
        ns.reset(anatomy, other, {"layers[0]": jnp.ones(6, bool)}, getkey(), fresh=fresh)
    after = [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
