"""Observations: each group's activation and per-sample gradients, read from the traced program."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns
from agents.networks import BroNet


@pytest.mark.newest
def test_activations_match_the_model_and_hand_computed_values(getkey):
    mlp = eqx.nn.MLP(3, 2, 5, 2, activation=jax.nn.relu, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (4, 3))
    value, obs = ns.observe(anatomy, mlp, jnp.sum, xs)
    np.testing.assert_allclose(value, jnp.sum(jax.vmap(mlp)(xs)), rtol=1e-6)
    l0, l1, _ = mlp.layers
    x = np.asarray(xs)
    h0 = np.maximum(x @ np.asarray(l0.weight).T + np.asarray(l0.bias), 0)
    h1 = np.maximum(h0 @ np.asarray(l1.weight).T + np.asarray(l1.bias), 0)
    np.testing.assert_allclose(obs.activations["layers[0]"][:, 0], h0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obs.activations["layers[1]"][:, 0], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obs.activations["layers[2]"][:, 0], jax.vmap(mlp)(xs), rtol=1e-6)


@pytest.mark.newest
def test_preactivation_gradient_per_sample(getkey):
    """d loss / d perturbation = the gradient at W x + b (before ReLU), one per sample."""
    mlp = eqx.nn.MLP(3, 1, 4, 1, activation=jax.nn.relu, key=getkey())
    anatomy = ns.anatomy(mlp, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (6, 3))
    _, obs = ns.observe(anatomy, mlp, lambda ys: jnp.mean(ys**2), xs)
    pre, post = obs.grads("preactivation")["layers[0]"], obs.grads("activation")["layers[0]"]
    l0, l1 = mlp.layers
    for n in range(6):
        z = l0.weight @ xs[n] + l0.bias
        y = l1.weight @ jnp.maximum(z, 0) + l1.bias
        # d (y^2 / N) / dz = 2 y / N * W1 * relu'(z); at the activation, without relu'(z)
        expected = 2 * y[0] / 6 * l1.weight[0] * (z > 0).astype(jnp.float32)
        np.testing.assert_allclose(pre[n, 0], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(post[n, 0], 2 * y[0] / 6 * l1.weight[0], rtol=1e-5, atol=1e-7)


def test_preactivation_sits_after_the_norm_and_before_the_activation(getkey):
    net = BroNet(3, 1, width=4, blocks=1, key=getkey())
    anatomy = ns.anatomy(net, jnp.zeros(3))
    x = jax.random.normal(getkey(), (3,))
    z_stem = net.stem_norm(net.stem(x))

    def rest(z):
        return net.head(net.blocks[0](jax.nn.relu(z)))[0]

    _, obs = ns.observe(anatomy, net, lambda ys: ys[0, 0], x[None])
    np.testing.assert_allclose(
        obs.grads("preactivation")["stem"][0, 0], jax.grad(rest)(z_stem), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(obs.activations["stem"][0, 0], jax.nn.relu(z_stem), rtol=1e-6)
    # The block's second layer has no activation: its output is LN(dense2(h)) before the add.
    h = jax.nn.relu(net.blocks[0].norm1(net.blocks[0].dense1(jax.nn.relu(z_stem))))
    np.testing.assert_allclose(
        obs.activations["blocks[0].dense2"][0, 0],
        net.blocks[0].norm2(net.blocks[0].dense2(h)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_conv_records_lay_positions_on_their_own_axis(getkey):
    conv = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, 3, key=getkey()),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(3 * 4 * 4, 1, key=getkey()),
        ]
    )
    anatomy = ns.anatomy(conv, jnp.zeros((2, 6, 6)))
    xs = jax.random.normal(getkey(), (5, 2, 6, 6))
    _, obs = ns.observe(anatomy, conv, jnp.sum, xs)
    h = np.asarray(jnp.tanh(jax.vmap(conv.layers[0])(xs)))  # (5, 3, 4, 4)
    np.testing.assert_allclose(
        obs.activations["layers[0]"], h.reshape(5, 3, 16).transpose(0, 2, 1), rtol=1e-5
    )
    assert obs.grads("preactivation")["layers[0]"].shape == (5, 16, 3)


def test_a_layout_out_of_unit_order_is_gathered(getkey):
    """Units read in another order than they were made (here: reversed) still land on their
    own index of the unit axis."""

    class Reversed(eqx.Module):
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear

        def __call__(self, x):
            h = self.l1(x)
            return self.l2(jnp.tanh(h.reshape(2, 3).T).T.reshape(6))

    k1, k2 = jax.random.split(getkey())
    model = Reversed(eqx.nn.Linear(3, 6, key=k1), eqx.nn.Linear(6, 1, key=k2))
    anatomy = ns.anatomy(model, jnp.zeros(3))
    xs = jax.random.normal(getkey(), (4, 3))
    _, obs = ns.observe(anatomy, model, jnp.sum, xs)
    expected = np.tanh(np.asarray(jax.vmap(model.l1)(xs)))
    np.testing.assert_allclose(obs.activations["l1"][:, 0], expected, rtol=1e-6, atol=1e-7)


def test_a_different_model_is_rejected(getkey):
    anatomy = ns.anatomy(eqx.nn.MLP(3, 1, 4, 1, key=getkey()), jnp.zeros(3))
    other = eqx.nn.MLP(3, 1, 5, 1, key=getkey())
    # the message names the first leaf that differs and both shapes
    match = r"does not match this anatomy.*leaf 0, .*layers\[0\]\.weight: shape \(4, 3\) in the "
    with pytest.raises(ns.AnatomyError, match=match + r"anatomy, shape \(5, 3\) in this model"):
        ns.observe(anatomy, other, jnp.sum, jnp.zeros((2, 3)))
    deeper = eqx.nn.MLP(3, 1, 4, 2, key=getkey())  # the same first leaves, then more
    with pytest.raises(ns.AnatomyError, match=r"got a MLP with 6.*leaf 2, .*layers\[1\]\.weight"):
        ns.observe(anatomy, deeper, jnp.sum, jnp.zeros((2, 3)))
