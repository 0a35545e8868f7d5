"""The message store: where message records live while they are not archived.

``MessageStore`` is the contract (a handful of methods) that the gateway and
the drain use; ``TinyStore`` keeps records in TinyDB, ``MemoryStore`` in a
dict (for tests of the engine). A shared engine (Redis) is a third class.

TinyDB rewrites its whole file on every write, so ``TinyStore`` shards records
by message id over up to 4096 small files, each guarded by its own FileLock:
a request touches one shard of a few dozen records however many messages are
stored. Archived records leave TinyDB for an append-only JSON-lines file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from filelock import FileLock, Timeout
from tinydb import Query, TinyDB

from ..errors import Unavailable
from ..fsutil import append_durable
from .layout import Layout
from .states import FINAL_STATES, QUEUED
from .storage import AtomicJSONStorage

__all__ = ["MessageStore", "TinyStore", "MemoryStore", "is_due"]

_ID = Query().id
_TABLE = "messages"


def is_due(record: dict, now: float, claim: str) -> bool:
    """Whether the drain pass holding ``claim`` may take this record now.

    Only one pass runs at a time per data folder, so a claim by any other
    pass is one left behind by a pass that died: it goes back to the queue.
    """
    return (
        record.get("state") == QUEUED
        and record.get("next_attempt_at", 0) <= now
        and record.get("claim") != claim
    )


class MessageStore(ABC):
    """Message records, keyed by their ``id``."""

    @abstractmethod
    def add(self, record: dict) -> None:
        """Store a new record durably before returning."""

    @abstractmethod
    def get(self, message_id: str) -> dict | None:
        """The record, or None."""

    @abstractmethod
    def update(self, message_id: str, changes: dict) -> dict | None:
        """Apply ``changes`` and return the new record (None if there is none)."""

    @abstractmethod
    def claim_due(self, now: float, claim: str, accept: Callable[[dict], bool] | None = None) -> Iterator[dict]:
        """Mark due queued records as claimed by ``claim`` and yield them, a batch at a time.

        Lazy: a batch is read and claimed only when the previous one has been
        consumed, so a pass never holds the whole backlog in memory. ``accept``,
        if given, is asked once per due record whether the pass wants it now;
        a record it refuses is left as it is (not claimed, not yielded).
        """

    @abstractmethod
    def unreported(self, before: float) -> Iterator[str]:
        """Ids of records in a final state since before ``before`` (never asked for by /cons)."""

    @abstractmethod
    def archive(self, message_id: str) -> dict | None:
        """Move the record to the archive; return it (None if there is none)."""


class TinyStore(MessageStore):
    SHARD_HEX_DIGITS = 3  # 4096 shards: ~25 records each at 100k stored messages
    LOCK_TIMEOUT = 30.0

    def __init__(self, layout: Layout, *, fsync: bool = True):
        self.layout = layout
        self.fsync = fsync

    def shard_of(self, message_id: str) -> str:
        digest = hashlib.blake2b(message_id.encode(), digest_size=4).hexdigest()
        return digest[: self.SHARD_HEX_DIGITS]

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        try:
            with FileLock(self.layout.lock(name), timeout=self.LOCK_TIMEOUT):
                yield
        except Timeout:
            raise Unavailable("the store is busy; try again") from None

    @contextmanager
    def _table(self, shard: str):
        # A fresh TinyDB per operation, opened and closed under the shard's
        # lock: TinyDB's caches are per object and go stale across processes.
        with self._locked(f"shard-{shard}"):
            db = TinyDB(self.layout.shard(shard), storage=AtomicJSONStorage, fsync=self.fsync)
            try:
                yield db.table(_TABLE, cache_size=0)
            finally:
                db.close()

    def _read_unlocked(self, shard: str) -> list[dict]:
        # Safe without the lock: files are only ever replaced whole.
        try:
            raw = self.layout.shard(shard).read_bytes()
        except FileNotFoundError:
            return []
        return list(json.loads(raw).get(_TABLE, {}).values()) if raw else []

    def add(self, record: dict) -> None:
        with self._table(self.shard_of(record["id"])) as table:
            table.insert(record)

    def records(self) -> Iterator[dict]:
        """Every stored record: a full scan, for rebuilding figures (``queue.counters``), not for requests."""
        for entry in sorted(os.scandir(self.layout.store), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                yield from self._read_unlocked(entry.name[: -len(".json")])

    def unreported(self, before: float) -> Iterator[str]:
        for record in self.records():
            if record.get("state") in FINAL_STATES and record.get("updated_at", 0) < before:
                yield record["id"]

    def add_many(self, records: Iterable[dict]) -> int:
        """Store many new records, one write per shard (imports, benchmarks); returns how many."""
        by_shard: dict[str, list[dict]] = {}
        for record in records:
            by_shard.setdefault(self.shard_of(record["id"]), []).append(record)
        for shard, batch in by_shard.items():
            with self._table(shard) as table:
                table.insert_multiple(batch)
        return sum(len(batch) for batch in by_shard.values())

    def get(self, message_id: str) -> dict | None:
        for record in self._read_unlocked(self.shard_of(message_id)):
            if record.get("id") == message_id:
                return record
        return None

    def update(self, message_id: str, changes: dict) -> dict | None:
        with self._table(self.shard_of(message_id)) as table:
            if not table.update(changes, _ID == message_id):
                return None
            return dict(table.get(_ID == message_id))

    def claim_due(self, now: float, claim: str, accept: Callable[[dict], bool] | None = None) -> Iterator[dict]:
        # One shard is one batch. Shards are read without the lock first (files
        # are replaced whole), so a shard with nothing wanted costs no lock and
        # no write; the lock is held only to mark the batch, never while sending.
        names = sorted(entry.name[: -len(".json")] for entry in os.scandir(self.layout.store) if entry.name.endswith(".json"))
        for shard in names:
            wanted = {r["id"] for r in self._read_unlocked(shard) if is_due(r, now, claim) and (accept is None or accept(r))}
            if not wanted:
                continue
            with self._table(shard) as table:
                due = [doc for doc in table.all() if doc.get("id") in wanted and is_due(doc, now, claim)]
                if not due:
                    continue
                table.update({"claim": claim}, doc_ids=[doc.doc_id for doc in due])
            for doc in due:
                yield {**doc, "claim": claim}

    def archive(self, message_id: str) -> dict | None:
        record = self.get(message_id)
        if record is None:
            return None
        month = time.strftime("%Y-%m", time.gmtime())
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        # Archive first, then forget: a crash between leaves a record in both
        # places (archived twice at worst), never in neither.
        with self._locked("archive"):
            append_durable(self.layout.archive / f"messages-{month}.jsonl", line, fsync=self.fsync)
        with self._table(self.shard_of(message_id)) as table:
            table.remove(_ID == message_id)
        return record


class MemoryStore(MessageStore):
    """Records in a dict; for tests and single-process experiments."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.archived: list[dict] = []
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            self.records[record["id"]] = dict(record)

    def add_many(self, records: Iterable[dict]) -> int:
        count = 0
        for record in records:
            self.add(record)
            count += 1
        return count

    def get(self, message_id: str) -> dict | None:
        with self._lock:
            record = self.records.get(message_id)
            return dict(record) if record else None

    def update(self, message_id: str, changes: dict) -> dict | None:
        with self._lock:
            if message_id not in self.records:
                return None
            self.records[message_id].update(changes)
            return dict(self.records[message_id])

    def claim_due(self, now: float, claim: str, accept: Callable[[dict], bool] | None = None) -> Iterator[dict]:
        with self._lock:
            ids = list(self.records)
        for message_id in ids:
            with self._lock:
                record = self.records.get(message_id)
                if record is None or not is_due(record, now, claim):
                    continue
            if accept is not None and not accept(dict(record)):
                continue
            with self._lock:
                if not is_due(record, now, claim):
                    continue
                record["claim"] = claim
                taken = dict(record)
            yield taken

    def unreported(self, before: float) -> Iterator[str]:
        with self._lock:
            return iter([r["id"] for r in self.records.values()
                         if r.get("state") in FINAL_STATES and r.get("updated_at", 0) < before])

    def archive(self, message_id: str) -> dict | None:
        with self._lock:
            record = self.records.pop(message_id, None)
            if record is not None:
                self.archived.append(record)
            return record
