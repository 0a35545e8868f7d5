"""Queue figures kept beside the store: depth, outcomes, latency, drain passes.

``CountingStore`` wraps any ``MessageStore`` (as TinyDB's ``Middleware`` wraps
a storage) and tells ``Counters`` about every state change it makes: a record
added, moved from one state to another (or retried: ``attempts`` went up and
it stayed queued), archived. ``Counters`` keeps the figures in one small JSON
file in the data folder (``Layout.counters``), changed under its own FileLock,
so every thread and process that shares the data folder sees the same figures
and a scrape or ``multimsg stats`` is one small file read, never a scan.

The file (a few KB; version 1)::

    {"services": {"<serv>": {
        "states":   {"queued": n, "delivered": n, "failed": n},   # records in the store now
        "queued":   {"<minute>": [count, earliest created_at]},    # queued records by creation minute
        "outcomes": {"delivered": n, "failed": n, "retried": n},   # totals since the file was made
        "recent":   {"delivered": {"<minute>": n}, ...},           # the same, per minute, last hour only
        "latency":  {"delivered": histogram, "failed": histogram}}},  # /msg accepted -> final state
     "drain": {"passes": n, "last_at": t, "last_seconds": s, "duration": histogram}}

A histogram is ``{"buckets": [count per upper bound in BOUNDS], "inf": n, "sum": s, "count": n}``.

The file is rewritten in place under the lock (readers take the lock too):
on ext4 a rename-over-existing costs several times more than the counting
itself. It is derived data, written without fsync. When the file is new, or
unreadable after a crash, the next change first recounts the depth from the
store (``records``) and skips its own event, which the recount already shows;
totals start again from there. ``multimsg stats --rebuild`` recounts on demand.
A crash between a store write and its counters write leaves that one change
uncounted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock, Timeout

from .layout import Layout
from .states import QUEUED
from .store import MessageStore

__all__ = ["Counters", "CountingStore", "LATENCY_BOUNDS", "DRAIN_BOUNDS", "OUTCOMES", "RETRIED", "RECENT_WINDOW"]

log = logging.getLogger("multimsg.counters")

RETRIED = "retried"
OUTCOMES = ("delivered", "failed", RETRIED)
RECENT_WINDOW = 3600.0  # "the last hour"
LATENCY_BOUNDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
DRAIN_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LOCK_TIMEOUT = 10.0


def _minute(t: float) -> str:
    return str(int(t // 60))


def _histogram(bounds: tuple) -> dict:
    return {"buckets": [0] * len(bounds), "inf": 0, "sum": 0.0, "count": 0}


def _observe(histogram: dict, bounds: tuple, value: float) -> None:
    value = max(0.0, value)
    for i, bound in enumerate(bounds):
        if value <= bound:
            histogram["buckets"][i] += 1
            break
    else:
        histogram["inf"] += 1
    histogram["sum"] += value
    histogram["count"] += 1


def _service(data: dict, serv: str) -> dict:
    entry = data.setdefault("services", {}).setdefault(serv, {})
    for key in ("states", "queued", "outcomes", "recent", "latency"):
        entry.setdefault(key, {})
    return entry


def _bump(mapping: dict, key: str | None, by: int = 1) -> None:
    value = mapping.get(key, 0) + by
    mapping[key] = max(0, value)


def _skip(data: dict, now: float) -> None:
    pass


class Counters:
    """The counters file of one data folder.

    ``records``, if given, lists the store's records: it is used to recount the
    depth when the file is new or unreadable.
    """

    def __init__(self, layout: Layout, clock: Callable[[], float] = time.time,
                 records: Callable[[], Iterable[dict] | None] | None = None):
        self.layout = layout
        self.path: Path = layout.counters
        self.clock = clock
        self.records = records

    def _lock(self) -> FileLock:
        return FileLock(self.layout.lock("counters"), timeout=LOCK_TIMEOUT)

    @staticmethod
    def _empty() -> dict:
        return {"version": 1, "services": {}, "drain": {}}

    @staticmethod
    def _parse(raw: bytes) -> dict | None:
        try:
            data = json.loads(raw)
        except ValueError:  # torn by a crash, or empty
            return None
        return data if isinstance(data, dict) else None

    # -- reading -------------------------------------------------------------
    def read(self) -> dict:
        """The figures as stored."""
        try:
            with self._lock():
                raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._empty()
        except Timeout:
            raw = self.path.read_bytes()  # best effort: a writer is stuck
        return self._parse(raw) or self._empty()

    # -- changing ------------------------------------------------------------
    def change(self, apply: Callable[[dict, float], object]) -> None:
        """Apply ``apply(data, now)`` to the figures under the counters lock."""
        try:
            with self._lock():
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                    data = None  # new file
                except FileExistsError:
                    fd = os.open(self.path, os.O_RDWR)
                    size = os.fstat(fd).st_size
                    data = self._parse(os.pread(fd, size, 0)) if size else None
                try:
                    now = self.clock()
                    if data is None:
                        data = self._empty()
                        if self.records is not None:
                            # The store already holds the change being counted: the recount shows it.
                            self._recount(data, self.records() or [])
                            apply = _skip
                    apply(data, now)
                    self._prune(data, now)
                    data["version"] = 1
                    data["updated_at"] = now
                    out = json.dumps(data, separators=(",", ":")).encode()
                    try:
                        rest = memoryview(out)
                        while rest:  # pwrite may write less than asked
                            rest = rest[os.pwrite(fd, rest, len(out) - len(rest)):]
                    except OSError:
                        os.ftruncate(fd, 0)  # empty, not torn: the next change recounts
                        raise
                    os.ftruncate(fd, len(out))
                finally:
                    os.close(fd)
        except Timeout:
            log.warning("counters lock busy for %.0f s; one change was not counted", LOCK_TIMEOUT)

    def _recount(self, data: dict, records: Iterable[dict]) -> int:
        counted = 0
        for entry in data.get("services", {}).values():
            entry["states"], entry["queued"] = {}, {}
        for record in records:
            if record.get("serv"):
                self._enter(_service(data, record["serv"]), record)
                counted += 1
        return counted

    @staticmethod
    def _prune(data: dict, now: float) -> None:
        oldest = int((now - RECENT_WINDOW) // 60)
        for entry in data.get("services", {}).values():
            for per_minute in entry.get("recent", {}).values():
                for minute in [m for m in per_minute if int(m) < oldest]:
                    del per_minute[minute]

    @staticmethod
    def _enter(entry: dict, record: dict) -> None:
        state = record.get("state")
        _bump(entry["states"], state)
        if state == QUEUED:
            created = float(record.get("created_at") or 0)
            bucket = entry["queued"].setdefault(_minute(created), [0, created])
            bucket[0] += 1
            bucket[1] = min(bucket[1], created)

    @staticmethod
    def _leave(entry: dict, record: dict) -> None:
        state = record.get("state")
        _bump(entry["states"], state, -1)
        if state == QUEUED:
            minute = _minute(float(record.get("created_at") or 0))
            bucket = entry["queued"].get(minute)
            if bucket:
                bucket[0] -= 1
                if bucket[0] <= 0:
                    del entry["queued"][minute]

    @staticmethod
    def _outcome(entry: dict, outcome: str, now: float) -> None:
        _bump(entry["outcomes"], outcome)
        _bump(entry["recent"].setdefault(outcome, {}), _minute(now))

    def added(self, record: dict) -> None:
        def apply(data, now):
            self._enter(_service(data, record["serv"]), record)

        self.change(apply)

    def moved(self, before: dict, after: dict) -> None:
        """A record changed: count a state change, or a retry (attempts up, still queued)."""
        old, new = before.get("state"), after.get("state")
        retried = old == new == QUEUED and after.get("attempts", 0) > before.get("attempts", 0)
        if old == new and not retried:
            return

        def apply(data, now):
            entry = _service(data, after.get("serv") or before["serv"])
            if retried:
                self._outcome(entry, RETRIED, now)
                return
            self._leave(entry, before)
            self._enter(entry, after)
            if new in OUTCOMES:
                self._outcome(entry, new, now)
                histogram = entry["latency"].setdefault(new, _histogram(LATENCY_BOUNDS))
                _observe(histogram, LATENCY_BOUNDS, now - float(after.get("created_at") or now))

        self.change(apply)

    def archived(self, record: dict) -> None:
        def apply(data, now):
            self._leave(_service(data, record["serv"]), record)

        self.change(apply)

    def drain_pass(self, seconds: float, summary: dict) -> None:
        """A drain pass that ran (not one that found another pass busy)."""

        def apply(data, now):
            drain = data.setdefault("drain", {})
            drain["passes"] = drain.get("passes", 0) + 1
            drain["last_at"] = now
            drain["last_seconds"] = seconds
            drain["last_summary"] = {k: v for k, v in summary.items() if k in ("claimed", "delivered", "retried", "failed")}
            _observe(drain.setdefault("duration", _histogram(DRAIN_BOUNDS)), DRAIN_BOUNDS, seconds)

        self.change(apply)

    def rebuild(self) -> int:
        """Recount the records now in the store (depth and queued ages); keeps the totals.

        Returns how many records were counted.
        """
        if self.records is None:
            raise NotImplementedError("these counters have no store to recount")
        records = list(self.records() or [])
        counted = len([r for r in records if r.get("serv")])
        self.change(lambda data, now: self._recount(data, records))
        return counted

    # -- figures -------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict:
        """Per service: depth by state, oldest queued age, outcomes in total and in the last hour."""
        data = self.read()
        now = self.clock() if now is None else now
        since = int((now - RECENT_WINDOW) // 60)
        services = {}
        for serv, entry in sorted(data.get("services", {}).items()):
            earliest = [bucket[1] for bucket in entry.get("queued", {}).values() if bucket and bucket[0] > 0]
            services[serv] = {
                "states": dict(entry.get("states", {})),
                "oldest_queued_age": max(0.0, now - min(earliest)) if earliest else None,
                "outcomes": {o: entry.get("outcomes", {}).get(o, 0) for o in OUTCOMES},
                "last_hour": {
                    o: sum(n for m, n in entry.get("recent", {}).get(o, {}).items() if int(m) >= since) for o in OUTCOMES
                },
                "latency": entry.get("latency", {}),
            }
        return {"services": services, "drain": data.get("drain", {}), "updated_at": data.get("updated_at")}


class CountingStore:
    """A ``MessageStore`` that counts the state changes it passes on to ``inner``.

    Everything else (reads, claims, methods the contract may grow) goes
    straight to ``inner``. A counters failure is logged, never raised: the
    store write it follows has already happened.
    """

    def __init__(self, inner: MessageStore, counters: Counters):
        self.inner = inner
        self.counters = counters
        if counters.records is None:
            counters.records = self._records

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _count(self, what: Callable, *args) -> None:
        try:
            what(*args)
        except Exception:
            log.exception("queue counters not updated")

    def _records(self) -> Iterable[dict] | None:
        records = getattr(self.inner, "records", None)  # TinyStore.records(); MemoryStore.records is a dict
        if callable(records):
            return records()
        if isinstance(records, dict):
            return list(records.values())
        return None

    def rebuild(self) -> int:
        """Recount the depth from the store's records (``multimsg stats --rebuild``)."""
        return self.counters.rebuild()

    # -- the contract ----------------------------------------------------------
    def add(self, record: dict) -> None:
        self.inner.add(record)
        self._count(self.counters.added, record)

    def get(self, message_id: str) -> dict | None:
        return self.inner.get(message_id)

    def update(self, message_id: str, changes: dict) -> dict | None:
        before = self.inner.get(message_id) if ("state" in changes or "attempts" in changes) else None
        after = self.inner.update(message_id, changes)
        if before is not None and after is not None:
            self._count(self.counters.moved, before, after)
        return after

    def claim_due(self, *args, **kwargs):
        return self.inner.claim_due(*args, **kwargs)

    def archive(self, message_id: str) -> dict | None:
        record = self.inner.archive(message_id)
        if record is not None:
            self._count(self.counters.archived, record)
        return record


MessageStore.register(CountingStore)
