"""Writing a run's files so that a failed write (a full disk) leaves the old file whole, no
temporary file behind, and an error that names the file."""

from __future__ import annotations

import os
from pathlib import Path


def named_oserror(err: BaseException, path: Path) -> BaseException:
    """`err`, or, for an OSError that names no file (a failed write), the same error naming
    `path`."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        return type(err)(err.errno, err.strerror, str(path))
    return err


def replace_file(path: Path, write, newline: str | None = None, binary: bool = False) -> None:
    """Write a file through a synced temporary file and a rename, so that an interrupted
    rewrite leaves the old file whole; on failure the temporary file is removed and the error
    names `path`. `write(f)` gets the open file (text, or bytes with `binary`)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # the old file stays whole
        raise named_oserror(err, path) from err
