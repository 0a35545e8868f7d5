"""Idempotency keys on ``POST /data`` and ``POST /msg``: a retried request gets the first answer and creates nothing.

Follows the IETF httpapi ``Idempotency-Key`` draft
(draft-ietf-httpapi-idempotency-key-header): the client sends
``Idempotency-Key: <key>`` (1-255 printable ASCII characters; the draft's
quoted Structured Field string ``"<key>"`` is taken too). For the same key
from the same client on the same endpoint, within ``MULTIMSG_IDEMPOTENCY_TTL``
(24 h):

- the first request runs; its successful answer (status, id) is recorded
  durably before it goes out;
- a repeat with the same request gets that answer again (same id, same
  status, header ``Idempotent-Replayed: true``) and creates nothing;
- a repeat with a different request is 422 with a reason;
- a repeat while the first is still being processed is 409 (try again).

An answer that is an error is not recorded: the key is free again, so a
request refused for bad input (or a full disk) can be sent again as is.

The *fingerprint* says what a request means, not its bytes on the wire (a
retried multipart body has another boundary): for ``/msg`` its fields, for
``/data`` the file name, the ``key`` part and the file's bytes, hashed as the
upload is copied into the spool (``Fingerprint.reader``), not read twice or
held in memory.

``KeyRecords`` is the backend contract (``peek``, ``begin``, ``complete``,
``release``, ``sweep``); ``FileKeyRecords`` keeps one small JSON file per key
in the data folder (``MULTIMSG_HOME/idempotency/``), written with ``fsync``
like the store; the Redis peer is ``queue/backends/redis_idempotency.py``. A
first request that dies mid-way (a crash) holds its key for at most ``LEASE``
seconds; then a retry runs again.

A first request that creates a message (``/msg``, ``/send``: the callers that
give ``once`` a ``find``) reserves the message's id in its hold, written
durably before the message is, and creates the message under that id. A crash
after the message was stored and before its answer was recorded then makes no
second message: a repeat finds the reserved message and gets its answer,
whether the dead request's hold is still live (instead of a 409 for the rest
of the lease) or has lapsed and is taken over (the new hold keeps the id).
The hold keeps the request's fingerprint too, so a different request under
the key is still a 422. ``/data`` reserves nothing: a crash there can leave
one unused upload behind, never a message sent twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from filelock import FileLock

from .errors import Conflict, InvalidInput, Unprocessable
from .fsutil import ensure_private_dir, write_atomic
from .ids import new_id

__all__ = ["HEADER", "REPLAYED_HEADER", "LEASE", "Answer", "Fingerprint", "KeyRecords", "FileKeyRecords",
           "parse_key", "parse_record", "record_name", "once", "pending_value"]

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY = 255
LEASE = 600.0  # seconds a first request holds its key while it runs (a crashed one's hold then lapses)
_CHUNK = 1 << 20


def parse_key(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (None: no header); InvalidInput if it is not 1-255 printable ASCII."""
    if header is None:
        return None
    key = header.strip()
    if len(key) > 2 and key[0] == key[-1] == '"':  # the draft's sf-string form
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise InvalidInput(f"header {HEADER} must be 1 to {MAX_KEY} printable ASCII characters")
    return key


def record_name(client: str, scope: str, key: str) -> str:
    """Where a key's record is kept: the same key of another client or endpoint is another record."""
    return hashlib.sha256(f"{client}\0{scope}\0{key}".encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    """A recorded successful answer: what a repeat gets again."""

    status: int
    text: str
    data: dict[str, Any]


class Fingerprint:
    """The SHA-256 of what a request means: named parts, each length-prefixed (so parts cannot run together)."""

    def __init__(self, scope: str):
        self._hash = hashlib.sha256(scope.encode() + b"\0")
        self._reader: _HashingReader | None = None

    def add(self, name: str, value: bytes) -> "Fingerprint":
        self._hash.update(f"{name}:{len(value)}:".encode() + value)
        return self

    def reader(self, stream: BinaryIO) -> BinaryIO:
        """``stream``, hashed as it is read (the last part of the fingerprint); ``hexdigest`` reads what is left."""
        self._hash.update(b"stream:")
        self._reader = _HashingReader(stream, self._hash)
        return self._reader  # type: ignore[return-value]

    def hexdigest(self) -> str:
        if self._reader is not None:
            self._reader.finish()
        return self._hash.hexdigest()

    @classmethod
    def of_fields(cls, scope: str, fields: dict[str, str]) -> str:
        return cls(scope).add("fields", json.dumps(fields, sort_keys=True).encode()).hexdigest()


class _HashingReader:
    """A file object that hashes its bytes in order as they are read, once each.

    A reader that seeks (the decryption reads the tag at the end first) is
    fine: only reads that continue the hashed prefix are hashed; ``finish``
    hashes the rest.
    """

    def __init__(self, raw: BinaryIO, hasher: Any):
        self.raw, self.hasher, self.hashed = raw, hasher, 0
        self._offset = 0  # our own count when the stream cannot tell()

    def _tell(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, AttributeError, ValueError):
            return self._offset

    def read(self, size: int = -1) -> bytes:
        start = self._tell()
        chunk = self.raw.read(size)
        end = start + len(chunk)
        self._offset = end
        if start <= self.hashed < end:
            self.hasher.update(chunk[self.hashed - start:])
            self.hashed = end
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._offset = self.raw.seek(offset, whence)
        return self._offset

    def tell(self) -> int:
        return self._tell()

    def finish(self) -> None:
        try:
            self.raw.seek(self.hashed)
        except (OSError, AttributeError, ValueError):
            pass  # not seekable: reads only went forward, from where the hash stands
        while chunk := self.raw.read(_CHUNK):
            self.hasher.update(chunk)
            self.hashed += len(chunk)


# -- the records -----------------------------------------------------------------------------
def pending_value(token: str, now: float, lease: float, reserved: str | None = None, fingerprint: str | None = None,
                  keep: float | None = None) -> str:
    """A first request's hold on a key, as stored: until ``now + lease``; kept until ``now + keep`` (its reservation)."""
    record: dict[str, Any] = {"state": "pending", "token": token, "until": now + lease}
    if reserved is not None:
        record.update({"id": reserved, "fingerprint": fingerprint, "expires": now + max(lease, keep or 0.0)})
    return json.dumps(record)


def _done_value(fingerprint: str, answer: Answer, now: float, ttl: float) -> str:
    return json.dumps({"state": "done", "fingerprint": fingerprint, "answer": asdict(answer), "until": now + ttl})


class KeyRecords(ABC):
    """Idempotency records by name (``record_name``); values are the JSON of ``pending_value`` or a done record.

    A record lives until its ``until``; a hold that reserved an id is kept (not
    live, but readable by ``peek``) until its ``expires``.
    """

    @abstractmethod
    def peek(self, name: str) -> dict | None:
        """The record under ``name``, live or lapsed but still kept; None if there is none."""

    @abstractmethod
    def begin(self, name: str, pending: str, lease: float, now: float) -> dict | None:
        """Store ``pending`` under ``name`` unless a live record is there (atomically); None if stored, else that record.

        Stored durably (an fsync, or the store's own persistence): a hold may reserve the id of what its request creates.
        """

    @abstractmethod
    def complete(self, name: str, pending: str, done: str, ttl: float, now: float) -> None:
        """Replace our hold ``pending`` (or nothing, if it lapsed) with ``done``, durably before returning."""

    @abstractmethod
    def release(self, name: str, pending: str) -> None:
        """Remove our hold ``pending`` (the request failed: the key is free again)."""

    def sweep(self, now: float) -> int:
        """Remove expired records; returns how many (a backend whose records expire by themselves: 0)."""
        return 0


def parse_record(value: str | bytes | None) -> dict | None:
    """A stored record, or None for nothing or something that is not one (a torn or foreign file)."""
    if not value:
        return None
    try:
        record = json.loads(value)
        float(record["until"])
    except (ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _live(value: str | None, now: float) -> dict | None:
    record = parse_record(value)
    return record if record is not None and float(record["until"]) > now else None


def _kept(value: str | None, now: float) -> dict | None:
    """The record while it is live or, for a hold that reserved an id, until it ``expires``."""
    record = parse_record(value)
    if record is None:
        return None
    try:
        until = max(float(record["until"]), float(record.get("expires") or 0.0))
    except (TypeError, ValueError):
        return None
    return record if until > now else None


class FileKeyRecords(KeyRecords):
    """One JSON file per key under ``folder`` (``<name[:2]>/<name>``), a file lock per subfolder."""

    def __init__(self, folder: Path, *, fsync: bool = True):
        self.folder = Path(folder)
        self.fsync = fsync

    def _path(self, name: str) -> Path:
        return self.folder / name[:2] / name

    def _lock(self, name: str) -> FileLock:
        return FileLock(str(ensure_private_dir(self.folder / name[:2]) / ".lock"))

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    def peek(self, name: str) -> dict | None:
        return _kept(self._read(self._path(name)), time.time())

    def begin(self, name: str, pending: str, lease: float, now: float) -> dict | None:
        path = self._path(name)
        with self._lock(name):
            found = _live(self._read(path), now)
            if found is not None:
                return found
            write_atomic(path, pending.encode(), fsync=self.fsync)  # before the message whose id it may reserve
        return None

    def complete(self, name: str, pending: str, done: str, ttl: float, now: float) -> None:
        path = self._path(name)
        with self._lock(name):
            current = self._read(path)
            if current is None or current == pending or _live(current, now) is None:
                write_atomic(path, done.encode(), fsync=self.fsync)

    def release(self, name: str, pending: str) -> None:
        path = self._path(name)
        with self._lock(name):
            if self._read(path) == pending:
                path.unlink(missing_ok=True)

    def sweep(self, now: float) -> int:
        removed = 0
        if not self.folder.is_dir():
            return 0
        for sub in (p for p in self.folder.iterdir() if p.is_dir()):
            for path in sub.iterdir():
                if path.name.startswith("."):
                    continue
                with self._lock(path.name):
                    if _kept(self._read(path), now) is None:
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed


# -- the rule ----------------------------------------------------------------------------------
def once(records: KeyRecords, name: str, run: Callable[..., Answer], fingerprint: Callable[[], str], ttl: float,
         clock: Callable[[], float] = time.time, lease: float = LEASE,
         find: Callable[[str], Answer | None] | None = None) -> tuple[Answer, bool]:
    """``run()`` for the first request under ``name``; the recorded answer for a repeat. Returns (answer, replayed).

    With ``find`` (``/msg``, ``/send``), the hold reserves an id and
    ``run(reserved)`` creates under it; ``find(id)`` is the answer for what is
    already stored under an id, or None. Raises Conflict (409) while the first
    request runs and has stored nothing yet, Unprocessable (422) for a repeat
    whose ``fingerprint()`` differs from the first's.
    """
    now = clock()
    digest = reserved = None
    if find is None:
        pending = pending_value(new_id(), now, lease)
    else:
        digest = fingerprint()
        kept = records.peek(name)  # a dead request's hold: its reserved id is kept, and so is what it stored
        if kept is not None and kept.get("state") == "pending" and isinstance(kept.get("id"), str):
            if kept.get("fingerprint") != digest:
                raise Unprocessable(f"this {HEADER} was used for a different request; use a new key for a new request")
            reserved = kept["id"]
        reserved = reserved or new_id()
        pending = pending_value(new_id(), now, lease, reserved, digest, ttl)
    found = records.begin(name, pending, lease, now)
    if found is not None:
        if found.get("state") != "done":
            stored = find(found["id"]) if find is not None and isinstance(found.get("id"), str) else None
            if stored is None:
                raise Conflict(f"a request with this {HEADER} is still being processed; try again in a moment")
            if digest != found.get("fingerprint"):
                raise Unprocessable(f"this {HEADER} was used for a different request; use a new key for a new request")
            return stored, True  # the first request stored it; its answer is not recorded (yet, or ever: it died)
        if (digest or fingerprint()) != found.get("fingerprint"):
            raise Unprocessable(f"this {HEADER} was used for a different request; use a new key for a new request")
        answer = found["answer"]
        return Answer(int(answer["status"]), str(answer["text"]), dict(answer["data"])), True
    if find is not None and reserved is not None and digest is not None:
        stored = find(reserved)
        if stored is not None:  # a request that died after storing it: its answer, recorded now
            records.complete(name, pending, _done_value(digest, stored, clock(), ttl), ttl, clock())
            return stored, True
    try:
        answer = run() if reserved is None else run(reserved)
        digest = digest or fingerprint()
    except BaseException:
        records.release(name, pending)
        raise
    records.complete(name, pending, _done_value(digest, answer, clock(), ttl), ttl, clock())
    return answer, False
