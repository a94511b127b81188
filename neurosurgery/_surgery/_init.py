"""Named distributions for re-drawn weights, on `jax.nn.initializers`.

A reset re-draws a revived unit's incoming weights. The usual source is the model's own
constructor (each layer's own initializer); an [`Initializer`][neurosurgery.Initializer] is the
alternative: a `jax.nn.initializers` factory with its options, to which the anatomy supplies the
axes of each leaf it re-draws. The units' axes are the fan-out axes; for a matrix the other axis
is the fan-in; for a weight with more axes (Equinox's convolutions, `(out, in, *kernel)`) the
first other axis is the fan-in and the rest are the receptive field, which multiplies both fans,
as `jax.nn.initializers` counts them. Stacked members (ensembles) are drawn one by one.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, PRNGKeyArray

__all__ = [
    "Initializer",
    "kaiming_normal",
    "lecun_normal",
    "orthogonal",
    "uniform_fan_in",
    "xavier_uniform",
]


@dataclasses.dataclass(frozen=True)
class Initializer:
    """A `jax.nn.initializers` factory and its options, e.g.
    `ns.Initializer(jax.nn.initializers.he_uniform)` or
    `ns.Initializer(jax.nn.initializers.variance_scaling, scale=2.0, mode="fan_avg",
    distribution="uniform")`.

    Calling it draws a full array for one leaf; the axes come from the anatomy (see the module
    docstring). Factories that take `in_axis`/`out_axis` get them; `orthogonal` makes the units'
    weight vectors orthonormal.
    """

    factory: Callable[..., Callable[..., Array]]
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, factory: Callable[..., Callable[..., Array]], **options: Any):
        if not callable(factory):
            raise TypeError(f"Initializer needs a jax.nn.initializers factory, got {factory!r}")
        object.__setattr__(self, "factory", factory)
        object.__setattr__(self, "options", tuple(sorted(options.items())))
        params = _parameters(factory)
        unknown = [k for k in options if params is not None and k not in params]
        if unknown:
            raise TypeError(
                f"{getattr(factory, '__name__', factory)} takes no option(s) {unknown}; its "
                f"parameters are {sorted(params or ())}"
            )

    def __call__(
        self,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        dtype: DTypeLike = jnp.float32,
        *,
        unit_axes: tuple[int, ...] = (0,),
    ) -> Array:
        """A fresh array of `shape` whose units lie along `unit_axes`."""
        shape = tuple(int(d) for d in shape)
        unit_axes = tuple(a % len(shape) for a in unit_axes) if shape else ()
        params = _parameters(self.factory) or {}
        options = dict(self.options)
        if "column_axis" in params:  # orthogonal: units last, flattened, orthonormal columns
            rest = tuple(a for a in range(len(shape)) if a not in unit_axes)
            if not rest or not unit_axes:
                raise ValueError(
                    f"orthogonal needs a weight with units and inputs, got shape {shape}; biases "
                    "and norm parameters are not drawn orthogonally"
                )
            perm = (*rest, *unit_axes)
            rows = math.prod(shape[a] for a in rest)
            cols = math.prod(shape[a] for a in unit_axes)
            matrix = self.factory(**options, column_axis=-1)(key, (rows, cols), dtype)
            moved = matrix.reshape(tuple(shape[a] for a in perm))
            return jnp.transpose(moved, tuple(perm.index(a) for a in range(len(shape))))
        if "in_axis" in params and "out_axis" in params:
            rest = [a for a in range(len(shape)) if a not in unit_axes]
            if not rest:
                raise ValueError(
                    f"{getattr(self.factory, '__name__', 'this initializer')} needs a weight with "
                    f"a fan-in axis; shape {shape} has only units (draw biases as zeros)"
                )
            options.update(in_axis=rest[0], out_axis=unit_axes)
        return self.factory(**options)(key, shape, dtype)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options)
        return f"Initializer({getattr(self.factory, '__name__', repr(self.factory))}{opts})"


def _parameters(factory: Callable[..., Any]) -> dict[str, Any] | None:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None


def lecun_normal(scale: float = 1.0) -> Initializer:
    """LeCun normal, `jax.nn.initializers.lecun_normal` (a truncated normal of variance
    `scale² / fan_in`)."""
    _check_scale(scale)
    return _variance(scale**2, "fan_in", "truncated_normal")


def kaiming_normal(scale: float = 1.0) -> Initializer:
    """He/Kaiming normal for ReLU layers, `jax.nn.initializers.he_normal` (variance
    `2·scale² / fan_in`, truncated normal)."""
    _check_scale(scale)
    return _variance(2.0 * scale**2, "fan_in", "truncated_normal")


def xavier_uniform(scale: float = 1.0) -> Initializer:
    """Glorot/Xavier uniform, `jax.nn.initializers.glorot_uniform`:
    `U(-b, b)`, `b = scale·sqrt(6 / (fan_in + fan_out))`."""
    _check_scale(scale)
    return _variance(scale**2, "fan_avg", "uniform")


def uniform_fan_in(scale: float = 1.0) -> Initializer:
    """Equinox's default for `Linear` and `Conv`: `U(-b, b)` with `b = scale / sqrt(fan_in)`."""
    _check_scale(scale)
    return _variance(scale**2 / 3.0, "fan_in", "uniform")


def orthogonal(scale: float = 1.0) -> Initializer:
    """Orthogonal (Saxe et al. 2014), `jax.nn.initializers.orthogonal`: the units' weight vectors
    are orthonormal (or as close as the shape allows), times `scale`. BRO's BroNet uses √2."""
    _check_scale(scale)
    return Initializer(jax.nn.initializers.orthogonal, scale=float(scale))


def _variance(scale: float, mode: str, distribution: str) -> Initializer:
    return Initializer(
        jax.nn.initializers.variance_scaling,
        scale=float(scale),
        mode=mode,
        distribution=distribution,
    )


def _check_scale(scale: Any) -> None:
    try:
        ok = math.isfinite(float(scale)) and float(scale) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"scale={scale!r} is invalid: it multiplies the standard deviation (or bound) of the "
            "distribution, so it must be a finite number > 0"
        )
