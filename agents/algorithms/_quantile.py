"""The quantile-Huber loss of distributional critics, exact in O((n + m) log m).

For predicted quantiles p_i at τ_i = (i + ½)/n and target samples t_j,

    L = Σ_i (1/m) Σ_j |τ_i − 1{u_ij < 0}| · Huber_κ(u_ij) / κ,   u_ij = t_j − p_i.

`quantile_huber_pairwise` computes it as written, through the n × m matrix of u_ij: memory-bound,
and with 100 quantiles the largest cost of a BRO update on a CPU. `quantile_huber` computes the
same value and gradient from the sorted targets. For one p, the targets fall into four runs of
the sorted order:

| run | targets            | weight | Huber_κ(u)           | Huber'_κ(u) |
|-----|--------------------|--------|----------------------|-------------|
| A   | t < p − κ          | 1 − τ  | κ(p − t − κ/2)       | −κ          |
| B   | p − κ ≤ t < p      | 1 − τ  | (t − p)²/2           | t − p       |
| C   | p ≤ t ≤ p + κ      | τ      | (t − p)²/2           | t − p       |
| D   | t > p + κ          | τ      | κ(t − p − κ/2)       | κ           |

so each run contributes through its count and its sums of t and t², read from prefix sums at
the run's ends (`_count_below`: three counts per prediction). The gradient with respect to p
comes from the same counts and sums, as a custom VJP. The prefix sums are kept in two-float (compensated)
arithmetic about the median target, so that a run's sum, a difference of two prefix sums, keeps
float32 accuracy when the targets spread over many κ. In float32 the value and gradient stay
within 1e-5 (relative) of the pairwise form's while the predictions and targets spread over up
to 100 κ about the median target (the tests' range, at any scale); far beyond, the quadratic
runs lose digits as ε·(spread/κ) (2e-4 of the gradient's scale at 10⁴ κ). On DMC, whose
rewards are at most 1, BRO's targets (returns of at most 1/(1 − γ) = 100 at κ = 1) are inside.

The targets are held fixed (a TD target): differentiating with respect to them raises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def quantile_huber_pairwise(
    pred: Float[Array, " n"], target: Float[Array, " m"], kappa: float = 1.0
) -> Float[Array, ""]:
    """The quantile-Huber loss through the n × m matrix of pairwise differences (the
    definition; the reference that `quantile_huber` is tested against)."""
    u = target[None, :] - pred[:, None]
    abs_u = jnp.abs(u)
    huber = jnp.where(abs_u <= kappa, 0.5 * u**2, kappa * (abs_u - 0.5 * kappa))
    taus = (jnp.arange(pred.shape[0], dtype=pred.dtype) + 0.5) / pred.shape[0]
    weight = jnp.abs(taus[:, None] - (u < 0).astype(pred.dtype))
    return jnp.sum(jnp.mean(weight * huber / kappa, axis=1))


def quantile_huber(
    pred: Float[Array, " n"], target: Float[Array, " m"], kappa: float = 1.0
) -> Float[Array, ""]:
    """The quantile-Huber loss of `pred` (quantiles at τ_i = (i + ½)/n) against `target`
    samples, exact, from the sorted targets (see the module's docstring).

    Equal to `quantile_huber_pairwise` in value and gradient. Differentiable with respect to
    `pred` only: `target` must be held fixed (`jax.lax.stop_gradient`), as a TD target is.
    Under `vmap` over several predictions for one target (twin critics), the targets are
    sorted once.
    """
    if not kappa > 0:
        raise ValueError(f"quantile_huber: kappa must be > 0, got {kappa}")
    return _quantile_huber(float(kappa), pred, target)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _quantile_huber(kappa: float, pred: Array, target: Array) -> Array:
    return _value_and_grad(kappa, pred, target)[0]


def _fwd(kappa: float, pred, target):
    if target.perturbed:
        raise TypeError(
            "quantile_huber differentiates with respect to the predictions only; hold the "
            "targets fixed with jax.lax.stop_gradient, or use quantile_huber_pairwise for a "
            "gradient with respect to the targets"
        )
    value, grad = _value_and_grad(kappa, pred.value, target.value)
    return value, grad


def _bwd(kappa: float, grad: Array, cotangent: Array):
    del kappa
    return cotangent * grad, None


_quantile_huber.defvjp(_fwd, _bwd, symbolic_zeros=True)


def sort(x: Float[Array, " m"]) -> Float[Array, " m"]:
    """`x` in ascending order, by a bitonic sorting network over the next power of two (padded
    with +inf): log₂(m)(log₂(m) + 1)/2 vectorised compare-exchange stages, which XLA fuses. On a
    CPU, 4× faster than `jnp.sort` (XLA's comparison sort) for 640 rows of 100. NaN entries
    make the result meaningless (the loss is NaN then, as the pairwise loss is)."""
    return _sort_padded(x)[: x.shape[-1]]


def _sort_padded(x: Float[Array, " m"]) -> Float[Array, " L"]:
    """`sort`, with the +inf padding up to the next power of two kept."""
    m = x.shape[-1]
    n = 1 << max(m - 1, 0).bit_length()
    if n != m:
        x = jnp.concatenate([x, jnp.full((n - m,), jnp.inf, x.dtype)])
    size = 2
    while size <= n:  # merge bitonic runs of `size`
        half = size // 2
        while half >= 1:  # compare-exchange entries `half` apart
            pairs = x.reshape(n // (2 * half), 2, half)
            low = jnp.minimum(pairs[:, 0], pairs[:, 1])
            high = jnp.maximum(pairs[:, 0], pairs[:, 1])
            ascending = ((np.arange(n // (2 * half)) * 2 * half) & size == 0)[:, None]
            first, second = jnp.where(ascending, low, high), jnp.where(ascending, high, low)
            x = jnp.stack([first, second], axis=1).reshape(n)
            half //= 2
        size *= 2
    return x


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """a + b as a float and its rounding error (Knuth's TwoSum): s + e == a + b exactly."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _compensated_cumsum(x: Array) -> tuple[Array, Array]:
    """Prefix sums of `x` (with a leading 0) as (high, low) pairs, high + low accurate to
    about one rounding of the result, whatever the order XLA adds in."""

    def add(left, right):
        s, e = _two_sum(left[0], right[0])
        return s, e + left[1] + right[1]

    hi, lo = jax.lax.associative_scan(add, (x, jnp.zeros_like(x)))
    zero = jnp.zeros((1,), x.dtype)
    return jnp.concatenate([zero, hi]), jnp.concatenate([zero, lo])


def _run_sums(start: Array, end: Array) -> tuple[Array, Array]:
    """(Σ t, Σ t²) over runs from the prefix-table rows at their ends (`_value_and_grad`)."""
    s1, e1 = _two_sum(end[..., 0], -start[..., 0])
    s2, e2 = _two_sum(end[..., 2], -start[..., 2])
    return s1 + (e1 + (end[..., 1] - start[..., 1])), s2 + (e2 + (end[..., 3] - start[..., 3]))


def _count_below(sorted_padded: Array, q: Array, strict: bool, m: int) -> Array:
    """For each query, how many of the sorted values are < q (`strict`) or ≤ q, at most `m`.

    Two levels instead of a binary search's log₂ L dependent gathers: the query is compared with
    the first value of every block of 8 (a vectorised count), then with the 8 values of the one
    block that holds its boundary (one gather of a row). On a CPU, 3× faster than
    `jnp.searchsorted` for these sizes."""
    width = min(8, sorted_padded.shape[0])
    blocks = sorted_padded.reshape(-1, width)
    below = (lambda a, b: a < b) if strict else (lambda a, b: a <= b)
    started = jnp.sum(below(blocks[:, 0], q[:, None]), axis=-1, dtype=jnp.int32)
    last = jnp.maximum(started - 1, 0)  # the block that holds the boundary
    inside = jnp.sum(below(blocks[last], q[:, None]), axis=-1, dtype=jnp.int32)
    return jnp.minimum(jnp.where(started > 0, width * last + inside, 0), m)


def _value_and_grad(kappa: float, pred: Array, target: Array) -> tuple[Array, Array]:
    """The loss and its gradient with respect to `pred`, from the sorted targets."""
    n, m = pred.shape[0], target.shape[0]
    padded = _sort_padded(target)
    centre = padded[m // 2]
    padded = padded - centre  # sums about the median keep their terms small
    tc = padded[:m]
    p = pred - centre
    # prefix sums of t and t² (compensated: high, low) as one table, read one row per run end
    table = jnp.stack([*_compensated_cumsum(tc), *_compensated_cumsum(tc * tc)], axis=-1)
    # ends of the runs: A = [0, a), B = [a, z), C = [z, d), D = [d, m)
    a = _count_below(padded, p - kappa, True, m)
    z = _count_below(padded, p, True, m)
    d = _count_below(padded, p + kappa, False, m)
    row_a, row_z, row_d = table[a], table[z], table[d]
    k_a, k_b, k_c, k_d = (x.astype(pred.dtype) for x in (a, z - a, d - z, m - d))
    sum_a, _ = _run_sums(table[0], row_a)
    sum_b, sq_b = _run_sums(row_a, row_z)
    sum_c, sq_c = _run_sums(row_z, row_d)
    sum_d, _ = _run_sums(row_d, table[m])
    # Σ over a run of the Huber terms, with (t − p)² = t² − 2tp + p² about the centre
    huber_a = kappa * (k_a * (p - 0.5 * kappa) - sum_a)
    huber_b = 0.5 * (sq_b - 2.0 * p * sum_b + k_b * p * p)
    huber_c = 0.5 * (sq_c - 2.0 * p * sum_c + k_c * p * p)
    huber_d = kappa * (sum_d - k_d * (p + 0.5 * kappa))
    taus = (jnp.arange(n, dtype=pred.dtype) + 0.5) / n
    below, above = 1.0 - taus, taus  # weights of u < 0 and u >= 0
    scale = 1.0 / (m * kappa)
    value = scale * jnp.sum(below * (huber_a + huber_b) + above * (huber_c + huber_d))
    # Σ_j w_ij Huber'(u_ij); dL/dp_i is its negative, scaled
    slope = below * (sum_b - k_b * p - kappa * k_a) + above * (sum_c - k_c * p + kappa * k_d)
    return value, -scale * slope
