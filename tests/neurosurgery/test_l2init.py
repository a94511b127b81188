"""L2-init: the pull towards the initial parameters, against updates computed by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurosurgery as ns

STRENGTH, LR = 0.3, 0.1


def test_sgd_updates_by_hand():
    """With SGD, θ_{t+1} = θ_t − lr · (g_t + strength · (θ_t − θ₀)), for a fixed gradient g:
    three steps in numpy."""
    theta0 = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.2, -0.1])}
    grads = {"w": np.array([[0.4, 0.1], [-0.3, 0.2]]), "b": np.array([1.0, -0.5])}
    optimizer = optax.chain(ns.l2_init(STRENGTH), optax.sgd(LR))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta0)
    state = optimizer.init(params)
    expected = {k: v.copy() for k, v in theta0.items()}
    for _ in range(3):
        g = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads)
        updates, state = optimizer.update(g, state, params)
        params = optax.apply_updates(params, updates)
        for k in expected:
            expected[k] = expected[k] - LR * (grads[k] + STRENGTH * (expected[k] - theta0[k]))
        for k in expected:
            np.testing.assert_allclose(params[k], expected[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(params["w"], theta0["w"] - 3 * LR * grads["w"])  # the pull acted


def test_with_adam_it_is_the_gradient_of_the_penalty():
    """chain(l2_init, adam) on the loss's gradient equals adam on the gradient of
    loss + strength/2 · ‖θ − θ₀‖² (computed by jax.grad), step after step, jitted."""
    model = eqx.nn.MLP(3, 1, 8, 1, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    theta0 = params
    x = jax.random.normal(jax.random.key(1), (16, 3))
    y = jnp.sin(x[:, :1])
    loss = lambda p: jnp.mean((jax.vmap(eqx.combine(p, static))(x) - y) ** 2)
    penalised = lambda p: (
        loss(p)
        + STRENGTH
        / 2
        * sum(
            jnp.sum((a - b) ** 2)
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(theta0), strict=True)
        )
    )
    ours, plain = optax.chain(ns.l2_init(STRENGTH), optax.adam(LR)), optax.adam(LR)

    @jax.jit
    def step(p, q, s_ours, s_plain):
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
            u, s_ours = ours.update(jax.grad(loss)(p), s_ours, p)
            v, s_plain = plain.update(jax.grad(penalised)(q), s_plain, q)
        return optax.apply_updates(p, u), optax.apply_updates(q, v), s_ours, s_plain

    p, q, s_ours, s_plain = params, params, ours.init(params), plain.init(params)
    for _ in range(5):
        p, q, s_ours, s_plain = step(p, q, s_ours, s_plain)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the anchor stays θ₀
    for a, b in zip(jax.tree.leaves(s_ours[0].initial), jax.tree.leaves(theta0), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_unit_reset_zeroes_the_anchor_of_the_reset_entries_only():
    make = lambda k: eqx.nn.MLP(3, 1, 6, 1, key=k)
    model = make(jax.random.key(2))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    optimizer = optax.chain(ns.l2_init(STRENGTH), optax.adam(LR))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    masks = {"layers[0]": jnp.arange(6) == 1}
    result = ns.reset(
        anatomy,
        model,
        masks,
        jax.random.key(3),
        init=make,
        optimizer=optimizer,
        opt_state=opt_state,
    )
    anchor = jax.tree.map(np.asarray, result.opt_state[0].initial)
    w0 = np.asarray(model.layers[0].weight)
    np.testing.assert_array_equal(anchor.layers[0].weight[1], 0.0)
    np.testing.assert_array_equal(anchor.layers[0].weight[[0, 2, 3, 4, 5]], w0[[0, 2, 3, 4, 5]])
    np.testing.assert_array_equal(anchor.layers[1].weight[:, 1], 0.0)  # outgoing entries
    np.testing.assert_array_equal(anchor.layers[1].weight[:, 0], model.layers[1].weight[:, 0])


def test_bad_options_and_a_missing_params_argument():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"strength=.* is invalid.*finite number >= 0"):
            ns.l2_init(bad)
    optimizer = ns.l2_init(0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(
        ValueError, match=r"needs the parameters.*update\(grads, opt_state, params\)"
    ):
        optimizer.update(params, optimizer.init(params))
