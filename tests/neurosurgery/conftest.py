"""Models shared by the library's tests, and every architecture built once per session."""

import types

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import neurosurgery as ns
from agents.networks import BroNet, Denoiser


class Inline(eqx.Module):
    """Parameters as raw arrays, activations called inline, weights used as x @ W."""

    w1: jax.Array
    w2: jax.Array
    b2: jax.Array
    w3: jax.Array

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.w1 = jax.random.normal(k1, (3, 5))
        self.w2 = jax.random.normal(k2, (5, 4))
        self.b2 = jnp.zeros(4)
        self.w3 = jax.random.normal(k3, (4, 2))

    def __call__(self, x):
        h = jax.nn.leaky_relu(x @ self.w1)
        h = jax.nn.silu(h @ self.w2 + self.b2)
        return h @ self.w3


class ConvNet(eqx.Module):
    c1: eqx.nn.Conv2d
    c2: eqx.nn.Conv2d
    fc: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.c1 = eqx.nn.Conv2d(2, 3, 3, key=k[0])
        self.c2 = eqx.nn.Conv2d(3, 4, 3, key=k[1])
        self.fc = eqx.nn.Linear(4 * 2 * 2, 5, key=k[2])
        self.out = eqx.nn.Linear(5, 1, key=k[3])

    def __call__(self, x):
        x = jax.nn.relu(self.c1(x))
        x = jax.nn.relu(self.c2(x))
        return self.out(jax.nn.relu(self.fc(x.reshape(-1))))


class TwoHeads(eqx.Module):
    trunk: eqx.nn.Linear
    policy: eqx.nn.Linear
    value: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.trunk = eqx.nn.Linear(3, 6, key=k[0])
        self.policy = eqx.nn.Linear(6, 2, key=k[1])
        self.value = eqx.nn.Linear(6, 1, key=k[2])

    def __call__(self, x):
        h = jax.nn.relu(self.trunk(x))
        return self.policy(h), self.value(h)


def small_mlp(key):
    return eqx.nn.MLP(3, 2, 6, 2, activation=jax.nn.tanh, key=key)


def _seq(key):
    k1, k2 = jax.random.split(key)
    return eqx.nn.Sequential(
        [eqx.nn.Linear(3, 5, key=k1), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(5, 2, key=k2)]
    )


def _twin(key):
    return eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 1, 4, 2, key=k))(jax.random.split(key, 2))


def _twin_call(m, x):
    return eqx.filter_vmap(lambda c: c(x))(m)


#: name: (constructor, example args, call fn)
ARCHS = {
    "mlp": (small_mlp, (jnp.zeros(3),), None),
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


class Arch(types.SimpleNamespace):
    """One architecture: its constructor, a model, its anatomy, a jitted reset and a batch."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch_name" in metafunc.fixturenames:
        metafunc.parametrize("arch_name", list(ARCHS))


@pytest.fixture(scope="session")
def zoo():
    """The model classes shared by the tests."""
    return types.SimpleNamespace(Inline=Inline, ConvNet=ConvNet, TwoHeads=TwoHeads)


@pytest.fixture(scope="session")
def archs():
    """`archs(name)`: the architecture, built (and its reset compiled) once per session."""
    cache: dict[str, Arch] = {}

    def build(name: str) -> Arch:
        if name not in cache:
            make, example, fn = ARCHS[name]
            model = make(jax.random.key(1))
            anatomy = ns.anatomy(model, *example, fn=fn)
            batch = jax.tree_util.tree_map(
                lambda x: jax.random.normal(jax.random.key(2), (4, *x.shape)), example
            )

            @eqx.filter_jit
            def reset(model, masks, key):
                return ns.reset(anatomy, model, masks, key, init=make).model

            def outputs(model):
                return jax.vmap(lambda *a: anatomy._tapped(model, None, *a)[0])(*batch)

            cache[name] = Arch(
                make=make, model=model, anatomy=anatomy, reset=reset, batch=batch, outputs=outputs
            )
        return cache[name]

    return build
