"""Writing files so that a failed write never destroys the file that was there.

Example:
    >>> write_atomic("grid.json", "{}")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import ResultFileError


def write_atomic(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (text, bytes, or a function that writes to a binary file) to ``path``, all or nothing.

    The data goes to a temporary file in the same folder, which is flushed to
    disk and then renamed over ``path``: a write that fails part-way (a full
    disk, an error while serialising) leaves the previous file as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise ResultFileError(f"cannot write to {str(path)!r}: it is a folder")
    if not path.parent.is_dir():
        raise ResultFileError(f"cannot write to {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
