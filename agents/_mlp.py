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


def dense(linear: eqx.nn.Linear, x: Float[Array, " i"]) -> Float[Array, " o"]:
    """`linear(x)` written as `x @ W.T + b`.

    The same function of one sample, but under `vmap` over a batch it lowers to one matrix
    product with the batch as rows, where `W @ x` (what `eqx.nn.Linear` computes) lowers to a
    product with the batch as columns followed by a transpose of every activation and gradient:
    5–10 % of a SAC update of 256×2 networks on CPU.
    """
    y = x @ linear.weight.T
    return y if linear.bias is None else y + linear.bias


class _Hidden(eqx.Module):
    """Linear, optional LayerNorm, activation: one hidden layer of units."""

    linear: eqx.nn.Linear
    norm: eqx.nn.LayerNorm | None
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        h = dense(self.linear, x)
        if self.norm is not None:
            h = self.norm(h)
        return self.activation(h)


class _Block(eqx.Module):
    """Residual block: x + Linear(hidden(x))."""

    hidden: _Hidden
    out: eqx.nn.Linear

    def __call__(self, x: Array) -> Array:
        return x + dense(self.out, self.hidden(x))


class MLP(eqx.Module):
    """Input layer, hidden layers or residual blocks, linear head. Acts on one sample."""

    layers: tuple[_Hidden | _Block, ...]
    head: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, config: NetworkConfig, *, key: PRNGKeyArray):
        act = ACTIVATIONS[config.activation]
        keys = iter(jax.random.split(key, 2 * config.depth + 2))

        def hidden(n_in: int) -> _Hidden:
            norm = eqx.nn.LayerNorm(config.width) if config.layer_norm else None
            return _Hidden(eqx.nn.Linear(n_in, config.width, key=next(keys)), norm, act)

        if config.residual:
            layers: list[_Hidden | _Block] = [hidden(in_size)]
            for _ in range(config.depth):
                out = eqx.nn.Linear(config.width, config.width, key=next(keys))
                layers.append(_Block(hidden(config.width), out))
        else:
            layers = [hidden(in_size if i == 0 else config.width) for i in range(config.depth)]
        self.layers = tuple(layers)
        self.head = eqx.nn.Linear(config.width, out_size, key=next(keys))

    def __call__(self, x: Float[Array, " i"]) -> Float[Array, " o"]:
        for layer in self.layers:
            x = layer(x)
        return dense(self.head, x)
