"""Probes: the activation and pre-activation of each group, read from the traced program."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import neurosurgery as ns
from agents.networks import BroNet


def test_tapped_matches_model_and_hand_computed_activations(getkey):
    mlp = eqx.nn.MLP(3, 2, 5, 2, activation=jax.nn.relu, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    x = jax.random.normal(getkey(), (3,))
    y, acts = anatomy.tapped(mlp, anatomy.zeros(), x)
    np.testing.assert_array_equal(y, mlp(x))
    l0, l1, _l2 = mlp.layers
    h0 = np.maximum(np.asarray(l0.weight) @ np.asarray(x) + np.asarray(l0.bias), 0)
    h1 = np.maximum(np.asarray(l1.weight) @ h0 + np.asarray(l1.bias), 0)
    np.testing.assert_allclose(acts["layers[0]"], h0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acts["layers[1]"], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acts["layers[2]"], y, rtol=1e-6)


def test_preactivation_gradient_per_sample(getkey):
    """d loss / d perturbation = the gradient at W x + b (before ReLU), one per sample."""
    mlp = eqx.nn.MLP(3, 1, 4, 1, activation=jax.nn.relu, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (6, 3))

    def loss(perturb):
        ys, _ = jax.vmap(anatomy.tapped, in_axes=(None, 0, 0))(mlp, perturb, xs)
        return jnp.mean(ys**2)

    all_grads = jax.grad(loss)(anatomy.zeros((6,)))
    grads, post = all_grads["pre"]["layers[0]"], all_grads["post"]["layers[0]"]
    l0, l1 = mlp.layers
    for n in range(6):
        z = l0.weight @ xs[n] + l0.bias
        y = l1.weight @ jnp.maximum(z, 0) + l1.bias
        # d (y^2 / N) / dz = 2 y / N * W1 * relu'(z); at the activation, without relu'(z)
        expected = 2 * y[0] / 6 * l1.weight[0] * (z > 0).astype(jnp.float32)
        np.testing.assert_allclose(grads[n], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(post[n], 2 * y[0] / 6 * l1.weight[0], rtol=1e-5, atol=1e-7)


def test_preactivation_sits_after_the_norm_and_before_the_activation(getkey):
    net = BroNet(3, 1, width=4, blocks=1, key=getkey())
    anatomy = ns.anatomy(net, jnp.zeros(3))
    x = jax.random.normal(getkey(), (3,))
    z_stem = net.stem_norm(net.stem(x))

    def rest(z):
        return net.head(net.blocks[0](jax.nn.relu(z)))[0]

    expected = jax.grad(rest)(z_stem)
    got = jax.grad(lambda p: anatomy.tapped(net, p, x)[0][0])(anatomy.zeros())
    np.testing.assert_allclose(got["pre"]["stem"], expected, rtol=1e-5, atol=1e-7)
    _, acts = anatomy.tapped(net, None, x)
    np.testing.assert_allclose(acts["stem"], jax.nn.relu(z_stem), rtol=1e-6)
    # The block's second layer has no activation: its output is LN(dense2(h)) before the add.
    h = jax.nn.relu(net.blocks[0].norm1(net.blocks[0].dense1(jax.nn.relu(z_stem))))
    np.testing.assert_allclose(acts["blocks[0].dense2"],
                               net.blocks[0].norm2(net.blocks[0].dense2(h)), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_pool_averages_conv_positions(getkey):
    conv = eqx.nn.Sequential([
        eqx.nn.Conv2d(2, 3, 3, key=getkey()), eqx.nn.Lambda(jnp.tanh),
        eqx.nn.Lambda(jnp.ravel), eqx.nn.Linear(3 * 4 * 4, 1, key=getkey()),
    ])  # fmt: skip
    anatomy = ns.anatomy(conv, jnp.zeros((2, 6, 6)))
    xs = jax.random.normal(getkey(), (5, 2, 6, 6))
    _, acts = jax.vmap(anatomy.tapped, in_axes=(None, None, 0))(conv, None, xs)
    h = jnp.tanh(jax.vmap(conv.layers[0])(xs))  # (5, 3, 4, 4)
    pooled = anatomy.pool("layers[0]", jnp.abs(acts["layers[0]"]))
    np.testing.assert_allclose(pooled, np.abs(np.asarray(h)).mean(axis=(2, 3)), rtol=1e-5)


def test_tapped_rejects_a_different_model(getkey):
    anatomy = ns.anatomy(eqx.nn.MLP(3, 1, 4, 1, key=getkey()), jnp.zeros(3))
    other = eqx.nn.MLP(3, 1, 5, 1, key=getkey())
    try:
        anatomy.tapped(other, None, jnp.zeros(3))
    except ns.AnatomyError as err:
        assert "does not match this anatomy" in str(err) and "layers[0].weight" in str(err)
    else:  # pragma: no cover
        raise AssertionError("no error")
