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
    disk, an error while serialising) leaves the previous file as it was. A new
    file gets the mode the user's umask gives (as ``open`` would), a replaced
    file keeps its own, so a page copied to a shared folder stays readable.
    """
    path = Path(path)
    if path.is_dir():
        raise ResultFileError(f"cannot write to {str(path)!r}: it is a folder")
    if not path.parent.is_dir():
        raise ResultFileError(f"cannot write to {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # a folder that takes no new file: name the user's path, not the temporary one
        raise ResultFileError(f"cannot write to {str(path)!r}: {err.strerror or err}") from err
    try:
        os.fchmod(fd, _mode(path))
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


def _mode(path: Path) -> int:
    """The mode ``path`` should have: its own if it exists, else 0o666 less the umask (mkstemp gives 0o600)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # read it the only portable way, and put it back at once
        os.umask(umask)
        return 0o666 & ~umask
