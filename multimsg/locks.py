"""The data folder's locks: held across the threads of a process and across processes, never polled.

A lock is a ``threading.Lock`` for the threads of this process, then a kernel
lock for the other processes: the kernel puts a waiting process to sleep and
wakes it when the holder lets go (or dies: its locks go with it), so a
contended lock costs no sleeping loop and no added latency. ``filelock``, which
the project used before, polls a contended lock every 50 ms, and costs some
40 system calls per cycle even uncontended.

- ``Locks.slot(n)``: one of many numbered locks (the store's shards), a byte
  range of the one file ``locks/slots.lock``, kept open by each process: an
  uncontended slot is two ``fcntl`` calls. These are open-file-description
  locks (``F_OFD_SETLKW``), so they are never dropped by another ``close`` of
  the same file in the process, and there is no false deadlock detection.
- ``Locks.keyed(name)``: a lock by name, as a byte of the same file at the
  name's hash (the per-client history and usage locks, taken on every
  request: no file to open and close).
- ``Locks.named(name)``: a lock of its own file, ``locks/<name>.lock``
  (``flock``): open, lock, unlock, close.

The in-process wait gives up after ``timeout`` seconds (``LockTimeout``). The
wait for another process has no time limit: the kernel cannot bound it, and no
holder does network I/O or waits for anything else while it holds a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["Locks", "LockTimeout", "locks_of"]

_KEYED = 1 << 48  # keyed locks' bytes start here, above any slot number (a shard's, up to 12 hex digits)
_generation = 0  # bumped in a forked child: its copies of the parent's locks and file are not its own


def _after_fork() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


class LockTimeout(Exception):
    """Another thread of this process held the lock for longer than the timeout."""


def _range(kind: int, start: int) -> bytes:
    # struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t, 0 for OFD locks)
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


class Locks:
    def __init__(self, folder: Path, timeout: float = 30.0):
        self.folder = folder
        self.timeout = timeout
        self._guard = threading.Lock()
        self._threads: dict[str, threading.Lock] = {}
        self._slots_fd: int | None = None
        self._generation = _generation

    def _thread_lock(self, key: str) -> threading.Lock:
        with self._guard:
            if self._generation != _generation:  # a forked child: start afresh
                self._threads, self._slots_fd, self._generation = {}, None, _generation
            lock = self._threads.get(key)
            if lock is None:
                lock = self._threads[key] = threading.Lock()
            return lock

    @contextmanager
    def _in_process(self, key: str) -> Iterator[None]:
        lock = self._thread_lock(key)
        if not lock.acquire(timeout=self.timeout):
            raise LockTimeout(f"the lock {key} was busy for {self.timeout:g} s")
        try:
            yield
        finally:
            lock.release()

    def _slots(self) -> int:
        with self._guard:
            if self._slots_fd is None:
                self._slots_fd = os.open(self.folder / "slots.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            return self._slots_fd

    @contextmanager
    def slot(self, number: int) -> Iterator[None]:
        """Hold numbered lock ``number`` (0 or more)."""
        with self._in_process(f"slot-{number}"), self._byte(number):
            yield

    @contextmanager
    def keyed(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` as a byte of ``locks/slots.lock`` (two ``fcntl`` calls): for the hot per-client locks.

        The byte is at the name's 40-bit hash above every slot number, so two
        names share a byte with odds of one in a trillion (they would only
        wait for each other). Unlike ``named``, no file of its own shows it.
        """
        offset = _KEYED + int.from_bytes(hashlib.blake2b(name.encode(), digest_size=5).digest(), "big")
        with self._in_process(name), self._byte(offset):
            yield

    @contextmanager
    def _byte(self, offset: int) -> Iterator[None]:
        fd = self._slots()
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _range(fcntl.F_WRLCK, offset))
        try:
            yield
        finally:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _range(fcntl.F_UNLCK, offset))

    @contextmanager
    def named(self, name: str) -> Iterator[None]:
        """Hold the lock ``locks/<name>.lock``."""
        with self._in_process(name):
            fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # drops the flock


_registry: dict[Path, Locks] = {}
_registry_guard = threading.Lock()


def locks_of(folder: Path) -> Locks:
    """The process's one ``Locks`` of a locks folder (every store and spool of it shares its threads' locks)."""
    with _registry_guard:
        locks = _registry.get(folder)
        if locks is None:
            locks = _registry[folder] = Locks(folder)
        return locks
