"""Durable file writes: temporary file, fsync, ``os.replace``, fsync of the folder.

The one place that knows how to put bytes on disk so that a crash at any
instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Iterable

__all__ = ["write_atomic", "write_stream_atomic", "copy_stream", "append_durable", "ensure_private_dir", "fsync_dir"]

_CHUNK = 1 << 20
log = logging.getLogger("multimsg.fsutil")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the service's user only.

    A folder that exists with wider permissions (a data folder made by hand
    with mode 0755, say) is tightened to 0700, with a WARNING.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:  # not ours (another user's folder): say so, keep going
            log.warning("%s is mode %s, readable by others, and cannot be made 0700: %s", path, oct(mode), exc.strerror)
        else:
            log.warning("%s was mode %s, readable by others; changed it to 0700", path, oct(mode))
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_stream_atomic(path: Path, chunks: Iterable[bytes], *, fsync: bool = True) -> int:
    """Write ``chunks`` to ``path`` atomically, mode 0600. Returns the size."""
    tmp = _tmp_name(path)
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return size


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    write_stream_atomic(path, [data], fsync=fsync)


def copy_stream(source: BinaryIO) -> Iterable[bytes]:
    """Read a file object in chunks (for ``write_stream_atomic``)."""
    while chunk := source.read(_CHUNK):
        yield chunk


def append_durable(path: Path, line: bytes, *, fsync: bool = True) -> None:
    """Append one line to an append-only file (mode 0600); the caller holds its lock.

    All of ``line`` or nothing: a short write is continued, and on any failure
    (a full disk) the file is cut back to its size before the call, so a retry
    never glues its record onto a torn fragment.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = os.fstat(fd).st_size
        try:
            rest = memoryview(line)
            while rest:
                rest = rest[os.write(fd, rest):]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
