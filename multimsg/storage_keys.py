"""The storage key: what wraps the data key of every upload kept at rest (``queue/sealed.py``).

It is never kept beside the data. Either ``MULTIMSG_STORAGE_KEY`` (the
base64 of 32 bytes; a comma-separated list during a rotation, the first one
current), or a key file outside the data folder (``MULTIMSG_STORAGE_KEY_FILE``,
``~/.config/multimsg/storage-keys`` by default), made on first run with a
WARNING saying where it is and that it must be kept (and backed up) apart
from the data: without it the uploads cannot be read. The file holds one
base64 key a line, the current one first; the others are older keys kept
until every upload has been re-wrapped (``multimsg keys rotate-storage``).

A key is named by its id, the first 8 bytes of the SHA-256 of a fixed label
and the key: the id is stored with each wrapped data key, the key never is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from filelock import FileLock

from .fsutil import ensure_private_dir, write_atomic

__all__ = ["StorageKeys", "KeyFile", "storage_keys", "key_id", "KEY_SIZE", "ID_SIZE"]

log = logging.getLogger("multimsg.storage_keys")

KEY_SIZE = 32
ID_SIZE = 8


@lru_cache(maxsize=64)
def key_id(key: bytes) -> bytes:
    # Asked a few times for every stored file opened (a keyring holds a few keys): worked out once per key.
    return hashlib.sha256(b"multimsg storage key\0" + key).digest()[:ID_SIZE]


def _parse(text: str, where: str) -> list[bytes]:
    keys = []
    for item in (part.strip() for part in text.replace("\n", ",").split(",")):
        if not item or item.startswith("#"):
            continue
        try:
            key = base64.b64decode(item, validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != KEY_SIZE:
            raise SystemExit(f"{where}: a storage key must be the base64 of {KEY_SIZE} bytes (e.g. openssl rand -base64 32)")
        keys.append(key)
    if not keys:
        raise SystemExit(f"{where} holds no storage key")
    return keys


@dataclass(frozen=True)
class StorageKeys:
    """The keyring: ``current`` wraps new data keys; every key in it unwraps."""

    keys: tuple[bytes, ...]
    source: str  # where they come from, for messages

    @property
    def current(self) -> bytes:
        return self.keys[0]

    def by_id(self, ident: bytes) -> bytes | None:
        return next((k for k in self.keys if key_id(k) == ident), None)


class KeyFile:
    """The key file: made on first use (0600, in a 0700 folder), re-read when it changes (one stat)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple | None = None
        self._keys: StorageKeys | None = None

    def _lock(self) -> FileLock:
        return FileLock(str(self.path) + ".lock", timeout=30)

    def load(self) -> StorageKeys:
        try:
            stat = os.stat(self.path)
            stamp: tuple | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp is None or stamp != self._stamp or self._keys is None:
            if stamp is None:
                self._generate()
            self._keys = StorageKeys(tuple(_parse(self.path.read_text(), str(self.path))), str(self.path))
            stat = os.stat(self.path)
            self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return self._keys

    def _generate(self) -> None:
        ensure_private_dir(self.path.parent)
        with self._lock():
            if self.path.exists():
                return  # another process made it first
            write_atomic(self.path, base64.b64encode(os.urandom(KEY_SIZE)) + b"\n")
        log.warning("made a new storage key in %s: it encrypts every upload kept at rest. Keep it, and back it up, "
                    "apart from the data folder (without it the uploads cannot be read; with it, a copy of the data "
                    "can). Every gateway that shares this store needs the same file, or MULTIMSG_STORAGE_KEY.", self.path)

    def add_current(self) -> StorageKeys:
        """Put a new key first (the old ones stay, to unwrap what is not re-wrapped yet)."""
        with self._lock():
            old = self.load().keys
            write_atomic(self.path, b"".join(base64.b64encode(k) + b"\n" for k in (os.urandom(KEY_SIZE), *old)))
        self._keys = None
        return self.load()

    def keep_only(self, keep: list[bytes]) -> StorageKeys:
        with self._lock():
            kept = [k for k in self.load().keys if k in keep]
            write_atomic(self.path, b"".join(base64.b64encode(k) + b"\n" for k in kept))
        self._keys = None
        return self.load()


class _Fixed:
    def __init__(self, keys: StorageKeys):
        self.keys = keys

    def load(self) -> StorageKeys:
        return self.keys


def storage_keys(value: str | None, path: Path, home: Path) -> "KeyFile | _Fixed":
    """The keyring source: ``MULTIMSG_STORAGE_KEY`` when set, else the key file (never inside the data folder)."""
    if value:
        return _Fixed(StorageKeys(tuple(_parse(value, "MULTIMSG_STORAGE_KEY")), "MULTIMSG_STORAGE_KEY"))
    resolved, data = path.expanduser().resolve(), home.expanduser().resolve()
    if resolved == data or data in resolved.parents:
        raise SystemExit(f"MULTIMSG_STORAGE_KEY_FILE {resolved} is inside the data folder {data}: keep the storage key "
                         "apart from the data it protects (a copy of the folder would carry its own key)")
    return KeyFile(resolved)
