"""L2-init (Kumar et al., "Maintaining plasticity in continual learning via regenerative
regularization", 2023): a pull of every parameter towards its initial value, as an optax
gradient transformation."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree


class L2InitState(NamedTuple):
    """The state of [`l2_init`][neurosurgery.l2_init]: the parameters it was initialised with."""

    initial: PyTree


def l2_init(strength: float) -> optax.GradientTransformation:
    """Add `strength · (θ − θ₀)` to the updates: the gradient of `strength/2 · ‖θ − θ₀‖²`, θ₀ the
    parameters `init` saw (Kumar et al. 2023; their loss term λ‖θ − θ₀‖² is `strength = 2λ`).

    Put it first in a chain, as `optax.add_decayed_weights` is used for weight decay, so that
    the pull passes through the optimizer like the loss's own gradient:
    `optax.chain(ns.l2_init(1e-2), optax.adam(1e-3))`. `update` needs the parameters
    (`optimizer.update(grads, opt_state, params)`).

    θ₀ is a parameter-shaped entry of the optimizer state, so a unit reset that resets the
    optimizer state ([`reset`][neurosurgery.reset] with `optimizer=`) sets the anchor of the
    reset entries to zero with the other entries: re-drawn units are then pulled towards zero
    (plain L2) rather than towards the weights they replaced; the others keep θ₀.
    """
    if isinstance(strength, bool) or not isinstance(strength, int | float):
        raise TypeError(f"l2_init: strength must be a number, got {strength!r}")
    if not (strength >= 0 and math.isfinite(strength)):
        raise ValueError(
            f"l2_init: strength={strength!r} is invalid: it scales the pull towards the initial "
            "parameters and must be a finite number >= 0 (0: no pull)"
        )

    def init(params: PyTree) -> L2InitState:
        return L2InitState(jax.tree.map(jnp.asarray, params))

    def update(
        updates: PyTree, state: optax.OptState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.OptState]:
        if params is None:
            raise ValueError(
                "l2_init needs the parameters to pull them towards their initial values: call "
                "optimizer.update(grads, opt_state, params)"
            )

        def pull(g, p, p0):
            if not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
                return g
            return g + strength * (p - p0).astype(jnp.result_type(g))

        assert isinstance(state, L2InitState)
        return jax.tree.map(pull, updates, params, state.initial), state

    return optax.GradientTransformation(init, update)
