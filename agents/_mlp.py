"""Configurable MLP trunks for SAC's actor and critics (plain or residual, optional LayerNorm)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

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
