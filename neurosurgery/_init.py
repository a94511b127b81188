"""Named initializers for re-drawing the weights of reset units.

A reset re-draws a revived unit's incoming weights from an initial distribution. The layer's own
initializer is the default elsewhere in the toolkit; these are the named alternatives. Each factory
returns an `Initializer`: a frozen, hashable callable `init(key, shape, dtype)` that returns a full
fresh array; the caller keeps the rows it resets with `jnp.where(mask, fresh, old)`.

Fans follow Equinox's layout: a `Linear` weight is `(out, in)` and a `Conv` weight is
`(out, in, *kernel)`, so by default axis 1 is the fan-in axis, axis 0 the fan-out axis, and every
other axis is the receptive field, which multiplies both fans (as in `jax.nn.initializers`).
A bias carries no fan information in its shape (an Equinox conv bias is `(out, 1, ..., 1)`): draw it
with the `fan_in`/`fan_out` of its layer's weight, passed explicitly.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "Initializer",
    "fan_in_and_out",
    "kaiming_normal",
    "lecun_normal",
    "orthogonal",
    "uniform_fan_in",
    "xavier_uniform",
]

Axes = int | Sequence[int]


@runtime_checkable
class Initializer(Protocol):
    """A named distribution for a parameter array (what the factories in this module return)."""

    def __call__(
        self,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        dtype: DTypeLike = jnp.float32,
        *,
        fan_in_axes: Axes = 1,
        fan_out_axes: Axes = 0,
        fan_in: int | None = None,
        fan_out: int | None = None,
    ) -> Float[Array, "..."]:
        """Draw a fresh array of `shape`; explicit `fan_in`/`fan_out` override the axes."""
        ...


def _normalise_axes(name: str, axes: Axes, shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for axis in axes:
        if not -len(shape) <= axis < len(shape):
            raise ValueError(
                f"{name}={axes} does not fit shape {shape}: axis {axis} does not exist; for a "
                "bias or another 1-D parameter pass fan_in= (and fan_out=) of its layer's weight"
            )
        out.append(axis % len(shape))
    return tuple(out)


def fan_in_and_out(
    shape: tuple[int, ...], fan_in_axes: Axes = 1, fan_out_axes: Axes = 0
) -> tuple[int, int]:
    """Fan-in and fan-out of a weight array, each multiplied by its receptive field size.

    Args:
        shape: The weight's shape, e.g. `(out, in)` or `(out, in, *kernel)` for Equinox layers.
        fan_in_axes: Axes holding the inputs of a unit.
        fan_out_axes: Axes holding the units (the outputs).

    Returns:
        `(fan_in, fan_out)`; with Equinox's conv layout `(8, 4, 3, 3)` gives `(36, 72)`.

    Raises:
        ValueError: If an axis does not exist or is listed as both fan-in and fan-out.
    """
    ins = _normalise_axes("fan_in_axes", fan_in_axes, shape)
    outs = _normalise_axes("fan_out_axes", fan_out_axes, shape)
    if set(ins) & set(outs):
        raise ValueError(
            f"fan_in_axes={ins} and fan_out_axes={outs} overlap for shape {shape}: an axis is "
            "either a unit's inputs or the units themselves; pass disjoint axes"
        )
    receptive = math.prod(d for axis, d in enumerate(shape) if axis not in ins + outs)
    return (
        math.prod(shape[a] for a in ins) * receptive,
        math.prod(shape[a] for a in outs) * receptive,
    )


def _compute_dtype(dtype: DTypeLike) -> jnp.dtype:
    """Draw in float64 only for float64 parameters; low-precision floats are drawn in float32."""
    return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32)


@dataclasses.dataclass(frozen=True)
class _FanInitializer:
    """Shared argument handling: resolve the fans, draw, cast to the parameter's dtype."""

    scale: float = 1.0
    _uses_fan_out: ClassVar[bool] = False

    def __post_init__(self) -> None:
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            scale = math.nan
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(
                f"scale={self.scale!r} is invalid: it multiplies the standard deviation (or bound) "
                "of the distribution, so it must be a finite number > 0"
            )
        object.__setattr__(self, "scale", scale)

    def __call__(
        self,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        dtype: DTypeLike = jnp.float32,
        *,
        fan_in_axes: Axes = 1,
        fan_out_axes: Axes = 0,
        fan_in: int | None = None,
        fan_out: int | None = None,
    ) -> Float[Array, "..."]:
        shape = tuple(int(d) for d in shape)
        if fan_in is None or (fan_out is None and self._uses_fan_out):
            computed_in, computed_out = fan_in_and_out(shape, fan_in_axes, fan_out_axes)
            fan_in = computed_in if fan_in is None else fan_in
            fan_out = computed_out if fan_out is None else fan_out
        fan_out = 0 if fan_out is None else fan_out
        draw_dtype = _compute_dtype(dtype)
        return self._draw(key, shape, draw_dtype, fan_in, fan_out).astype(dtype)

    def _draw(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype: jnp.dtype, fan_in: int, fan_out: int
    ) -> Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _LecunNormal(_FanInitializer):
    def _draw(self, key, shape, dtype, fan_in, fan_out):
        std = self.scale / math.sqrt(max(fan_in, 1))
        return std * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class _KaimingNormal(_FanInitializer):
    def _draw(self, key, shape, dtype, fan_in, fan_out):
        std = self.scale * math.sqrt(2.0 / max(fan_in, 1))
        return std * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class _XavierUniform(_FanInitializer):
    _uses_fan_out: ClassVar[bool] = True

    def _draw(self, key, shape, dtype, fan_in, fan_out):
        bound = self.scale * math.sqrt(6.0 / max(fan_in + fan_out, 1))
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


@dataclasses.dataclass(frozen=True)
class _UniformFanIn(_FanInitializer):
    def _draw(self, key, shape, dtype, fan_in, fan_out):
        bound = self.scale / math.sqrt(fan_in) if fan_in > 0 else self.scale
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


@dataclasses.dataclass(frozen=True)
class _Orthogonal(_FanInitializer):
    def __call__(
        self,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        dtype: DTypeLike = jnp.float32,
        *,
        fan_in_axes: Axes = 1,
        fan_out_axes: Axes = 0,
        fan_in: int | None = None,
        fan_out: int | None = None,
    ) -> Float[Array, "..."]:
        del fan_in_axes, fan_in, fan_out  # orthogonality is between the units' weight vectors
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2:
            raise ValueError(
                f"orthogonal needs a weight with at least 2 axes, got shape {shape}; biases and "
                "norm parameters are not drawn orthogonally (reset them to 0 or to their identity)"
            )
        outs = _normalise_axes("fan_out_axes", fan_out_axes, shape)
        rest = tuple(a for a in range(len(shape)) if a not in outs)
        rows = math.prod(shape[a] for a in outs)
        cols = math.prod(shape[a] for a in rest)
        big, small = max(rows, cols), min(rows, cols)
        gaussian = jax.random.normal(key, (big, small), _compute_dtype(dtype))
        q, r = jnp.linalg.qr(gaussian)
        # Fix the signs so that the result is Haar-distributed rather than biased by QR's choice.
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        matrix = q if rows >= cols else q.T  # (rows, cols), orthonormal along the shorter side
        perm = outs + rest
        stacked = (self.scale * matrix).reshape(tuple(shape[a] for a in perm))
        return jnp.transpose(stacked, tuple(perm.index(a) for a in range(len(shape)))).astype(dtype)


def lecun_normal(scale: float = 1.0) -> Initializer:
    """LeCun normal: `N(0, scale² / fan_in)` (an untruncated normal).

    `jax.nn.initializers.lecun_normal` draws a truncated normal with the same variance.
    """
    return _LecunNormal(scale)


def kaiming_normal(scale: float = 1.0) -> Initializer:
    """He/Kaiming normal for ReLU layers, fan-in mode: `N(0, 2·scale² / fan_in)` (untruncated)."""
    return _KaimingNormal(scale)


def xavier_uniform(scale: float = 1.0) -> Initializer:
    """Glorot/Xavier uniform: `U(-b, b)` with `b = scale·sqrt(6 / (fan_in + fan_out))`."""
    return _XavierUniform(scale)


def uniform_fan_in(scale: float = 1.0) -> Initializer:
    """Equinox's default for `Linear` and `Conv`: `U(-b, b)` with `b = scale / sqrt(fan_in)`.

    With `scale=1` this is the distribution `eqx.nn.Linear`/`eqx.nn.Conv` draw their weights and
    biases from (Equinox uses the weight's fan-in, `in_features · prod(kernel)`, for both; pass
    `fan_in=` when drawing a bias).
    """
    return _UniformFanIn(scale)


def orthogonal(scale: float = 1.0) -> Initializer:
    """Orthogonal (Saxe et al. 2014): the units' weight vectors are orthonormal, times `scale`.

    The fan-out axes (axis 0, the units, by default) index rows and every other axis is flattened
    into columns; rows are orthonormal when there are no more rows than columns, columns otherwise.
    BRO's BroNet uses `scale = sqrt(2)`.
    """
    return _Orthogonal(scale)
