"""Optimizer-state surgery: reset the optimizer's memory of exactly the entries a reset touched.

A reset that re-draws weights but keeps their Adam moments lets the stale moments push the fresh
weights straight back (ReDo's reference code zeroes `mu` and `nu` for this reason). The entries to
reset are found generically: `optax.tree_utils.tree_map_params` initialises the optimizer on a
placeholder and looks for where the placeholder reappears in the state, so every parameter-shaped
subtree (Adam's `mu` and `nu`, momentum traces, `MultiSteps` accumulators, the inner states of
`chain`, `inject_hyperparams`, `masked` and `multi_transform`) is found without indexing the state
by position. Entries of a `masked` inner state that the mask excludes are `optax.MaskedNode`s and
are left alone.

optax's Adam keeps one scalar step count for all parameters, so its bias correction cannot restart
for a revived unit. `scale_by_adam_per_entry` keeps one count per parameter entry instead, which
`reset_optimizer_state(..., reset_count=True)` can reset where the mask is `True`.
"""

from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import ArrayLike, PyTree, ScalarLike

from .._treecheck import describe, first_path_difference, flatten_with_paths

__all__ = [
    "ScaleByAdamPerEntryState",
    "adam_per_entry",
    "adamw_per_entry",
    "reset_optimizer_state",
    "scale_by_adam_per_entry",
    "scale_optimizer_state",
]

_FIX_STATE = (
    "pass the same optimizer and the params the state was created for "
    "(`eqx.filter(model, eqx.is_array)`), or create a fresh state with `optimizer.init(params)`"
)
_FIX_MASKS = (
    "build the masks from params itself, e.g. `jax.tree.map(lambda p: jnp.zeros(p.shape, bool), "
    "params)` and then set the entries to reset, or use None for a leaf that is not touched"
)


@runtime_checkable
class Initable(Protocol):
    """Anything with optax's `init(params) -> state`: a `GradientTransformation`, `MultiSteps`."""

    def init(self, params: Any) -> Any:
        """Return a fresh optimizer state for `params`."""
        ...


def _check_state(optimizer: Initable, opt_state: PyTree, params: PyTree) -> None:
    """Raise `ValueError` unless `opt_state` has the structure and shapes of `init(params)`."""
    expected = jax.eval_shape(optimizer.init, params)
    exp_paths, exp_leaves, exp_def = flatten_with_paths(expected)
    got_paths, got_leaves, got_def = flatten_with_paths(opt_state)
    if exp_paths != got_paths:
        in_state, in_init = first_path_difference(got_paths, exp_paths)
        raise ValueError(
            "opt_state does not belong to these params and optimizer: the first difference is "
            f"opt_state{in_state} where optimizer.init(params) has opt_state{in_init}; {_FIX_STATE}"
        )
    for path, got, exp in zip(got_paths, got_leaves, exp_leaves, strict=True):
        got_dtype = getattr(got, "dtype", None)
        if jnp.shape(got) != exp.shape or (got_dtype is not None and got_dtype != exp.dtype):
            raise ValueError(
                f"opt_state does not belong to these params: opt_state{path} is "
                f"{describe(got)} but optimizer.init(params) gives {describe(exp)}; {_FIX_STATE}"
            )
    if got_def != exp_def:
        raise ValueError(
            "opt_state does not belong to this optimizer: its leaves match but its node types "
            f"differ ({got_def} versus {exp_def} from optimizer.init(params)); {_FIX_STATE}"
        )


def _check_masks(params: PyTree, element_masks: PyTree) -> None:
    """Raise `ValueError` unless the masks have params' structure and each leaf's shape, bool."""
    p_paths, p_leaves, p_def = flatten_with_paths(params, none_is_leaf=True)
    m_paths, m_leaves, m_def = flatten_with_paths(element_masks, none_is_leaf=True)
    if p_paths != m_paths:
        in_masks, in_params = first_path_difference(m_paths, p_paths)
        raise ValueError(
            "element_masks does not match params: the first difference is "
            f"element_masks{in_masks} where params has params{in_params}; {_FIX_MASKS}"
        )
    if p_def != m_def:
        raise ValueError(
            "element_masks does not match params: same leaf paths but different node types or "
            f"static fields ({m_def} versus {p_def}); {_FIX_MASKS}"
        )
    for path, param, mask in zip(p_paths, p_leaves, m_leaves, strict=True):
        if mask is None:
            continue
        if param is None:
            raise ValueError(
                f"element_masks{path} is {describe(mask)} but params{path} is None (not an "
                f"array); {_FIX_MASKS}"
            )
        if jnp.shape(mask) != jnp.shape(param) or getattr(mask, "dtype", None) != jnp.bool_:
            raise ValueError(
                f"element_masks{path} must be a bool array of the parameter's shape "
                f"{list(jnp.shape(param))}, got {describe(mask)}; {_FIX_MASKS}"
            )


def reset_optimizer_state(
    optimizer: Initable,
    opt_state: PyTree,
    params: PyTree,
    element_masks: PyTree,
    *,
    value: ScalarLike = 0.0,
    reset_count: bool = False,
) -> PyTree:
    """Reset the optimizer's per-entry memory where `element_masks` is `True`.

    Every floating-point, parameter-shaped array in the state (Adam's `mu` and `nu`, momentum
    traces, gradient accumulators, ...) is set to `value` exactly where the mask is `True` and is
    bit-identical elsewhere. Entries that are not parameter-shaped (scalar step counts,
    hyperparameters, ...) are never touched. Integer parameter-shaped entries of floating-point
    parameters are per-entry step counts (see `scale_by_adam_per_entry`); they are set to 0 where
    the mask is `True` only when `reset_count=True`. State kept for integer or boolean arrays in
    `params` is left alone.

    Note that "parameter-shaped" is decided by optax's `tree_map_params`, so a transform that keeps
    a copy of the parameters themselves (such as the `z` sequence of `optax.contrib`'s
    schedule-free optimizers) is also found and would be set to `value`; reset such states in
    their own way.

    All checks happen on structure and shapes before any value is computed, so the function works
    under `jax.jit` and `jax.vmap` (masks are arrays; nothing branches on values).

    Args:
        optimizer: The optimizer (anything with `init(params)`) that created `opt_state`.
        opt_state: The state to reset.
        params: `eqx.filter(model, eqx.is_array)`, the parameters the state belongs to.
        element_masks: params' structure; each leaf a bool array of the parameter's shape, or
            `None` for a parameter that is not touched.
        value: What the reset entries become (0 restarts the moments from scratch).
        reset_count: Also set per-entry step counts to 0 where the mask is `True`, which restarts
            Adam's bias correction for exactly those entries.

    Returns:
        The new optimizer state, with the structure of `opt_state`.

    Raises:
        ValueError: If `opt_state` was not created by `optimizer.init` for parameters of this
            structure and shapes, if `element_masks` does not match `params` (the message names the
            first mismatching path), or if `reset_count=True` but the state has no per-entry counts.
    """
    _check_masks(params, element_masks)
    _check_state(optimizer, opt_state, params)

    paths = jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p), params)
    counts_seen: list[str] = []

    def reset_leaf(leaf: Any, mask: Any, param: Any, path: Any) -> Any:
        if leaf is None or mask is None or isinstance(leaf, optax.MaskedNode):
            return leaf
        if not jnp.issubdtype(param.dtype, jnp.inexact):
            return leaf  # the state of a non-trainable integer/bool array: nothing to reset
        if jnp.shape(leaf) != jnp.shape(mask):
            raise ValueError(
                f"the optimizer state keeps an entry for params{path} of shape "
                f"{list(jnp.shape(leaf))} instead of the parameter's shape "
                f"{list(jnp.shape(mask))}; "
                "reset_optimizer_state only resets states that hold one value per parameter entry"
            )
        dtype = leaf.dtype
        if jnp.issubdtype(dtype, jnp.integer):
            counts_seen.append(path)
            if not reset_count:
                return leaf
            return jnp.where(mask, jnp.zeros((), dtype), leaf)
        if jnp.issubdtype(dtype, jnp.inexact):
            return jnp.where(mask, jnp.asarray(value, dtype), leaf)
        return leaf

    try:  # Find the params-shaped subtrees once, without computing anything.
        optax.tree_utils.tree_map_params(optimizer, lambda leaf: leaf, opt_state)
    except Exception as error:
        raise ValueError(
            f"cannot find the parameter-shaped entries of this optimizer's state: its init does "
            f"not run on optax's params placeholder ({type(error).__name__}: {error}); reset "
            "the state of the optimizer's parameter-wise parts instead"
        ) from error

    new_state = optax.tree_utils.tree_map_params(
        optimizer,
        reset_leaf,
        opt_state,
        element_masks,
        params,
        paths,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
    )
    if reset_count and not counts_seen:
        raise ValueError(
            "reset_count=True, but this optimizer state holds no per-entry step counts (optax's "
            "Adam keeps one scalar count for all parameters); use adam_per_entry, adamw_per_entry "
            "or scale_by_adam_per_entry, or pass reset_count=False"
        )
    return new_state


def scale_optimizer_state(
    optimizer: Initable, opt_state: PyTree, params: PyTree, factors: PyTree
) -> PyTree:
    """Multiply the optimizer's per-entry memory by `factors`, entry by entry.

    Every floating-point, parameter-shaped array in the state (found as
    [`reset_optimizer_state`][neurosurgery.reset_optimizer_state] finds them) is multiplied by
    the factor of its parameter entry; integer entries (per-entry step counts) and entries that
    are not parameter-shaped are kept. `factors` has params' structure, each leaf an array of
    the parameter's shape or `None` (kept). A factor of 0 is a reset of the entry, 1 keeps it.
    """
    _check_state(optimizer, opt_state, params)

    def scale_leaf(leaf: Any, factor: Any) -> Any:
        if leaf is None or factor is None or isinstance(leaf, optax.MaskedNode):
            return leaf
        if not jnp.issubdtype(leaf.dtype, jnp.inexact) or jnp.shape(leaf) != jnp.shape(factor):
            return leaf
        return leaf * jnp.asarray(factor, leaf.dtype)

    return optax.tree_utils.tree_map_params(
        optimizer,
        scale_leaf,
        opt_state,
        factors,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
    )


class ScaleByAdamPerEntryState(NamedTuple):
    """State of `scale_by_adam_per_entry`: counts, first and second moments, all params-shaped."""

    count: PyTree
    mu: PyTree
    nu: PyTree


def scale_by_adam_per_entry(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """Adam's scaling with one step count per parameter entry.

    Identical to `optax.scale_by_adam` (same moment updates, same bias correction
    `1 - b**count`) while no count is reset; the difference is that `count` is an int32 array of
    each parameter's shape. After `reset_optimizer_state(..., reset_count=True)` the reset entries
    restart from count 0, so their next update is exactly the first step of a fresh Adam (the
    moments are divided by `1 - b1` and `1 - b2`) while every other entry continues undisturbed.

    Args:
        b1: Decay rate of the first moment.
        b2: Decay rate of the second moment.
        eps: Added to the denominator outside the square root.
        eps_root: Added to the second moment inside the square root.

    Returns:
        An `optax.GradientTransformation` with state `ScaleByAdamPerEntryState`.
    """

    def init_fn(params: PyTree) -> ScaleByAdamPerEntryState:
        return ScaleByAdamPerEntryState(
            count=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.int32), params),
            mu=optax.tree_utils.tree_zeros_like(params),
            nu=optax.tree_utils.tree_zeros_like(params),
        )

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamPerEntryState]:
        del params
        state = cast(ScaleByAdamPerEntryState, state)
        mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * (g * g) + b2 * v, updates, state.nu)
        count = jax.tree.map(optax.safe_increment, state.count)

        def direction(m: ArrayLike, v: ArrayLike, c: jax.Array) -> jax.Array:
            m, v = jnp.asarray(m), jnp.asarray(v)
            steps = c.astype(jnp.float32)
            m_hat = m / (1 - jnp.float32(b1) ** steps).astype(m.dtype)
            v_hat = v / (1 - jnp.float32(b2) ** steps).astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat + eps_root) + eps)

        new_updates = jax.tree.map(direction, mu, nu, count)
        return new_updates, ScaleByAdamPerEntryState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_per_entry(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformation:
    """`optax.adam` with per-entry step counts (see `scale_by_adam_per_entry`)."""
    return optax.chain(
        scale_by_adam_per_entry(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamw_per_entry(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    mask: Any = None,
) -> optax.GradientTransformation:
    """`optax.adamw` (decoupled weight decay) with per-entry step counts.

    Args:
        learning_rate: Fixed step size or schedule.
        b1: Decay rate of the first moment.
        b2: Decay rate of the second moment.
        eps: Added to the denominator outside the square root.
        eps_root: Added to the second moment inside the square root.
        weight_decay: Decay coefficient, as in `optax.adamw`.
        mask: Which parameters are decayed, as in `optax.adamw` (None: all).

    Returns:
        An `optax.GradientTransformation`.
    """
    return optax.chain(
        scale_by_adam_per_entry(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
