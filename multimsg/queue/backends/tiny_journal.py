"""The embedded store's intake journal: new messages appended (group commit), filed into shards later, in batches.

``TinyStore.add`` does not rewrite a shard: it appends the message's record,
one line of JSON, to this process's segment ``store/journal/<pid>-<nonce>.log``
and returns once an ``fsync`` of the segment covers the line. The threads of
a process that add at the same time share one write and one fsync (a group
commit: the first to arrive writes every line queued so far, the others wait
for it). No lock is shared with other processes on this path.

``TinyStore.get`` reads a message from its shard or, failing that, from the
lines not folded yet (``find``). Every other operation of the store first
*folds* the journal: under the
``journal`` lock, the lines past each segment's folded offset are filed into
their shards (``TinyStore._file``: the shard write, the due index, figures,
history, exactly as a direct add made them), then the offsets are written
(``store/journal/folded``, fsynced), then the lock is let go. So an answered
add is seen by every later read, whichever process asks, and the drain's
pass does the filing (its first claim), in one batch, off the request path.

Crash safety:

- a line is durable before its add returns; a line torn by a crash (no
  newline yet) was never answered and is never folded;
- a fold that dies after filing some lines and before writing the offsets
  is done again by the next fold: a message already in its shard is skipped;
  removal from a shard (``archive``) happens only under the ``journal`` lock
  after a fold, so a line folded again never brings back an archived message;
- a segment whose write or fsync failed is never written again (the process
  starts a new one), so a folded offset never points past what a segment
  holds; a line written whose fsync then failed may be filed (as a message
  stored by a request that died before its answer is).

A segment is in use while its process holds a shared ``flock`` on it; one no
process holds (its process ended) and that is folded to its end is removed.
A process starts a new segment once its own passes ``SEGMENT_BYTES``. A
line is refused (``StorageFull``) when the filesystem has less than
``RESERVE`` free (an eighth of a smaller one): a line could still fit in a
segment's last page, but its fold, which rewrites a shard, could not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ... import jsonbytes
from ...errors import StorageFull
from ...fsutil import GroupCommit, ensure_private_dir, fsync_dir, read_fd, read_file, unlink_quietly, write_atomic
from ...locks import Locks
from ..store import StoreUnwritable

__all__ = ["Journal", "SEGMENT_BYTES"]

log = logging.getLogger("multimsg.store")

SEGMENT_BYTES = 8 << 20  # a process starts a new segment past this size (the folded one is then removed)
RESERVE = 1 << 20  # free bytes (or an eighth of a smaller filesystem) a new line must leave, to file it into its shard later
_OFFSETS = "folded"


_journals: "weakref.WeakSet[Journal]" = weakref.WeakSet()


def _after_fork() -> None:
    for journal in list(_journals):
        journal._forked()


os.register_at_fork(after_in_child=_after_fork)


class Journal:
    def __init__(self, folder: Path, locks: Locks, fsync: bool = True):
        self.folder = ensure_private_dir(folder)
        self._root = str(self.folder)
        self.locks = locks
        self.fsync = fsync
        self._group = GroupCommit()
        self._fd: int | None = None  # this process's segment, opened at its first line
        self._pid = 0
        self._size = 0
        self._folded: dict[str, int] = {}  # segment -> offset folded to, as last read or written here (never ahead)
        _journals.add(self)

    # -- appending ---------------------------------------------------------------------
    def append(self, record: dict, folders: tuple[str, ...] = ()) -> None:
        """Append ``record`` durably (shared with the threads appending at the same time); raises if it was not.

        ``folders``: fsynced too before it returns, once for the whole batch
        (the folder of the message's content link: one group commit covers both).
        """
        self._group.commit(jsonbytes.dumps(record) + b"\n", self._write, self.fsync, folders)

    def _write(self, data: bytes, fsync: bool, folders: set[str]) -> None:
        try:
            fd = self._segment()
            room = os.fstatvfs(fd)
            if room.f_bavail * room.f_frsize < min(RESERVE, room.f_blocks * room.f_frsize // 8):
                # A line may still fit in the segment's last page, but the fold could not file it: refused, as a full disk.
                raise StorageFull("the server's storage is full; the message was not stored")
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(fd, rest):]
            if fsync:
                for folder in folders:
                    fsync_dir(folder)
                os.fsync(fd)
            self._size += len(data)
            if self._size >= SEGMENT_BYTES:
                self._close()
        except OSError as exc:
            self._close()  # never written again: a fold may have read past what a cut-back would leave
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server's storage is full; the message was not stored") from exc
            raise StoreUnwritable(f"the store's journal cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc

    def _segment(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        self._fd = None  # a forked child's copy of its parent's segment is not its own (it is closed at fork)
        name = f"{self._root}/{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(name + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # in use (before a fold can list it): no fold removes it
            os.rename(name + ".new", name + ".log")
            if self.fsync:
                fsync_dir(self._root)  # the segment's name is durable before any line in it is answered
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid, self._size = fd, os.getpid(), 0
        return fd

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def _forked(self) -> None:
        """In a forked child: drop the parent's segment (its lines are the parent's to write, its flock the parent's to hold)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._group = None, GroupCommit()

    # -- folding -----------------------------------------------------------------------
    def _segments(self) -> Iterator[os.DirEntry]:
        try:
            yield from (e for e in os.scandir(self._root) if e.name.endswith(".log"))
        except FileNotFoundError:
            return

    def pending(self) -> bool:
        """Whether some segment may hold lines not folded yet (a directory listing and a stat per segment)."""
        folded = self._folded
        for entry in self._segments():
            try:
                if entry.stat().st_size > folded.get(entry.name, 0):
                    return True
            except FileNotFoundError:
                continue
        return False

    def find(self, message_id: str) -> dict | None:
        """The record of ``message_id`` among the lines not folded yet (the last one, if added twice), without the lock.

        What a read that only looks (``TinyStore.get``) asks instead of folding:
        a ``/cons`` right after a ``/msg`` never waits for the filing of
        everything queued since the last fold.
        """
        needle = b'"id":"' + message_id.encode() + b'"'
        folded = self._read_offsets()
        for entry in list(self._segments()):
            start = folded.get(entry.name, 0)
            try:
                if entry.stat().st_size <= start:
                    continue
                data = read_file_from(entry.path, start)
            except FileNotFoundError:
                continue
            at = len(data)
            while (at := data.rfind(needle, 0, at)) >= 0:
                end = data.find(b"\n", at)
                if end < 0:
                    continue  # still being written
                try:
                    record = jsonbytes.loads(data[data.rfind(b"\n", 0, at) + 1:end])
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("id") == message_id:
                    return record
        return None

    def fold(self, file: Callable[[list[dict]], None], force: bool = False) -> None:
        """File every line not folded yet (``file(records)``, which writes them durably), then record the offsets."""
        if not force and not self.pending():
            return
        with self.locks.keyed("journal"):
            self._fold_held(file)

    @contextmanager
    def holding(self, file: Callable[[list[dict]], None]) -> Iterator[None]:
        """The journal lock, held after a fold: for a change that must not race one (``archive``)."""
        with self.locks.keyed("journal"):
            self._fold_held(file)
            yield

    def _fold_held(self, file: Callable[[list[dict]], None]) -> None:
        folded = self._read_offsets()
        records: list[dict] = []
        ends: dict[str, int] = {}
        ended: list[str] = []
        for entry in list(self._segments()):
            start = folded.get(entry.name, 0)
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                done = self._unused(fd)
                data = _read_fd_from(fd, start)
            finally:
                os.close(fd)
            end = start + data.rfind(b"\n") + 1  # a line without its newline is still being written (or was torn)
            for line in data[: end - start].split(b"\n"):
                if not line:
                    continue
                try:
                    record = jsonbytes.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    records.append(record)
                else:
                    log.error("store journal %s holds an unreadable line; skipped: %r", entry.name, line[:200])
            ends[entry.name] = end
            if done:
                ended.append(entry.name)
        if records:
            file(records)
        offsets = {name: end for name, end in ends.items() if name not in ended}
        if offsets != folded:
            try:
                write_atomic(f"{self._root}/{_OFFSETS}", json.dumps(offsets).encode(), fsync=self.fsync)
            except OSError as exc:  # the lines are filed; the next fold files them again (skipped) and tries this again
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StorageFull("the server's storage is full; try again later") from exc
                raise StoreUnwritable(f"the store's journal cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc
        for name in ended:  # folded to its end, its process gone: never read again
            unlink_quietly(f"{self._root}/{name}")
        self._folded = offsets

    @staticmethod
    def _unused(fd: int) -> bool:
        """Whether no process holds the segment (it is written no more)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _read_offsets(self) -> dict[str, int]:
        try:
            document = json.loads(read_file(f"{self._root}/{_OFFSETS}"))
        except FileNotFoundError:
            return {}
        except ValueError:
            # Written atomically, so this is damage from outside: fold everything again (present messages are skipped).
            log.error("store journal offsets unreadable; every segment is folded again from its start")
            return {}
        return {k: v for k, v in document.items() if isinstance(v, int)} if isinstance(document, dict) else {}


def read_file_from(path: str, start: int) -> bytes:
    """The bytes of ``path`` from offset ``start`` to its end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd_from(fd, start)
    finally:
        os.close(fd)


def _read_fd_from(fd: int, start: int) -> bytes:
    os.lseek(fd, start, os.SEEK_SET)
    return read_fd(fd)
