"""One forward and backward pass that records what every metric needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._anatomy._anatomy import Anatomy
from .._errors import AnatomyError

#: where per-sample gradients are recorded: the unit's pre-activation (after any per-unit norm,
#: before the activation function) and its activation (as the next layer reads it)
SITES = ("preactivation", "activation")


class Observation(eqx.Module):
    """What a batch showed about a model's units: the input of every metric plugin.

    Every per-unit record is laid out as `(batch, positions, *unit_shape)`: `positions` is 1 for
    a dense layer and the number of spatial positions of a convolution, so that
    `jnp.mean(f(x), axis=(0, 1))` is a per-unit average over samples and positions.

    Attributes:
        activations: each observed group's activation.
        preactivation_grads: per-sample gradient of the loss at each group's pre-activation
            (`None` when the site was not observed).
        activation_grads: per-sample gradient at each group's activation (`None` likewise).
        weight_grads: the batch gradient of the loss for every parameter (model's structure).
        params: the model's parameters (model's structure).

    Per-sample gradients are those of the batch loss (for a mean loss they carry a factor
    1/batch); scores are normalised per layer, so they do not depend on the loss's scale.
    """

    activations: dict[str, Array]
    preactivation_grads: dict[str, Array] | None
    activation_grads: dict[str, Array] | None
    weight_grads: PyTree
    params: PyTree

    def grads(self, site: str) -> dict[str, Array]:
        """The per-sample gradients at `site` ("preactivation" or "activation")."""
        _check_sites((site,))
        grads = self.preactivation_grads if site == "preactivation" else self.activation_grads
        if grads is None:
            raise ValueError(
                f"This observation has no gradients at the {site!r} site; observe with "
                f"`sites` including {site!r}."
            )
        return grads


def _check_sites(sites: tuple[str, ...]) -> None:
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ValueError(f"unknown observation site(s) {unknown}; the sites are {list(SITES)}")


def _batch_size(anatomy: Anatomy, inputs: tuple[Any, ...]) -> int:
    """The common leading axis of `inputs`, checked against the anatomy's example."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(inputs, eqx.is_array))
    shapes = [tuple(np.shape(x)) for x in leaves]
    if len(shapes) != len(anatomy._example):
        raise AnatomyError(
            f"observe got {len(shapes)} array inputs but the anatomy was built with "
            f"{len(anatomy._example)} (shapes {list(anatomy._example)}); pass the model's "
            "arguments as the example was passed, each with a leading batch axis."
        )
    sizes = set()
    for i, (got, example) in enumerate(zip(shapes, anatomy._example, strict=True)):
        if got == example:
            raise AnatomyError(
                f"observe takes a batch, but input {i} has the example's own shape {got}: add a "
                f"leading batch axis (one sample: `x[None]`)."
            )
        if got[1:] != example:
            raise AnatomyError(
                f"Input {i} has shape {got}; a batch of the anatomy's example has shape "
                f"(batch, {', '.join(map(str, example))}). Pass the inputs as the example was "
                "passed, each with a leading batch axis."
            )
        sizes.add(got[0])
    if len(sizes) != 1:
        raise AnatomyError(f"The inputs' batch sizes differ ({sorted(sizes)}); give them one.")
    return sizes.pop()


def observe(
    anatomy: Anatomy,
    model: PyTree,
    loss: Callable[[Any], Any],
    *inputs: Any,
    sites: tuple[str, ...] = SITES,
    has_aux: bool = False,
) -> tuple[Any, Observation]:
    """Run `model` on a batch, with probes, and differentiate `loss` once.

    Args:
        anatomy: the model's anatomy.
        model: the model (its parameters may differ from the anatomy's example, not its shapes).
        loss: maps the model's batched outputs to a scalar, e.g.
            `lambda q: jnp.mean((q - target) ** 2)` (with `has_aux`, to `(scalar, aux)`).
        *inputs: the model's arguments with a leading batch axis (pytrees allowed), in the
            order of the anatomy's example.
        sites: where to record per-sample gradients (see `SITES`); `()` records none (then only
            activations, weights and weight gradients are observed).
        has_aux: `loss` returns `(value, aux)`; the first result is then `(value, aux)`.

    Returns:
        The loss (with `has_aux`: `(loss, aux)`) and an [`Observation`][neurosurgery.Observation].
        `observation.weight_grads` is the ordinary gradient of `loss`: use it for the optimizer
        step, so the scores come from the update's own backward pass.

    Raises:
        AnatomyError: the inputs are not a batch of the anatomy's example, or `loss` does not
            return a scalar.
    """
    _check_sites(tuple(sites))
    batch = _batch_size(anatomy, inputs)
    params, static = eqx.partition(model, eqx.is_array)

    def run(params: PyTree, perturb: dict) -> tuple[Any, dict[str, tuple[Array, ...]]]:
        m = eqx.combine(params, static)
        return jax.vmap(lambda p, *a: anatomy._tapped(m, p, *a))(perturb, *inputs)

    perturb = anatomy._zeros((batch,), tuple(sites))
    _check_loss(loss, jax.eval_shape(run, params, perturb)[0], has_aux)

    def objective(
        params: PyTree, perturb: dict
    ) -> tuple[Array, tuple[Any, dict[str, tuple[Array, ...]]]]:
        outputs, acts = run(params, perturb)
        out = loss(outputs)
        value, aux = out if has_aux else (out, None)
        return value, (aux, acts)

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    (value, (aux, acts)), (weight_grads, probe_grads) = grad_fn(params, perturb)

    def laid_out(values: dict[str, tuple[Array, ...]] | None, site: str) -> dict[str, Array] | None:
        if values is None:
            return None
        return {name: anatomy._layout(name, v, site) for name, v in values.items()}

    observation = Observation(
        activations=laid_out(acts, "activation") or {},
        preactivation_grads=laid_out(probe_grads.get("preactivation"), "preactivation"),
        activation_grads=laid_out(probe_grads.get("activation"), "activation"),
        weight_grads=weight_grads,
        params=params,
    )
    return ((value, aux) if has_aux else value), observation


def _check_loss(loss: Callable[[Any], Any], outputs: Any, has_aux: bool) -> None:
    """`loss` must map the batched outputs to a real scalar (and aux, with `has_aux`)."""
    try:
        out = jax.eval_shape(loss, outputs)
    except Exception as err:
        shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), outputs)
        raise AnatomyError(
            f"The loss fails on the model's batched outputs (shapes {shapes}): "
            f"{type(err).__name__}: {err}. `loss` takes the outputs of the whole batch."
        ) from err
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AnatomyError("With has_aux=True the loss must return a pair (value, aux).")
        out = out[0]
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        what = f"an array of shape {shape} and dtype {dtype}" if shape is not None else repr(out)
        raise AnatomyError(
            f"The loss must return a real scalar, got {what}: reduce it over the batch (e.g. "
            "`jnp.mean(...)`)"
            + (", or pass has_aux=True if it returns (value, aux)." if not has_aux else ".")
        )


def normalise(values: Float[Array, "*members n"], eps: float = 0.0) -> Float[Array, "*members n"]:
    """Divide by the layer mean (the last axis: the units of one member).

    With `eps = 0` (the default) the result does not depend on the values' scale (a sum or a
    mean loss, any batch size); a layer whose values are all zero scores 0. `eps > 0` adds an
    absolute constant to the mean, as ReDo's and GraMa's released code do (`+ 1e-9`), which makes
    small-scale values (per-sample gradients of a mean loss) score lower.
    """
    mean = jnp.mean(values, axis=-1, keepdims=True) + eps
    safe = jnp.where(mean > 0, mean, jnp.ones_like(mean))
    return jnp.where(mean > 0, values / safe, jnp.zeros_like(values))
