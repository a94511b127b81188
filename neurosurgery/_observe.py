"""One forward and backward pass that records what every metric needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._anatomy import Anatomy


class Observation(eqx.Module):
    """What a batch showed about a model's units: the input of every metric plugin.

    Attributes:
        acts: each observed group's activation, `(batch, *site shape)`.
        pre_grads: per-sample gradient of the loss at each group's pre-activation (`None` when
            not recorded).
        post_grads: per-sample gradient at each group's activation (`None` when not recorded).
        weight_grads: the batch gradient of the loss for every parameter (model's structure).
        params: the model's parameters (model's structure).

    Per-sample gradients are those of the batch loss: for a mean loss they carry a factor
    1/batch, which the per-layer normalisation of every score cancels.
    """

    acts: dict[str, Array]
    pre_grads: dict[str, Array] | None
    post_grads: dict[str, Array] | None
    weight_grads: PyTree
    params: PyTree


def observe(
    anatomy: Anatomy,
    model: PyTree,
    loss: Callable[[Any], Float[Array, ""]],
    *inputs: Any,
    sites: tuple[str, ...] = ("pre", "post"),
) -> tuple[Float[Array, ""], Observation]:
    """Run `model` on a batch, with probes, and differentiate `loss` once.

    Args:
        anatomy: the model's anatomy.
        model: the model (its parameters may differ from the anatomy's example, not its shapes).
        loss: maps the model's batched outputs to a scalar, e.g.
            `lambda q: jnp.mean((q - target) ** 2)`.
        *inputs: the model's arguments with a leading batch axis (pytrees allowed).
        sites: which per-sample gradients to record (`"pre"`, `"post"`).

    Returns:
        The loss and an [`Observation`][neurosurgery.Observation]. `observation.weight_grads` is
        the ordinary gradient of `loss`: use it for the optimizer step, so the scores come from
        the update's own backward pass.
    """
    batch = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    params, static = eqx.partition(model, eqx.is_array)

    def objective(params: PyTree, perturb: dict) -> tuple[Array, dict[str, Array]]:
        m = eqx.combine(params, static)
        run = lambda p, *a: anatomy.tapped(m, p, *a)
        outputs, acts = jax.vmap(run)(perturb, *inputs)
        return loss(outputs), acts

    perturb = anatomy.zeros((batch,), sites=sites)
    grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    (value, acts), (weight_grads, probe_grads) = grad_fn(params, perturb)
    return value, Observation(
        acts=acts,
        pre_grads=probe_grads.get("pre"),
        post_grads=probe_grads.get("post"),
        weight_grads=weight_grads,
        params=params,
    )


def normalise(values: Array, eps: float) -> Array:
    """Divide by the layer mean (the last axis: units of one member) plus `eps`."""
    return values / (jnp.mean(values, axis=-1, keepdims=True) + eps)
