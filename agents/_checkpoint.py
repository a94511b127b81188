"""Checkpoints: one file, a JSON header then the state's arrays (`eqx.tree_serialise_leaves`).

Written atomically (temp file, fsync, os.replace, fsync of the folder), read back against a
template of the expected state — never with pickle. The header records the leaf shapes and dtypes,
so an incompatible checkpoint is refused with a clear message before anything is read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

MAGIC = b"NSCKPT1\n"


class CheckpointError(ValueError):
    """The checkpoint is missing, damaged or does not match the run."""


def _is_key(x: Any) -> bool:
    """A typed PRNG key array, or the shape of one."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: Any) -> Any:
    """Typed PRNG keys → their uint32 data (serialisable); shapes stay shapes."""

    def unwrap(x: Any) -> Any:
        if not _is_key(x):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.eval_shape(jax.random.key_data, x)
        return jax.random.key_data(x)

    return jax.tree.map(unwrap, tree)


def _rewrap_keys(tree: Any, template: Any) -> Any:
    def rewrap(x: Any, t: Any) -> Any:
        if not _is_key(t):
            return x
        if isinstance(t, jax.ShapeDtypeStruct):  # keys here come from jax.random.key
            return jax.random.wrap_key_data(x)
        return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))

    return jax.tree.map(rewrap, tree, template)


def leaf_signature(tree: Any) -> list[str]:
    """`dtype[shape]` of every array leaf, in tree order."""
    is_array = lambda x: eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)
    leaves = jax.tree.leaves(eqx.filter(_unwrap_keys(tree), is_array))
    return [f"{np.dtype(x.dtype).name}{list(x.shape)}" for x in leaves]


def save_checkpoint(path: str | Path, state: Any, meta: dict[str, Any]) -> None:
    path = Path(path)
    header = dict(meta, leaves=leaf_signature(state))
    blob = json.dumps(header, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        eqx.tree_serialise_leaves(f, _unwrap_keys(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return _header(f, path)


def _header(f: Any, path: Any) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise CheckpointError(f"{path} is not a neurosurgery checkpoint")
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n).decode())


def load_checkpoint(path: str | Path, template: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `template` (arrays or `jax.ShapeDtypeStruct`s);
    refuse a mismatch of shapes or dtypes before reading any array."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        header = _header(f, path)
        expected = leaf_signature(template)
        if header.get("leaves") != expected:
            got = header.get("leaves", [])
            diff = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            raise CheckpointError(
                f"checkpoint {path} does not match this run's state: {len(got)} arrays vs "
                f"{len(expected)} expected; first difference at array {diff} "
                f"({got[diff] if diff < len(got) else '-'} vs "
                f"{expected[diff] if diff < len(expected) else '-'})"
            )
        state = eqx.tree_deserialise_leaves(f, _unwrap_keys(template))
    return _rewrap_keys(state, template), header
