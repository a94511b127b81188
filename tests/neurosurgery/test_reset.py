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
from agents.networks import BroNet


def random_masks(anatomy, seed, p=0.4):
    rng = np.random.default_rng(seed)
    return {g.name: jnp.asarray(rng.random(g.unit_shape) < p) for g in anatomy.groups}


def leaves(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


@pytest.mark.newest
def test_empty_mask_is_bit_identical(arch_name, archs):
    arch = archs(arch_name)
    new = arch.reset(arch.model, arch.anatomy.unit_masks(False), jax.random.key(0))
    for a, b in zip(leaves(arch.model), leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_reset_changes_only_flagged_entries_and_redraws_are_invisible(arch_name, archs, seed):
    """Only flagged entries change, and with zeroed outgoing weights the re-drawn incoming
    weights do not reach the outputs: the result equals the old model with those outgoing
    weights zeroed (re-drawing from the model itself)."""
    arch = archs(arch_name)
    anatomy, model = arch.anatomy, arch.model
    masks = random_masks(anatomy, seed)
    new = arch.reset(model, masks, jax.random.key(seed))
    applied = ns.reset(anatomy, model, masks, jax.random.key(seed), init=arch.make).applied
    assert set(applied) == {g.name for g in anatomy.resettable}
    allowed = anatomy.element_masks(applied)
    for i, (a, b) in enumerate(zip(leaves(model), leaves(new), strict=True)):
        changed = np.asarray(a != b)
        ok = np.zeros_like(changed) if allowed[i] is None else np.asarray(allowed[i])
        assert not (changed & ~ok).any(), anatomy.leaf_paths[i]
    if any(g.normalized for g in anatomy.resettable):
        return  # a norm's statistics mix the units: see test_norm_groups_are_marked
    zeroed = ns.reset(anatomy, model, masks, jax.random.key(seed), init=lambda k: model).model
    delta = jax.tree_util.tree_map(
        lambda x, y: jnp.max(jnp.abs(x - y)), arch.outputs(new), arch.outputs(zeroed)
    )
    assert max(jax.tree_util.tree_leaves(delta)) <= 1e-6


@pytest.mark.newest
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
    metric = ns.Dormant()
    scores, _ = metric.score(anatomy, obs, metric.init(anatomy))
    masks = ns.threshold(scores, 0.0)
    flagged = np.asarray(masks["layers[1]"])
    assert flagged[np.asarray(dead)].all()  # the units made dead, maybe others dead on this data
    new = ns.reset(anatomy, model, masks, getkey(), init=make).model
    assert float(jnp.max(jnp.abs(jax.vmap(new)(xs) - jax.vmap(model)(xs)))) <= 1e-6
    assert not np.array_equal(np.asarray(new.layers[1].weight), np.asarray(model.layers[1].weight))


def test_norm_groups_are_marked_and_their_reset_is_not_function_preserving(archs):
    arch = archs("bro")
    assert [g.name for g in arch.anatomy.resettable] == ["blocks[0].dense1"]
    assert arch.anatomy["blocks[0].dense1"].normalized
    mask = jnp.zeros(6, bool).at[0].set(True)
    new = arch.reset(arch.model, {"blocks[0].dense1": mask}, jax.random.key(0))
    # Unit 0's new row shifts LayerNorm's mean and variance for the other five units.
    assert float(jnp.max(jnp.abs(arch.outputs(new) - arch.outputs(arch.model)))) > 1e-4


def test_reset_rows_come_from_the_constructor_and_outgoing_is_zero(archs):
    arch = archs("mlp")
    model, anatomy = arch.model, arch.anatomy
    key = jax.random.key(5)
    fresh = arch.make(jax.random.split(key)[0])  # the constructor gets the key's first half
    mask = jnp.array([True, False, True, False, False, False])
    new = ns.reset(anatomy, model, {"layers[0]": mask}, key, init=arch.make).model
    w, b, w_next = new.layers[0].weight, new.layers[0].bias, new.layers[1].weight
    np.testing.assert_array_equal(w[mask], fresh.layers[0].weight[mask])
    np.testing.assert_array_equal(w[~mask], model.layers[0].weight[~mask])
    np.testing.assert_array_equal(b[mask], fresh.layers[0].bias[mask])
    assert (w_next[:, mask] == 0).all()
    np.testing.assert_array_equal(w_next[:, ~mask], model.layers[1].weight[:, ~mask])


def test_norm_parameters_back_to_identity(getkey, archs):
    arch = archs("bro")
    anatomy = arch.anatomy
    model = eqx.tree_at(
        lambda m: (m.blocks[0].norm1.weight, m.blocks[0].norm1.bias),
        arch.model,
        (jnp.full(6, 3.0), jnp.full(6, 0.5)),
    )
    masks = {"blocks[0].dense1": jnp.zeros(6, bool).at[2].set(True)}
    mask = masks["blocks[0].dense1"]
    make = lambda k: BroNet(3, 1, 6, 1, key=k)
    with_fresh = ns.reset(anatomy, model, masks, getkey(), init=make).model
    named = ns.reset(anatomy, model, masks, getkey(), init=ns.lecun_normal()).model
    for new in (with_fresh, named):
        assert new.blocks[0].norm1.weight[2] == 1.0 and new.blocks[0].norm1.bias[2] == 0.0
        np.testing.assert_array_equal(new.blocks[0].norm1.weight[~mask], 3.0)


def test_named_initializer_distribution(getkey):
    mlp = eqx.nn.MLP(400, 1, 500, 1, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(400))
    new = ns.reset(
        anatomy, mlp, {"layers[0]": jnp.ones(500, bool)}, getkey(), init=ns.kaiming_normal()
    ).model
    w = np.asarray(new.layers[0].weight)
    assert abs(w.mean()) < 0.01 * np.sqrt(2 / 400) * 10
    assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)  # He: std = sqrt(2 / fan_in)
    assert (new.layers[0].bias == 0).all()


def test_small_random_outgoing(getkey, archs):
    arch = archs("mlp")
    model, anatomy = arch.model, arch.anatomy
    mask = jnp.zeros(6, bool).at[1].set(True)
    new = ns.reset(
        anatomy, model, {"layers[0]": mask}, getkey(), init=arch.make, outgoing="small"
    ).model
    col = np.asarray(new.layers[1].weight[:, 1])
    scale = 0.02 * float(jnp.std(model.layers[1].weight))
    assert (col != 0).all() and np.abs(col).max() < 6 * scale


@pytest.mark.newest
def test_optimizer_moments_zero_exactly_at_touched_entries(getkey, archs):
    arch = archs("mlp")
    model, anatomy = arch.model, arch.anatomy
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    params = eqx.filter(model, eqx.is_array)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(params)
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        _, state = opt.update(grads, state, params)
    mask = jnp.zeros(6, bool).at[3].set(True)
    new_state = ns.reset(
        anatomy,
        model,
        {"layers[1]": mask},
        getkey(),
        init=arch.make,
        optimizer=opt,
        opt_state=state,
    ).opt_state
    adam_old, adam_new = state[1][0], new_state[1][0]
    for old, new in ((adam_old.mu, adam_new.mu), (adam_old.nu, adam_new.nu)):
        assert (new.layers[1].weight[3] == 0).all() and new.layers[1].bias[3] == 0
        assert (new.layers[2].weight[:, 3] == 0).all()
        np.testing.assert_array_equal(new.layers[1].weight[:3], old.layers[1].weight[:3])
        np.testing.assert_array_equal(new.layers[0].weight, old.layers[0].weight)
        assert (old.layers[1].weight[3] != 0).all()
    assert adam_new.count == adam_old.count


def test_per_entry_step_count_reset(getkey, archs):
    arch = archs("mlp")
    model, anatomy = arch.model, arch.anatomy
    opt = ns.adam_per_entry(1e-2)
    params = eqx.filter(model, eqx.is_array)
    state = opt.init(params)
    _, state = opt.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    mask = jnp.zeros(6, bool).at[0].set(True)
    new_state = ns.reset(
        anatomy,
        model,
        {"layers[0]": mask},
        getkey(),
        init=arch.make,
        optimizer=opt,
        opt_state=state,
        reset_count=True,
    ).opt_state
    counts = jax.tree_util.tree_leaves(
        new_state, is_leaf=lambda x: isinstance(x, ns._surgery._optstate.ScaleByAdamPerEntryState)
    )
    count = next(
        c for c in counts if isinstance(c, ns._surgery._optstate.ScaleByAdamPerEntryState)
    ).count
    assert (count.layers[0].weight[0] == 0).all() and (count.layers[0].weight[1:] == 1).all()


def test_outputs_never_reset_shared_only_on_request(getkey, archs):
    arch = archs("bro")
    model, anatomy = arch.model, arch.anatomy
    everything = anatomy.unit_masks(True)
    result = ns.reset(anatomy, model, everything, getkey(), init=ns.lecun_normal())
    new = result.model
    assert set(result.applied) == {"blocks[0].dense1"}
    np.testing.assert_array_equal(new.head.bias, model.head.bias)
    np.testing.assert_array_equal(new.stem.weight, model.stem.weight)
    shared = ns.reset(
        anatomy, model, everything, getkey(), init=ns.lecun_normal(), include_shared=True
    ).model
    assert not np.array_equal(shared.stem.weight, model.stem.weight)
    np.testing.assert_array_equal(shared.head.bias, model.head.bias)


# ---- bad input: clear errors, nothing modified ------------------------------------------------


def test_bad_masks_inits_and_states(getkey, archs):
    arch = archs("mlp")
    model, anatomy, make = arch.model, arch.anatomy, arch.make
    before = [np.asarray(x).copy() for x in leaves(model)]
    ones = {"layers[0]": jnp.ones(6, bool)}
    with pytest.raises(ns.AnatomyError, match=r"mask for group 'layers\[0\]' has shape \(5,\)"):
        ns.reset(anatomy, model, {"layers[0]": jnp.ones(5, bool)}, getkey(), init=make)
    with pytest.raises(ns.AnatomyError, match=r"does not have"):
        ns.reset(anatomy, model, {"fc9": jnp.ones(5, bool)}, getkey(), init=make)
    with pytest.raises(ns.AnatomyError, match=r"'layers\[0\]' is not boolean.*mask > 0.5"):
        ns.reset(anatomy, model, {"layers[0]": jnp.ones(6)}, getkey(), init=make)
    with pytest.raises(ns.AnatomyError, match=r"tuple.*\(scores, state\)"):
        # what reset checks first (the annotations already refuse it where they are checked)
        ns._anatomy._anatomy._check_unit_masks(anatomy, (ones, ns.EmptyState()))
    with pytest.raises(TypeError, match=r"cannot be called as init\(key\).*ns.Initializer"):
        ns.reset(anatomy, model, ones, getkey(), init=jax.nn.initializers.lecun_normal())
    # the model itself instead of its constructor: callable, but not as init(key)
    with pytest.raises(TypeError, match=r"init is a model instance \(MLP\), not a constructor"):
        ns.reset(anatomy, model, ones, getkey(), init=model)
    other = eqx.nn.MLP(3, 2, 7, 2, key=getkey())
    with pytest.raises(ns.AnatomyError, match="does not match this anatomy"):
        ns.reset(anatomy, model, ones, getkey(), init=lambda k: eqx.nn.MLP(3, 2, 7, 2, key=k))
    opt = ns.adam_per_entry(1e-3)
    with pytest.raises(ValueError, match="opt_state"):
        ns.reset(
            anatomy,
            model,
            ones,
            getkey(),
            init=make,
            optimizer=opt,
            opt_state=opt.init(eqx.filter(other, eqx.is_array)),
        )
    with pytest.raises(ns.AnatomyError, match="does not match this anatomy"):
        ns.reset(anatomy, other, ones, getkey(), init=make)
    after = [np.asarray(x) for x in leaves(model)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
