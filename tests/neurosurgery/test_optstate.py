"""Optimizer-state surgery over many optax compositions, and Adam with per-entry step counts."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurosurgery._surgery._optstate import (
    ScaleByAdamPerEntryState,
    adam_per_entry,
    adamw_per_entry,
    reset_optimizer_state,
    scale_by_adam_per_entry,
)

FAST = settings(max_examples=10, deadline=None)

# optax's Adam computes `decay ** count` with a Python float and an int32 count, which the test
# suite's strict dtype promotion rejects; optax's own updates therefore run under standard rules.
standard_promotion = functools.partial(jax.numpy_dtype_promotion, "standard")


def _model(width: int = 5) -> eqx.nn.MLP:
    return eqx.nn.MLP(3, 2, width, 2, key=jax.random.key(0))


PARAMS = eqx.filter(_model(), eqx.is_array)
PARAM_PATHS = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(PARAMS)[0]
}
N_PARAMS = len(PARAM_PATHS)  # 6: three weights, three biases
N_WEIGHTS = 3


def _is_weight(tree):
    return jax.tree.map(lambda x: x.ndim == 2, tree)


def _labels(tree):
    return jax.tree.map(lambda x: "weights" if x.ndim == 2 else "biases", tree)


# name -> (optimizer factory, number of params-shaped float leaves the state holds)
COMPOSITIONS = {
    "adam": (lambda: optax.adam(1e-2), 2 * N_PARAMS),
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=0.1), 2 * N_PARAMS),
    "chain_clip_adam": (
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        2 * N_PARAMS,
    ),
    "inject_hyperparams_adam": (
        lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
        2 * N_PARAMS,
    ),
    "masked_adam": (lambda: optax.masked(optax.adam(1e-2), _is_weight), 2 * N_WEIGHTS),
    "multi_transform": (
        # Labels as a function: an Equinox labels tree is itself callable and would be called.
        lambda: optax.multi_transform(
            {"weights": optax.adam(1e-2), "biases": optax.sgd(1e-2, momentum=0.9)}, _labels
        ),
        2 * N_WEIGHTS + (N_PARAMS - N_WEIGHTS),
    ),
    "multisteps_adam": (lambda: optax.MultiSteps(optax.adam(1e-2), 3), 3 * N_PARAMS),
    "sgd_momentum": (lambda: optax.sgd(1e-2, momentum=0.9), N_PARAMS),
    "adam_per_entry": (lambda: adam_per_entry(1e-2), 2 * N_PARAMS),
    "adamw_per_entry": (lambda: adamw_per_entry(1e-2, weight_decay=0.1), 2 * N_PARAMS),
}


def _random_grads(key: jax.Array, params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


@functools.cache
def _trained(name: str):
    """(optimizer, state after a few updates) with every moment non-zero."""
    optimizer = COMPOSITIONS[name][0]()
    state = optimizer.init(PARAMS)
    with standard_promotion():
        for step in range(4):
            grads = _random_grads(jax.random.key(step + 1), PARAMS)
            _, state = optimizer.update(grads, state, PARAMS)
    return optimizer, state


def _masks_from_seed(seed: int, params=PARAMS):
    """Random element masks: per leaf None, or a bool array of density 0, 0.1, 0.5 or 1."""
    rng = np.random.default_rng(seed)

    def one(x):
        choice = rng.integers(5)
        if choice == 0:
            return None
        density = [0.0, 0.1, 0.5, 1.0][choice - 1]
        return jnp.asarray(rng.random(x.shape) < density)

    return jax.tree.map(one, params)


def _mask_by_path(masks):
    flat = jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda x: x is None)[0]
    return {jax.tree_util.keystr(path): m for path, m in flat}


def _check_reset(old_state, new_state, masks, value=0.0):
    """Independent oracle: a state leaf whose path ends with a parameter's path and has its shape
    is a moment of that parameter; it must equal `value` under the mask and be bit-identical
    elsewhere. Every other leaf must be bit-identical. Returns the number of moment leaves seen."""
    by_path = _mask_by_path(masks)
    old = jax.tree_util.tree_flatten_with_path(old_state)
    new = jax.tree_util.tree_flatten_with_path(new_state)
    assert old[1] == new[1]
    hits = 0
    for (path, a), (_, b) in zip(old[0], new[0], strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        key = jax.tree_util.keystr(path)
        param_path = next((p for p in PARAM_PATHS if key.endswith(p)), None)
        is_moment = (
            param_path is not None
            and a.shape == PARAM_PATHS[param_path].shape
            and np.issubdtype(a.dtype, np.floating)
        )
        if not is_moment:
            np.testing.assert_array_equal(a, b, err_msg=key)
            continue
        hits += 1
        mask = by_path[param_path]
        mask = np.zeros(a.shape, bool) if mask is None else np.asarray(mask)
        np.testing.assert_array_equal(b[mask], np.full(mask.sum(), value, a.dtype), err_msg=key)
        np.testing.assert_array_equal(b[~mask], a[~mask], err_msg=key)
    return hits


@pytest.mark.parametrize("name", list(COMPOSITIONS))
@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_moments_reset_exactly_at_masked_entries(name, seed):
    optimizer, state = _trained(name)
    masks = _masks_from_seed(seed)
    new_state = reset_optimizer_state(optimizer, state, PARAMS, masks)
    assert _check_reset(state, new_state, masks) == COMPOSITIONS[name][1]


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_empty_mask_leaves_state_bit_identical(name):
    optimizer, state = _trained(name)
    all_false = jax.tree.map(lambda x: jnp.zeros(x.shape, bool), PARAMS)
    all_none = jax.tree.map(lambda x: None, PARAMS)
    for masks in (all_false, all_none):
        new_state = reset_optimizer_state(optimizer, state, PARAMS, masks, reset_count=False)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(a, b)


def test_moments_really_were_nonzero_before_reset():
    # Guards the oracle: zeroing must be visible, so the trained moments are non-zero.
    _, state = _trained("adam")
    assert all(np.all(np.asarray(x) != 0) for x in jax.tree.leaves(state[0].mu))


def test_value_option_and_untouched_counts():
    optimizer, state = _trained("adam")
    masks = _masks_from_seed(7)
    new_state = reset_optimizer_state(optimizer, state, PARAMS, masks, value=0.5)
    _check_reset(state, new_state, masks, value=0.5)
    assert int(new_state[0].count) == 4


def test_state_of_other_params_is_rejected():
    optimizer, _ = _trained("adam")
    wider = eqx.filter(_model(width=6), eqx.is_array)
    other_state = optimizer.init(wider)
    masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS)
    with pytest.raises(
        ValueError, match=r"opt_state\[0\]\.mu\.layers\[0\]\.weight.*float32\[6, 3\]"
    ):
        reset_optimizer_state(optimizer, other_state, PARAMS, masks)


def test_state_of_other_optimizer_is_rejected():
    _, sgd_state = _trained("sgd_momentum")
    masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS)
    with pytest.raises(ValueError, match=r"opt_state does not belong.*optimizer\.init\(params\)"):
        reset_optimizer_state(optax.adam(1e-2), sgd_state, PARAMS, masks)
    # Same structure but a different state type (one tuple level, other NamedTuple).
    _, adam_state = _trained("adam")
    with pytest.raises(ValueError, match="does not belong"):
        reset_optimizer_state(optax.amsgrad(1e-2), adam_state, PARAMS, masks)


def test_bad_masks_are_rejected_naming_the_path():
    optimizer, state = _trained("adam")
    good = jax.tree.map(lambda x: jnp.zeros(x.shape, bool), PARAMS)
    wrong_shape = eqx.tree_at(lambda t: t.layers[1].weight, good, jnp.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"element_masks\.layers\[1\]\.weight.*\[5, 5\]"):
        reset_optimizer_state(optimizer, state, PARAMS, wrong_shape)
    wrong_dtype = eqx.tree_at(lambda t: t.layers[0].bias, good, jnp.zeros(5, jnp.float32))
    with pytest.raises(ValueError, match=r"element_masks\.layers\[0\]\.bias must be a bool"):
        reset_optimizer_state(optimizer, state, PARAMS, wrong_dtype)
    other_model = jax.tree.map(
        lambda x: jnp.zeros(x.shape, bool),
        eqx.filter(eqx.nn.MLP(3, 2, 5, 1, key=jax.random.key(0)), eqx.is_array),
    )
    with pytest.raises(ValueError, match=r"element_masks does not match params.*layers\[2\]"):
        reset_optimizer_state(optimizer, state, PARAMS, other_model)
    as_dict = {"weight": jnp.zeros((5, 3), bool)}
    with pytest.raises(ValueError, match="element_masks does not match params"):
        reset_optimizer_state(optimizer, state, PARAMS, as_dict)


def test_mask_for_a_non_array_leaf_is_rejected():
    params = {"w": jnp.ones((2, 3)), "frozen": None}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    masks = {"w": None, "frozen": jnp.ones((2, 3), bool)}
    with pytest.raises(ValueError, match=r"element_masks\['frozen'\]"):
        reset_optimizer_state(optimizer, state, params, masks)


def test_stacked_parameter_buffers_are_rejected():
    # L-BFGS keeps (memory, *shape) buffers per parameter: not one value per entry.
    params = {"w": jnp.ones((3, 2))}
    optimizer = optax.scale_by_lbfgs()
    state = optimizer.init(params)
    with pytest.raises(ValueError, match=r"params\['w'\] of shape \[10, 3, 2\]"):
        reset_optimizer_state(optimizer, state, params, {"w": jnp.ones((3, 2), bool)})


def test_optimizer_whose_init_rejects_the_placeholder_gets_a_clear_error():
    # optax.lbfgs's line search reads a leaf's dtype at init, which the placeholder has not.
    params = {"w": jnp.ones((3, 2))}
    optimizer = optax.lbfgs()
    state = optimizer.init(params)
    with pytest.raises(ValueError, match="cannot find the parameter-shaped entries"):
        reset_optimizer_state(optimizer, state, params, {"w": jnp.ones((3, 2), bool)})


def test_jit_matches_eager():
    optimizer, state = _trained("multi_transform")
    masks = _masks_from_seed(3)
    eager = reset_optimizer_state(optimizer, state, PARAMS, masks)
    jitted = jax.jit(functools.partial(reset_optimizer_state, optimizer))(state, PARAMS, masks)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vmap_over_seeds():
    optimizer = adam_per_entry(1e-2)

    def make(seed):
        params = eqx.filter(eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(seed)), eqx.is_array)
        state = optimizer.init(params)
        _, state = optimizer.update(_random_grads(jax.random.key(seed), params), state, params)
        rng = np.random.default_rng(seed)
        masks = jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.5), params)
        return params, state, masks

    seeds = [make(seed) for seed in range(3)]
    params, state, masks = jax.tree.map(lambda *xs: jnp.stack(xs), *seeds)
    reset = jax.vmap(lambda s, p, m: reset_optimizer_state(optimizer, s, p, m, reset_count=True))
    new_state = reset(state, params, masks)
    for i, (p, s, m) in enumerate(seeds):
        expected = reset_optimizer_state(optimizer, s, p, m, reset_count=True)
        got = jax.tree.map(lambda x, i=i: x[i], new_state)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(a, b)


# --- Adam with per-entry step counts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: adam_per_entry(1e-2), lambda: optax.adam(1e-2)),
        (
            lambda: adam_per_entry(3e-3, b1=0.5, b2=0.9, eps=1e-6),
            lambda: optax.adam(3e-3, 0.5, 0.9, 1e-6),
        ),
        (
            lambda: adamw_per_entry(1e-2, weight_decay=0.1),
            lambda: optax.adamw(1e-2, weight_decay=0.1),
        ),
        (
            lambda: adamw_per_entry(1e-2, eps_root=1e-8, weight_decay=0.1, mask=_is_weight),
            lambda: optax.adamw(1e-2, eps_root=1e-8, weight_decay=0.1, mask=_is_weight),
        ),
    ],
)
def test_per_entry_adam_matches_optax_without_resets(ours, theirs):
    ours, theirs = ours(), theirs()
    p_ours = p_theirs = PARAMS
    s_ours, s_theirs = ours.init(PARAMS), theirs.init(PARAMS)
    for step in range(6):
        grads = _random_grads(jax.random.key(10 + step), PARAMS)
        u_ours, s_ours = ours.update(grads, s_ours, p_ours)  # runs under strict promotion
        with standard_promotion():
            u_theirs, s_theirs = theirs.update(grads, s_theirs, p_theirs)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        p_ours = optax.apply_updates(p_ours, u_ours)
        p_theirs = optax.apply_updates(p_theirs, u_theirs)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    counts = s_ours[0].count
    assert all(c.dtype == jnp.int32 and np.all(np.asarray(c) == 6) for c in jax.tree.leaves(counts))


def test_reset_count_restarts_bias_correction_at_touched_entries():
    eps = 1e-8
    optimizer = scale_by_adam_per_entry(eps=eps)
    params = {"w": jnp.zeros((4, 3), jnp.float32)}
    state = optimizer.init(params)
    for step in range(5):
        _, state = optimizer.update(_random_grads(jax.random.key(step), params), state)
    mask = jnp.zeros((4, 3), bool).at[1].set(True).at[3, 2].set(True)
    reset = reset_optimizer_state(optimizer, state, params, {"w": mask}, reset_count=True)
    assert isinstance(reset, ScaleByAdamPerEntryState)
    np.testing.assert_array_equal(reset.count["w"], np.where(mask, 0, 5))
    grads = _random_grads(jax.random.key(99), params)
    after_reset, _ = optimizer.update(grads, reset)
    no_reset, _ = optimizer.update(grads, state)
    g = np.asarray(grads["w"])
    m = np.asarray(mask)
    # Touched entries: the first step of a fresh Adam (optax's own), m_hat = g and v_hat = g**2
    # up to float32 rounding of 1 - b1 and 1 - b2.
    fresh = optax.scale_by_adam(eps=eps)
    with standard_promotion():
        first_step, _ = fresh.update(grads, fresh.init(params))
    np.testing.assert_allclose(
        np.asarray(after_reset["w"])[m], np.asarray(first_step["w"])[m], rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(after_reset["w"])[m], (g / (np.abs(g) + eps))[m], rtol=1e-4
    )
    # Untouched entries continue exactly as without the reset.
    np.testing.assert_array_equal(np.asarray(after_reset["w"])[~m], np.asarray(no_reset["w"])[~m])


def test_counts_kept_unless_reset_count():
    optimizer, state = _trained("adam_per_entry")
    masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS)
    kept = reset_optimizer_state(optimizer, state, PARAMS, masks)
    for c in jax.tree.leaves(kept[0].count):
        assert np.all(np.asarray(c) == 4)
    for m in jax.tree.leaves(kept[0].mu):
        assert np.all(np.asarray(m) == 0)
    zeroed = reset_optimizer_state(optimizer, state, PARAMS, masks, reset_count=True)
    for c in jax.tree.leaves(zeroed[0].count):
        assert np.all(np.asarray(c) == 0)


def test_reset_count_needs_per_entry_counts():
    optimizer, state = _trained("adam")
    masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS)
    with pytest.raises(ValueError, match=r"reset_count=True.*adam_per_entry"):
        reset_optimizer_state(optimizer, state, PARAMS, masks, reset_count=True)


def test_per_entry_adam_inside_masked_transform():
    optimizer = optax.masked(adam_per_entry(1e-2), _is_weight)
    state = optimizer.init(PARAMS)
    _, state = optimizer.update(_random_grads(jax.random.key(0), PARAMS), state, PARAMS)
    masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), PARAMS)
    new_state = reset_optimizer_state(optimizer, state, PARAMS, masks, reset_count=True)
    inner = new_state.inner_state[0]
    counts = [c for c in jax.tree.leaves(inner.count)]
    assert len(counts) == N_WEIGHTS and all(np.all(np.asarray(c) == 0) for c in counts)


def test_state_of_integer_arrays_is_not_mistaken_for_step_counts():
    # eqx.filter(model, eqx.is_array) keeps integer buffers; their zeros_like "moments" are
    # integer and params-shaped, but they are not step counts and are not touched.
    params = {"w": jnp.ones((2, 3)), "seen": jnp.arange(3, dtype=jnp.int32)}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    assert state[0].mu["seen"].dtype == jnp.int32
    masks = {"w": None, "seen": jnp.ones(3, bool)}
    with pytest.raises(ValueError, match="no per-entry step counts"):
        reset_optimizer_state(optimizer, state, params, masks, reset_count=True)
    sgd = optax.sgd(1e-2, momentum=0.9)
    sgd_state = sgd.init(params)
    new_state = reset_optimizer_state(sgd, sgd_state, params, masks)
    for a, b in zip(jax.tree.leaves(sgd_state), jax.tree.leaves(new_state), strict=True):
        np.testing.assert_array_equal(a, b)
