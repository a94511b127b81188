"""Checkpoints: one file, a JSON header, the state's arrays (`eqx.tree_serialise_leaves`) and a
CRC-32 of everything before it.

Written atomically (temp file, fsync, os.replace, fsync of the folder), read back against a
template of the expected state — never with pickle. The header records the leaf shapes and dtypes,
so an incompatible checkpoint is refused with a clear message before anything is read; a
truncated or damaged file (the checksum disagrees) is refused as a `CheckpointError` and nothing
of it is used. Files of the first format (no checksum) still load.

Formats: 1 (`NSCKPT1`) header and arrays; 2 (`NSCKPT2`) and a checksum; 3 (`NSCKPT3`, written
only when there are extras) named host arrays after the state's (`extras`: the state of host
environments), each listed in the header's `extras` as `[name, dtype, shape]`, then the checksum.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._files import replace_file

MAGIC = b"NSCKPT2\n"  # header, arrays, then b"CRC32" and the checksum (little-endian uint32)
_MAGIC_V1 = b"NSCKPT1\n"  # header and arrays, no checksum
MAGIC_EXTRAS = b"NSCKPT3\n"  # header, arrays, extras, then the checksum
#: dtypes an extra may have (little-endian in the file)
_EXTRA_DTYPES = ("bool", "int32", "int64", "uint32", "float32", "float64")
_TRAILER = b"CRC32"
_DAMAGED = "restore it from a copy, or start again in a new --run-dir"


class RunWriteError(OSError):
    """A run could not write one of its files (a full disk, a quota): the run stopped, its last
    checkpoint is intact and no temporary file is left; free space and resume."""


class CheckpointError(ValueError):
    """The checkpoint is missing, damaged or does not match the run."""


class InexactResumeWarning(UserWarning):
    """A run resumes, but not exactly where it stopped: its checkpoint holds no state of its
    host environments (the message says why), so they start new episodes."""


class _Checksummed:
    """A binary file wrapper for writing that keeps the CRC-32 of every byte written through it
    (the arrays are written in one sequential pass; NumPy's reader seeks back, so a load checks
    the file with `_crc_of_prefix` instead)."""

    def __init__(self, f: Any):
        self.f, self.crc = f, 0

    def write(self, data: Any) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, ... of the wrapped file
        return getattr(self.f, name)


def _crc_of_prefix(f: Any, end: int, chunk: int = 1 << 22) -> int:
    """CRC-32 of the first `end` bytes of the open file `f`."""
    f.seek(0)
    crc, left = 0, end
    while left > 0:
        data = f.read(min(chunk, left))
        if not data:
            break
        crc, left = zlib.crc32(data, crc), left - len(data)
    return crc


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


def save_checkpoint(
    path: str | Path,
    state: Any,
    meta: dict[str, Any],
    extras: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write `state` (arrays) and `meta` (JSON) to `path` atomically; `extras`, named NumPy
    arrays of any shape (dtypes `_EXTRA_DTYPES`), after the state (`load_checkpoint_extras`)."""
    path = Path(path)
    header = dict(meta, leaves=leaf_signature(state))
    arrays = []
    if extras:
        listed = []
        for name, value in extras.items():
            value = np.asarray(value)
            if value.dtype.name not in _EXTRA_DTYPES:
                raise TypeError(f"extra {name!r}: {value.dtype} is not one of {_EXTRA_DTYPES}")
            arrays.append(np.ascontiguousarray(value, value.dtype.newbyteorder("<")))
            listed.append([str(name), value.dtype.name, list(value.shape)])
        header["extras"] = listed
    blob = json.dumps(header, sort_keys=True).encode()

    def write(raw) -> None:
        f = _Checksummed(raw)
        f.write(MAGIC_EXTRAS if extras else MAGIC)
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        eqx.tree_serialise_leaves(f, _unwrap_keys(state))
        for value in arrays:
            f.write(value.tobytes())
        raw.write(_TRAILER + struct.pack("<I", f.crc))

    replace_file(path, write, binary=True)  # the previous checkpoint stays whole until then
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a checkpoint (its arrays are not read, nor checked)."""
    with open(path, "rb") as f:
        return _header(f, path)[0]


def _header(f: Any, path: Any) -> tuple[dict[str, Any], bool]:
    """(header, whether the file ends with a checksum)."""
    magic = f.read(len(MAGIC))
    if magic not in (MAGIC, _MAGIC_V1, MAGIC_EXTRAS):
        raise CheckpointError(f"{path} is not a neurosurgery checkpoint")
    size = f.read(8)
    n = struct.unpack("<Q", size)[0] if len(size) == 8 else -1
    left = os.fstat(f.fileno()).st_size - f.tell()
    blob = f.read(n) if 0 <= n <= left else b""  # a damaged length must not allocate
    try:
        if not 0 <= n <= left:
            raise ValueError("the file ends inside its header")
        header = json.loads(blob.decode())
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        if (magic == MAGIC_EXTRAS) != ("extras" in header):
            raise ValueError("its header and its format disagree on whether extras follow")
        if magic == MAGIC_EXTRAS:
            _extras_layout(header["extras"])
    except ValueError as err:  # JSON and Unicode errors are ValueErrors too
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged ({err}); {_DAMAGED}"
        ) from err
    return header, magic != _MAGIC_V1


def _extras_layout(listed: Any) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) of each extra the header lists; ValueError if malformed."""
    if not isinstance(listed, list):
        raise ValueError("its list of extras is not a list")
    out, names = [], set()
    for item in listed:
        ok = isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
        ok = ok and item[1] in _EXTRA_DTYPES and isinstance(item[2], list)
        ok = ok and all(type(d) is int and 0 <= d < 2**40 for d in item[2])
        if not ok or item[0] in names:
            raise ValueError(f"its list of extras holds a malformed entry {str(item)[:100]}")
        names.add(item[0])
        dtype = np.dtype(item[1]).newbyteorder("<")
        shape = tuple(item[2])
        out.append((item[0], dtype, shape, math.prod(shape) * dtype.itemsize))
    return out


def load_checkpoint(path: str | Path, template: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `template` (arrays or `jax.ShapeDtypeStruct`s);
    refuse a mismatch of shapes or dtypes before reading any array."""
    state, header, _ = load_checkpoint_extras(path, template)
    return state, header


def load_checkpoint_extras(
    path: str | Path, template: Any
) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """`load_checkpoint`, and the extras saved with the state (empty if none)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        header, checked = _header(f, path)
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
        try:
            state = eqx.tree_deserialise_leaves(f, _unwrap_keys(template))
        except Exception as err:  # a short or garbled array section, whatever NumPy reports
            raise CheckpointError(
                f"checkpoint {path} is truncated or damaged: its arrays could not be read "
                f"({type(err).__name__}: {str(err)[:200]}); {_DAMAGED}"
            ) from err
        extras = {}
        for name, dtype, shape, size in _extras_layout(header.get("extras", [])):
            data = f.read(size)
            if len(data) != size:
                raise CheckpointError(
                    f"checkpoint {path} is truncated: it ends inside its extra {name!r}; {_DAMAGED}"
                )
            extras[name] = np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))
        if checked:
            end = f.tell()
            trailer = f.read(len(_TRAILER) + 4)
            if len(trailer) != len(_TRAILER) + 4 or not trailer.startswith(_TRAILER):
                raise CheckpointError(
                    f"checkpoint {path} is truncated: its checksum is missing; {_DAMAGED}"
                )
            (stored,) = struct.unpack("<I", trailer[len(_TRAILER) :])
            extra = f.read(1)
            crc = _crc_of_prefix(f, end)
            if stored != crc or extra:
                raise CheckpointError(
                    f"checkpoint {path} is damaged: its checksum does not match its contents "
                    f"({crc:08x} computed, {stored:08x} stored); {_DAMAGED}"
                )
    return _rewrap_keys(state, template), header, extras
