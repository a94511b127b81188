"""The agents' networks as plain Equinox modules: SAC's configurable MLPs, BRO's BroNet, DACER's
denoiser.

Nothing here tells neurosurgery where the neurons are: the anatomy reads them from the traced
computation. Architectures follow the papers (see the BRO and DACER pages of the docs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

import neurosurgery as ns

M = TypeVar("M")

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "mish": jax.nn.mish,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
}


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of one network: hidden width, depth, activation and normalisation."""

    width: int = 256
    """Units per hidden layer."""
    depth: int = 2
    """Hidden layers (plain) or residual blocks after the input layer (residual)."""
    activation: str = "relu"
    """One of relu, leaky_relu, tanh, sigmoid, gelu, mish, silu, elu."""
    layer_norm: bool = False
    """LayerNorm on every hidden pre-activation (after the Linear, before the activation)."""
    residual: bool = False
    """Residual blocks `x + Linear(act(norm(Linear(x))))` after the input layer."""

    def validate(self, name: str) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"{name}.activation {self.activation!r} is unknown; choose from "
                f"{', '.join(sorted(ACTIVATIONS))}"
            )
        if self.width <= 0 or self.depth < (0 if self.residual else 1):
            raise ValueError(f"{name}: width must be > 0 and depth >= 1 (>= 0 when residual)")


class Dense(eqx.Module):
    """An affine layer `x @ weight + bias` with the weight stored `(in, out)`.

    The same function and initial values as `eqx.nn.Linear` for the same key (weight and bias
    drawn from U(−1/√in, 1/√in)), with the transposed layout. Under `vmap` over a batch it lowers to one
    matrix product with the batch as rows, and the weight's gradient `xᵀ·δ` comes out in the
    layout it is stored in. With `eqx.nn.Linear`'s `(out, in)` layout, `W @ x` transposes every
    activation and gradient (5–10 % of a SAC update of 256×2 networks on CPU), and `x @ W.T`
    has XLA write the first layer's weight gradient as a `(256, in)` matrix, a slow shape for a
    CPU matrix product when `in` is the observation size (~0.1 ms per critic and update).
    """

    weight: Float[Array, "i o"]
    bias: Float[Array, " o"]

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray):
        # Drawn as `eqx.nn.Linear(in_size, out_size, key=key)` draws its `(out, in)` weight, then
        # stored transposed: the same initial network for the same key.
        k_w, k_b = jax.random.split(key)
        bound = 1.0 / in_size**0.5
        self.weight = jax.random.uniform(k_w, (out_size, in_size), minval=-bound, maxval=bound).T
        self.bias = jax.random.uniform(k_b, (out_size,), minval=-bound, maxval=bound)

    def __call__(self, x: Float[Array, " i"]) -> Float[Array, " o"]:
        return x @ self.weight + self.bias


class _Hidden(eqx.Module):
    """Linear, optional LayerNorm, activation: one hidden layer of units."""

    linear: Dense
    norm: eqx.nn.LayerNorm | None
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        h = self.linear(x)
        if self.norm is not None:
            h = self.norm(h)
        return self.activation(h)


class _Block(eqx.Module):
    """Residual block: x + Linear(hidden(x))."""

    hidden: _Hidden
    out: Dense

    def __call__(self, x: Array) -> Array:
        return x + self.out(self.hidden(x))


class MLP(eqx.Module):
    """Input layer, hidden layers or residual blocks, linear head. Acts on one sample."""

    layers: tuple[_Hidden | _Block, ...]
    head: Dense

    def __init__(self, in_size: int, out_size: int, config: NetworkConfig, *, key: PRNGKeyArray):
        act = ACTIVATIONS[config.activation]
        keys = iter(jax.random.split(key, 2 * config.depth + 2))

        def hidden(n_in: int) -> _Hidden:
            norm = eqx.nn.LayerNorm(config.width) if config.layer_norm else None
            return _Hidden(Dense(n_in, config.width, key=next(keys)), norm, act)

        if config.residual:
            layers: list[_Hidden | _Block] = [hidden(in_size)]
            for _ in range(config.depth):
                out = Dense(config.width, config.width, key=next(keys))
                layers.append(_Block(hidden(config.width), out))
        else:
            layers = [hidden(in_size if i == 0 else config.width) for i in range(config.depth)]
        self.layers = tuple(layers)
        self.head = Dense(config.width, out_size, key=next(keys))

    def __call__(self, x: Float[Array, " i"]) -> Float[Array, " o"]:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def inject_heads(strategy: ns.PlasticityInjection, network: eqx.Module) -> eqx.Module:
    """`network` with the head of every `MLP` inside it made injectable (plasticity injection:
    the injected head's parameters exist from the start, so the training state keeps its
    shapes)."""
    found = [x for x in jax.tree.leaves(network, is_leaf=_is_mlp) if _is_mlp(x)]
    if not found:
        raise ValueError(
            f"plasticity injection: the {type(network).__name__} holds no MLP whose head could "
            "be injected"
        )

    def wrap(x):
        if not _is_mlp(x):
            return x
        return strategy.wrap(x, jnp.zeros(x.layers[0].linear.weight.shape[0]))

    return jax.tree.map(wrap, network, is_leaf=_is_mlp)


def _is_mlp(x: object) -> bool:
    return isinstance(x, MLP)


def orthogonal_dense(in_size: int, out_size: int, scale: float, *, key: PRNGKeyArray) -> Dense:
    """A `Dense` layer with orthogonal weights (gain `scale`) and zero bias: the orthogonal
    `(out, in)` draw of `jax.nn.initializers.orthogonal` for `key`, stored transposed."""
    weight = jax.nn.initializers.orthogonal(scale)(key, (out_size, in_size), jnp.float32).T
    dense = Dense(in_size, out_size, key=key)
    return eqx.tree_at(lambda d: (d.weight, d.bias), dense, (weight, jnp.zeros(out_size)))


class BroBlock(eqx.Module):
    """`x + LN(Dense(ReLU(LN(Dense(x)))))` — no activation after the add."""

    dense1: Dense
    norm1: eqx.nn.LayerNorm
    dense2: Dense
    norm2: eqx.nn.LayerNorm

    def __init__(self, width: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.dense1 = orthogonal_dense(width, width, math.sqrt(2), key=k1)
        self.norm1 = eqx.nn.LayerNorm(width)
        self.dense2 = orthogonal_dense(width, width, math.sqrt(2), key=k2)
        self.norm2 = eqx.nn.LayerNorm(width)

    def __call__(self, x: Float[Array, " width"]) -> Float[Array, " width"]:
        h = jax.nn.relu(self.norm1(self.dense1(x)))
        return x + self.norm2(self.dense2(h))


class BroNet(eqx.Module):
    """BroNet: stem `ReLU(LN(Dense(x)))`, residual blocks, separate output Dense.

    Hidden layers are orthogonal with gain √2; the output layer's gain is `head_scale` (BRO's
    released code: √2 for critics and the actor's mean, 1 for its log σ). Its layers are `Dense`
    (weights stored `(in, out)`): under `vmap` over a batch each is one plain matrix product.
    """

    stem: Dense
    stem_norm: eqx.nn.LayerNorm
    blocks: tuple[BroBlock, ...]
    head: Dense

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int = 512,
        blocks: int = 2,
        *,
        head_scale: float = 1.0,
        key: PRNGKeyArray,
    ):
        keys = jax.random.split(key, blocks + 2)
        self.stem = orthogonal_dense(in_size, width, math.sqrt(2), key=keys[0])
        self.stem_norm = eqx.nn.LayerNorm(width)
        self.blocks = tuple(BroBlock(width, key=k) for k in keys[1:-1])
        self.head = orthogonal_dense(width, out_size, head_scale, key=keys[-1])

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class BroCritic(eqx.Module):
    """A BroNet on concat(obs, action) with a quantile head (BRO: 100 quantiles, gain √2)."""

    net: BroNet

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        width: int = 512,
        blocks: int = 2,
        n_quantiles: int = 100,
        *,
        key: PRNGKeyArray,
    ):
        self.net = BroNet(
            obs_size + action_size, n_quantiles, width, blocks, head_scale=math.sqrt(2), key=key
        )

    def __call__(
        self, obs: Float[Array, " obs"], action: Float[Array, " act"]
    ) -> Float[Array, " q"]:
        return self.net(jnp.concatenate([obs, action]))


def draw_members(make: Callable[[PRNGKeyArray], M], key: PRNGKeyArray, n: int) -> tuple[M, ...]:
    """`n` networks `make(k)` for the keys `jax.random.split(key, n)`, each its own module.

    They are drawn together (the same draws as one by one), so that a program that builds fresh
    ones compiles each layer's draw once, not once per member; then taken apart, since under
    `vmap` over a batch a member's layers lower to plain matrix products, while a `vmap` over
    stacked members gives batched products, which a CPU runs slower (a BRO twin critic's
    gradient: 1.6× at width 64, 3× at 256). A surgery step reads each member's layers as their
    own groups.
    """
    stacked = eqx.filter_vmap(make)(jax.random.split(key, n))
    params, static = eqx.partition(stacked, eqx.is_array)
    return tuple(eqx.combine(jax.tree.map(lambda x, i=i: x[i], params), static) for i in range(n))


class BroTwinCritic(eqx.Module):
    """BRO's two critics (`members`, each a `BroCritic`); called on one sample, both critics'
    quantiles stacked `[2, n_quantiles]`."""

    members: tuple[BroCritic, ...]

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        width: int = 512,
        blocks: int = 2,
        n_quantiles: int = 100,
        *,
        key: PRNGKeyArray,
        n: int = 2,
    ):
        make = lambda k: BroCritic(obs_size, action_size, width, blocks, n_quantiles, key=k)
        self.members = draw_members(make, key, n)

    def __call__(
        self, obs: Float[Array, " obs"], action: Float[Array, " act"]
    ) -> Float[Array, "n q"]:
        return jnp.stack([c(obs, action) for c in self.members])


def sinusoidal_embedding(t: Float[Array, ""], dim: int = 16) -> Float[Array, " dim"]:
    """Sinusoidal embedding of a scalar time, scaled by 1/√dim as in DACER's released code:
    [sin(t·f_k), cos(t·f_k)]/√dim with f_k = 10000^(−k/(dim/2)), k = 0 … dim/2 − 1."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)]) / math.sqrt(dim)


class Denoiser(eqx.Module):
    """DACER's noise predictor ε̂(obs, x_t, t).

    Time: sinusoidal embedding (16) → Linear 32 → mish → Linear 16. Then
    concat(obs, x_t, embedding) → MLP (3 × 256, mish) → |A| outputs.
    """

    time1: eqx.nn.Linear
    time2: eqx.nn.Linear
    mlp: eqx.nn.MLP
    embed_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        width: int = 256,
        depth: int = 3,
        embed_dim: int = 16,
        *,
        key: PRNGKeyArray,
    ):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed_dim = embed_dim
        self.time1 = eqx.nn.Linear(embed_dim, 2 * embed_dim, key=k1)
        self.time2 = eqx.nn.Linear(2 * embed_dim, embed_dim, key=k2)
        self.mlp = eqx.nn.MLP(
            obs_size + action_size + embed_dim,
            action_size,
            width,
            depth,
            activation=jax.nn.mish,
            key=k3,
        )

    def __call__(
        self, obs: Float[Array, " obs"], x_t: Float[Array, " act"], t: Float[Array, ""]
    ) -> Float[Array, " act"]:
        emb = self.time2(jax.nn.mish(self.time1(sinusoidal_embedding(t, self.embed_dim))))
        return self.mlp(jnp.concatenate([obs, x_t, emb]))
