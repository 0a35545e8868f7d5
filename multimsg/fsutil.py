"""Durable file writes: temporary file, fsync, ``os.replace``, fsync of the folder.

The one place that knows how to put bytes on disk so that a crash at any
instant leaves either the old file or the new one, never a torn one.

Folder fsyncs are a group commit: the threads that ask for one folder's
fsync at the same time share one ``fsync`` call, and each returns only after
an fsync that began after it asked (so it covers that thread's renames).
Appends are one too (``append_grouped``): the lines that threads append to
one file while a write of it is running go out together in the next write,
with one ``fsync``, and each thread returns once the write holding its line
is done (or raises what that write raised).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import weakref
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterable

__all__ = ["write_atomic", "write_stream_atomic", "copy_stream", "append_durable", "append_grouped", "GroupCommit", "ensure_private_dir",
           "fsync_dir", "read_fd", "read_file", "unlink_quietly", "write_file"]

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


class _FolderSync:
    """One folder's group commit: ``sync()`` returns after an fsync of the folder that began after the call."""

    def __init__(self, path: Path):
        self.path = path
        self.changed = threading.Condition()
        self.asked = 0  # requests so far, numbered
        self.done = 0  # every request up to this number is covered by a finished fsync
        self.syncing = False

    def sync(self) -> None:
        with self.changed:
            self.asked += 1
            mine = self.asked
            while self.done < mine:
                if self.syncing:
                    self.changed.wait()  # a running fsync may have begun before this request: wait for the next
                    continue
                self.syncing, covers = True, self.asked  # every request so far made its changes before this fsync
                self.changed.release()
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                finally:
                    self.changed.acquire()
                    self.syncing = False
                    self.changed.notify_all()
                self.done = max(self.done, covers)  # (not reached when the fsync raised: the caller sees the error)


_folders: dict[str, _FolderSync] = {}
_folders_guard = threading.Lock()


def fsync_dir(path: str | Path) -> None:
    """fsync the folder ``path`` (its entries: renames, new and removed files), shared with concurrent callers."""
    key = os.fspath(path)
    with _folders_guard:
        folder = _folders.get(key)
        if folder is None:
            folder = _folders[key] = _FolderSync(Path(key))
    folder.sync()


class _Batch:
    __slots__ = ("lines", "fsync", "folders", "done", "error")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.fsync = False
        self.folders: set[str] = set()
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """One file's group commit within this process: the lines threads give at the same time, written by one of them.

    ``commit(line, write, fsync, folders)`` returns once ``write(every line
    of its batch, fsync, folders)`` returned: the first thread to find no
    write under way writes the batch (the lines given so far), the others
    wait for it and get its error if it failed. A batch is fsynced if any of
    its lines asked; ``folders``: every line's (to fsync with the batch).
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.batch: _Batch | None = None  # the batch still taking lines
        self.writing = False

    def commit(self, line: bytes, write: Callable[[bytes, bool, set[str]], None], fsync: bool,
               folders: Iterable[str] = ()) -> None:
        with self.changed:
            batch = self.batch
            if batch is None:
                batch = self.batch = _Batch()
            batch.lines.append(line)
            batch.fsync = batch.fsync or fsync
            batch.folders.update(folders)
            while not batch.done:
                if not self.writing:  # lead: this batch is written now; later lines start the next one
                    self.writing, self.batch = True, None
                    break
                self.changed.wait()
            else:
                if batch.error is not None:
                    raise batch.error
                return
        try:
            write(b"".join(batch.lines), batch.fsync, batch.folders)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            with self.changed:
                batch.done, self.writing = True, False
                self.changed.notify_all()


_appends: "weakref.WeakValueDictionary[str, GroupCommit]" = weakref.WeakValueDictionary()


def append_grouped(path: str | Path, line: bytes, *, fsync: bool = True, lock: Callable[[], ContextManager[object]]) -> None:
    """``append_durable`` shared with the threads appending to ``path`` at the same time (one write, one fsync).

    ``lock()`` is held around each write (the file's lock between processes);
    a batch is fsynced if any of its lines asked for it. All of a batch or
    none of it is written, and every thread of a failed batch gets its error.
    """
    key = os.fspath(path)
    with _folders_guard:
        appends = _appends.get(key)
        if appends is None:
            appends = _appends[key] = GroupCommit()

    def write(data: bytes, sync: bool, _: set[str]) -> None:
        with lock():
            append_durable(path, data, fsync=sync)

    appends.commit(line, write, fsync)


def read_file(path: str | Path) -> bytes:
    """The whole content of a small file: open, read, close (no buffering layer, no tty check, no seeks)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def read_fd(fd: int, limit: int | None = None) -> bytes:
    """What is left to read from the open file ``fd`` (at most ``limit`` bytes)."""
    parts, left = [], limit
    while left is None or left > 0:
        chunk = os.read(fd, 1 << 16 if left is None else min(left, 1 << 16))
        if not chunk:
            break
        parts.append(chunk)
        if left is not None:
            left -= len(chunk)
    return b"".join(parts)


def unlink_quietly(path: str | Path) -> None:
    """Remove the file ``path``; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_file(path: str | Path, chunks: Iterable[bytes], *, fsync: bool) -> int:
    """Write ``chunks`` to a new file ``path`` (mode 0600), every byte (a short write is continued), optionally fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    size = 0
    try:
        for chunk in chunks:
            rest = memoryview(chunk)
            size += len(rest)
            while rest:
                rest = rest[os.write(fd, rest):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _tmp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_stream_atomic(path: str | Path, chunks: Iterable[bytes], *, fsync: bool = True, sync_folder: bool = True) -> int:
    """Write ``chunks`` to ``path`` atomically, mode 0600 (``sync_folder=False``: the caller fsyncs the folder). Returns the size."""
    path = os.fspath(path)  # strings: a store change writes a few files, and pathlib's joins cost more than their syscalls
    tmp = _tmp_name(path)
    try:
        size = write_file(tmp, chunks, fsync=fsync)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync and sync_folder:
        fsync_dir(os.path.dirname(path))
    return size


def write_atomic(path: str | Path, data: bytes, *, fsync: bool = True, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 (``sync_folder=False``: the caller fsyncs the folder)."""
    write_stream_atomic(path, [data], fsync=fsync, sync_folder=sync_folder)


def copy_stream(source: BinaryIO) -> Iterable[bytes]:
    """Read a file object in chunks (for ``write_stream_atomic``)."""
    while chunk := source.read(_CHUNK):
        yield chunk


def append_durable(path: str | Path, line: bytes, *, fsync: bool = True) -> None:
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
