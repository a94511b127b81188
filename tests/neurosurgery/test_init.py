"""Named initializers on jax.nn.initializers: the axes they get, their distributions, resets."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurosurgery as ns

# On 512 × 512 = 262,144 draws the sample std has a relative standard error of about 0.14 %, so
# 2 % is far outside chance yet catches a wrong fan (a factor of sqrt(2) or more).
STD_RTOL = 0.02


def _check_moments(x, std: float) -> None:
    x = np.asarray(x, np.float64)
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
    np.testing.assert_allclose(x.std(), std, rtol=STD_RTOL)


@pytest.mark.parametrize(
    "init, std",
    [
        (ns.lecun_normal(), lambda fan_in, fan_out: 1 / math.sqrt(fan_in)),
        (ns.lecun_normal(2.0), lambda fan_in, fan_out: 2 / math.sqrt(fan_in)),
        (ns.kaiming_normal(), lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
        (ns.xavier_uniform(), lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
        (ns.uniform_fan_in(), lambda fan_in, fan_out: 1 / math.sqrt(3 * fan_in)),
    ],
)
@pytest.mark.parametrize(
    "shape, unit_axes, fans",
    [
        ((256, 1024), (0,), (1024, 256)),  # Equinox Linear (out, in)
        ((1024, 256), (1,), (1024, 256)),  # a Flax-style kernel (in, out)
        ((256, 32, 3, 3), (0,), (32 * 9, 256 * 9)),  # Equinox conv (out, in, kh, kw)
    ],
)
def test_distributions_follow_the_units_axes(getkey, init, std, shape, unit_axes, fans):
    w = init(getkey(), shape, jnp.float32, unit_axes=unit_axes)
    assert w.shape == shape and w.dtype == jnp.float32
    _check_moments(w, std(*fans))


def test_uniform_fan_in_bounds_are_equinox_defaults(getkey):
    w = np.asarray(ns.uniform_fan_in()(getkey(), (512, 512), unit_axes=(0,)))
    bound = 1 / math.sqrt(512)
    assert w.min() >= -bound and w.max() <= bound and w.max() > 0.99 * bound


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 32)])
@pytest.mark.parametrize("scale", [1.0, math.sqrt(2)])
def test_orthogonal_units_of_a_linear(getkey, shape, scale):
    """Units along axis 0 (Equinox's (out, in)): rows orthonormal where they can be."""
    w = np.asarray(ns.orthogonal(scale)(getkey(), shape, unit_axes=(0,)), np.float64)
    small = min(shape)
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    np.testing.assert_allclose(gram, scale**2 * np.eye(small), atol=1e-5)


def test_orthogonal_conv_and_flax_layouts(getkey):
    w = np.asarray(ns.orthogonal(2.0)(getkey(), (8, 4, 3, 3), unit_axes=(0,)), np.float64)
    rows = w.reshape(8, 36)
    np.testing.assert_allclose(rows @ rows.T, 4.0 * np.eye(8), atol=1e-5)
    k = np.asarray(ns.orthogonal()(getkey(), (24, 6), unit_axes=(1,)), np.float64)
    np.testing.assert_allclose(k.T @ k, np.eye(6), atol=1e-5)
    with pytest.raises(ValueError, match="units and inputs"):
        ns.orthogonal()(getkey(), (8,), unit_axes=(0,))


def test_any_jax_initializer_and_its_options(getkey):
    he = ns.Initializer(jax.nn.initializers.he_uniform)
    _check_moments(he(getkey(), (512, 512), unit_axes=(0,)), math.sqrt(2 / 512))
    fan_avg = ns.Initializer(
        jax.nn.initializers.variance_scaling, scale=2.0, mode="fan_avg", distribution="normal"
    )
    _check_moments(fan_avg(getkey(), (256, 768), unit_axes=(0,)), math.sqrt(2 * 2 / 1024))
    with pytest.raises(TypeError, match="takes no option"):
        ns.Initializer(jax.nn.initializers.he_uniform, gain=2.0)
    with pytest.raises(ValueError, match="fan-in axis"):
        he(getkey(), (16,), unit_axes=(0,))
    # hashable values, so they can be static arguments of jit
    assert hash(ns.lecun_normal()) == hash(ns.lecun_normal()) and ns.lecun_normal(2.0) != he


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_rejected(scale):
    with pytest.raises(ValueError, match=r"scale=.*> 0"):
        ns.lecun_normal(scale)
    with pytest.raises(ValueError, match=r"scale=.*> 0"):
        ns.orthogonal(scale)


def test_a_reset_draws_with_the_anatomy_axes(getkey):
    """Re-drawn rows of a conv and of a Flax-style kernel follow each layer's own fans; biases
    are zeroed; members of a stacked ensemble get their own draws."""

    class Net(eqx.Module):
        conv: eqx.nn.Conv2d
        kernel: jax.Array  # (in, out)
        head: eqx.nn.Linear

        def __call__(self, x):
            h = jax.nn.relu(self.conv(x)).reshape(-1)
            return self.head(jax.nn.relu(h @ self.kernel))

    k1, k2, k3 = jax.random.split(getkey(), 3)
    net = Net(
        eqx.nn.Conv2d(8, 64, 3, key=k1),
        jax.random.normal(k2, (64 * 4 * 4, 512)),
        eqx.nn.Linear(512, 1, key=k3),
    )
    anatomy = ns.anatomy(net, jnp.zeros((8, 6, 6)))
    # (one group at a time: the conv's outgoing weights are the kernel's rows)
    new = ns.reset(anatomy, net, {"conv": jnp.ones(64, bool)}, getkey(), init=ns.kaiming_normal())
    _check_moments(new.model.conv.weight, math.sqrt(2 / (8 * 9)))
    assert (new.model.conv.bias == 0).all() and (new.model.kernel == 0).all()
    new = ns.reset(
        anatomy, net, {"kernel": jnp.ones(512, bool)}, getkey(), init=ns.kaiming_normal()
    )
    _check_moments(new.model.kernel, math.sqrt(2 / (64 * 16)))
    twin = eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 1, 4, 1, key=k))(jax.random.split(k1, 2))
    call = lambda m, x: eqx.filter_vmap(lambda c: c(x))(m)
    both = ns.anatomy(twin, jnp.zeros(3), fn=call)
    drawn = ns.reset(
        both, twin, {"layers[0]": jnp.ones((2, 4), bool)}, getkey(), init=ns.orthogonal()
    ).model
    w = np.asarray(drawn.layers[0].weight, np.float64)  # (2, 4, 3)
    assert not np.allclose(w[0], w[1])
    for member in w:
        np.testing.assert_allclose(member.T @ member, np.eye(3), atol=1e-5)
