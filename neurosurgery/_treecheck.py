"""Structure checks shared by the functions that pair two pytrees leaf by leaf.

Errors name the first mismatching keypath (as `jax.tree_util.keystr` writes it), so a user sees
where two trees part ways instead of a bare "structures differ".
"""

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["describe", "first_path_difference", "flatten_with_paths"]


def _is_none(x: Any) -> bool:
    return x is None


def flatten_with_paths(
    tree: Any, *, none_is_leaf: bool = False
) -> tuple[list[str], list[Any], Any]:
    """Leaf paths (keystr), leaves and treedef; `none_is_leaf` keeps `None` entries as leaves."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=_is_none if none_is_leaf else None
    )
    return [jax.tree_util.keystr(p) for p, _ in flat], [leaf for _, leaf in flat], treedef


def first_path_difference(a: list[str], b: list[str]) -> tuple[str, str]:
    """The first position where two path lists differ, as (path in a, path in b)."""
    for pa, pb in zip(a, b, strict=False):
        if pa != pb:
            return pa, pb
    if len(a) > len(b):
        return a[len(b)], "<nothing>"
    return "<nothing>", b[len(a)]


def describe(leaf: Any) -> str:
    """A leaf as `dtype[shape]`, or its type name when it is not an array."""
    if leaf is None:
        return "None"
    if not hasattr(leaf, "shape"):
        return type(leaf).__name__
    return f"{getattr(leaf, 'dtype', type(leaf).__name__)}{list(jnp.shape(leaf))}"
