"""The replay record: every wrapped AES key is accepted once.

An encrypted upload is a wrapped key plus a ciphertext; whoever captures one
(on a network path without TLS, in a proxy's log) could post it again and get
the same content stored as their own upload. So the server keeps the SHA-256
of every wrapped key it accepted, and refuses a repeat (``Replayed``, 409).

A record must last as long as a key pair that opens its wrapped key is
accepted. Digests are filed under the key pair that was current when they were
claimed (``MULTIMSG_HOME/replay/<key fingerprint>/<first 3 hex digits>``, one
digest per line); a repeat is looked for under every accepted key pair, and the
folder of a key pair that is no longer accepted (rotated out and past
MULTIMSG_KEY_GRACE) is deleted. A key pair retired earlier expires no later
than the one current after it, so this keeps every record long enough.
Rotating the key (``multimsg keys rotate``) is what bounds the record: about
65 bytes per encrypted upload, for the lifetime of the current key plus the grace.

Claims of one digest file are serialised by its lock (one of 4096, by the
digest's first 3 hex digits; ``multimsg/locks.py``): a claim reads and appends
that one small file, so two processes cannot both accept one wrapped key, and
claims of other digests never wait for it.
Independent of the message store and spool.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import Replayed, Unavailable
from .fsutil import append_durable, ensure_private_dir, write_atomic
from .locks import LockTimeout, locks_of

__all__ = ["ReplayRecord", "digest_of"]

_FOLDER_RE = re.compile(r"[0-9a-f]{16}")


def digest_of(wrapped_key: bytes) -> str:
    return hashlib.sha256(wrapped_key).hexdigest()


class ReplayRecord:
    """Wrapped-key digests under ``folder`` (``MULTIMSG_HOME/replay``)."""

    def __init__(self, folder: Path, *, fsync: bool = True):
        self.folder = Path(folder)
        self.fsync = fsync

    @contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        ensure_private_dir(self.folder)
        held = ExitStack()
        try:
            held.enter_context(locks_of(self.folder).slot(int(digest[:3], 16)))
        except LockTimeout:
            raise Unavailable("the replay record is busy; try again") from None
        with held:
            yield

    def _file(self, key: str, digest: str) -> Path:
        return self.folder / key / digest[:3]

    @staticmethod
    def _holds(path: Path, digest: str) -> bool:
        try:
            return digest in path.read_text().split()
        except FileNotFoundError:
            return False

    def claim(self, wrapped_key: bytes, accepted: list[str]) -> tuple[str, str]:
        """Record ``wrapped_key`` (under ``accepted[0]``, the current key pair); ``Replayed`` if it is recorded already.

        ``accepted``: short fingerprints of the key pairs that open uploads now.
        Returns the claim, for ``release``.
        """
        digest = digest_of(wrapped_key)
        with self._lock(digest):
            self._prune(accepted)  # (other folders than the ones claims use: safe beside other claims)
            if any(self._holds(self._file(key, digest), digest) for key in accepted):
                raise Replayed(
                    "this encrypted upload was received before (its wrapped key was already used); "
                    "encrypt every upload with a fresh AES key"
                )
            path = self._file(accepted[0], digest)
            ensure_private_dir(path.parent)
            append_durable(path, (digest + "\n").encode(), fsync=self.fsync)
        return accepted[0], digest

    def release(self, claim: tuple[str, str]) -> None:
        """Forget a claim whose upload was not stored after all."""
        key, digest = claim
        path = self._file(key, digest)
        with self._lock(digest):
            try:
                lines = path.read_text().split()
            except FileNotFoundError:
                return
            kept = [line for line in lines if line != digest]
            if kept:
                write_atomic(path, "".join(line + "\n" for line in kept).encode(), fsync=self.fsync)
            else:
                path.unlink(missing_ok=True)

    def _prune(self, accepted: list[str]) -> None:
        """Delete the records of key pairs that no longer open anything (the caller holds the lock)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and _FOLDER_RE.fullmatch(entry.name) and entry.name not in accepted:
                shutil.rmtree(entry.path, ignore_errors=True)
