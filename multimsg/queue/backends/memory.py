"""The memory backend: records, leases, figures and content in this process's memory.

A full peer of the other backends (the contract suite runs over it), for
tests of the engine and single-process experiments; nothing survives the
process. The due index is a heap of (due time, id) with lazy deletion.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ...errors import NotFound
from ...ids import new_id
from ...model import BadRecord, Message, State
from .. import figures
from ..counters import Counters, apply_pass
from ..outbox import Event
from ..spool import BytesContent, Content, DataInfo, Spool
from ..store import MessageStore

__all__ = ["MemoryStore", "MemoryCounters", "MemorySpool"]


class MemoryCounters(Counters):
    def __init__(self) -> None:
        self.figures: figures.Figures = figures.empty()
        self.drain: dict[str, Any] = {}
        self.lock = threading.Lock()

    def documents(self) -> Iterable[figures.Figures]:
        return [self.figures]

    def drain_figures(self) -> dict[str, Any]:
        return dict(self.drain)

    def drain_pass(self, seconds: float, summary: dict) -> None:
        with self.lock:
            apply_pass(self.drain, seconds, summary, time.time())


class MemoryStore(MessageStore):
    counters: MemoryCounters

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}  # id -> stored record (as a backend stores it)
        self.archived: list[dict] = []
        self.counters = MemoryCounters()
        self._due: list[tuple[float, str]] = []
        self._lock = self.counters.lock
        self.events: dict[str, dict] = {}  # the outbox: event id -> record
        self.event_counts: dict[str, int] = {"delivered": 0, "given_up": 0}
        self._history: dict[str, dict[str, float]] = {}  # client -> {id: created_at}
        self._history_archived: dict[str, dict] = {}  # id -> the record as archived

    # -- inside the lock -------------------------------------------------------
    def _put(self, before: Message | None, after: Message, now: float) -> Message:
        """Write the record and move its events into the outbox, in one step; the message as stored."""
        for event in after.events:
            self.events.setdefault(event["id"], event)
        after = after.with_changes(events=[]) if after.events else after
        self.records[after.id] = after.to_record()
        figures.count(self.counters.figures, before, after, now)
        due = after.due_at()
        if due is not None:
            heapq.heappush(self._due, (due, after.id))
        return after

    def _load(self, message_id: str) -> Message | None:
        record = self.records.get(message_id)
        return None if record is None else Message.from_record(record)

    # -- the contract ------------------------------------------------------------
    def add(self, message: Message) -> None:
        with self._lock:
            self._put(None, message, message.created_at)
            self._history.setdefault(message.client, {})[message.id] = message.created_at

    def get(self, message_id: str) -> Message | None:
        with self._lock:
            return self._load(message_id)

    def claim_due(self, now: float, lease: float, accept: Callable[[Message], bool] | None = None,
                  limit: int | None = None, lapsed_only: bool = False,
                  clock: Callable[[], float] | None = None) -> Iterator[Message]:
        taken = 0
        refused: list[tuple[float, str]] = []
        try:
            while limit is None or taken < limit:
                with self._lock:
                    if not self._due or self._due[0][0] > now:
                        return
                    due, message_id = heapq.heappop(self._due)
                    try:
                        message = self._load(message_id)
                    except BadRecord as exc:
                        self._fail_bad(message_id, str(exc), now)
                        continue
                    if message is None or message.due_at() != due or not message.is_due(now):
                        continue  # stale entry: the message moved on
                    if (lapsed_only and message.claim is None) or (accept is not None and not accept(message)):
                        refused.append((due, message_id))
                        continue
                    at = clock() if clock else now
                    claimed = message.with_changes(claim=new_id(), claim_until=at + lease)
                    self._put(message, claimed, at)
                taken += 1
                yield claimed
        finally:
            with self._lock:
                for entry in refused:
                    heapq.heappush(self._due, entry)

    def _fail_bad(self, message_id: str, reason: str, now: float) -> None:
        record = self.records[message_id]
        record.update({"state": str(State.FAILED), "last_error": f"malformed record: {reason}", "claim": None, "updated_at": now})

    def extend(self, claims: Iterable[Message], until: float) -> list[bool]:
        results = []
        with self._lock:
            for claim in claims:
                current = self._load(claim.id)
                if current is None or not current.leased_by(claim.claim or ""):
                    results.append(False)
                    continue
                self._put(current, current.with_changes(claim_until=until), until)
                results.append(True)
        return results

    def finish(self, claim: Message, changes: dict[str, Any], now: float) -> Message | None:
        with self._lock:
            current = self._load(claim.id)
            if current is None or claim.claim is None or not current.leased_by(claim.claim):
                return None
            return self._put(current, self.finished(current, changes, now), now)

    def update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        with self._lock:
            current = self._load(message_id)
            if current is None:
                return None
            after = change(current)
            if after is not None and after != current:
                return self._put(current, after, now)
            return after

    # -- the outbox --------------------------------------------------------------
    def enqueue_event(self, event: Event) -> None:
        with self._lock:
            self.events.setdefault(event.id, event.to_record())

    def claim_events(self, now: float, lease: float, limit: int = 100) -> list[Event]:
        with self._lock:
            due = sorted((e.due_at(), e.id, e) for e in map(Event.from_record, self.events.values()) if e.due_at() <= now)
            claimed = []
            for _, _, event in due[:limit]:
                event = event.with_changes(claim=new_id(), claim_until=now + lease)
                self.events[event.id] = event.to_record()
                claimed.append(event)
            return claimed

    def finish_event(self, claim: Event, next_at: float | None, delivered: bool, now: float) -> bool:
        with self._lock:
            record = self.events.get(claim.id)
            if record is None or claim.claim is None or record.get("claim") != claim.claim:
                return False
            if next_at is None:
                del self.events[claim.id]
                self.event_counts["delivered" if delivered else "given_up"] += 1
            else:
                self.events[claim.id] = claim.with_changes(claim=None, claim_until=None, next_at=next_at,
                                                           attempts=claim.attempts + 1).to_record()
            return True

    def outbox_figures(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self.events), **self.event_counts}

    def report(self, message_id: str, now: float) -> Message | None:
        with self._lock:
            message = self._load(message_id)
            if message is not None and message.final and message.reported_at is None:
                reported = message.with_changes(reported_at=now)
                self._put(message, reported, now)
                return reported
            return message

    def archive(self, message_id: str, now: float, if_: Callable[[Message], bool] | None = None) -> Message | None:
        with self._lock:
            message = self._load(message_id)
            if message is None or (if_ is not None and not if_(message)):
                return None
            self.archived.append(self.records.pop(message_id))
            self._history_archived[message_id] = self.archived[-1]
            figures.count(self.counters.figures, message, None, now)
            return message

    def final_messages(self) -> Iterator[Message]:
        return iter([m for m in self.messages() if m.final])

    def history_index(self, client: str, now: float) -> list[tuple[float, str]]:
        start = now - self.history_window
        with self._lock:
            index = self._history.get(client, {})
            for message_id in [i for i, at in index.items() if at < start]:
                del index[message_id]
                self._history_archived.pop(message_id, None)
            return [(at, message_id) for message_id, at in index.items()]

    def history_load(self, client: str, message_ids: list[str]) -> dict[str, Message]:
        found = {}
        with self._lock:
            for message_id in message_ids:
                record = self.records.get(message_id) or self._history_archived.get(message_id)
                try:
                    message = None if record is None else Message.from_record(record)
                except BadRecord:
                    continue
                if message is not None and message.client == client:
                    found[message_id] = message
        return found

    def messages(self) -> Iterator[Message]:
        with self._lock:
            records = list(self.records.values())
        found = []
        for record in records:
            try:
                found.append(Message.from_record(record))
            except BadRecord:
                continue
        return iter(found)

    def rebuild(self, changed_only: bool = False) -> int:
        messages = list(self.messages())
        with self._lock:
            self._due = [(due, m.id) for m in messages if (due := m.due_at()) is not None]
            heapq.heapify(self._due)
            return figures.recount(self.counters.figures, messages)


class MemorySpool(Spool):
    def __init__(self, ttl: float = 24 * 3600.0, clock: Callable[[], float] = time.time):
        self.ttl = ttl
        self.clock = clock
        self.uploads: dict[tuple[str, str], tuple[DataInfo, bytes]] = {}
        self.messages: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        data = b"".join(chunks)
        info = DataInfo(new_id(), len(data), filename, self.clock())
        with self._lock:
            self.uploads[(client, info.data_id)] = (info, data)
        return info

    def _upload(self, client: str, data_id: str) -> tuple[DataInfo, bytes]:
        with self._lock:
            found = self.uploads.get((client, data_id))
        if found is None:
            raise NotFound("unknown data id")
        if self.clock() - found[0].created_at > self.ttl:
            raise NotFound("data id has expired; upload the file again")
        return found

    def get(self, client: str, data_id: str) -> DataInfo:
        return self._upload(client, data_id)[0]

    def content(self, client: str, data_id: str) -> Content:
        return BytesContent(self._upload(client, data_id)[1])

    def attach(self, client: str, data_id: str, message_id: str) -> None:
        data = self._upload(client, data_id)[1]
        with self._lock:
            self.messages[(client, message_id)] = data

    def message_content(self, client: str, message_id: str) -> Content:
        with self._lock:
            data = self.messages.get((client, message_id))
        if data is None:
            raise FileNotFoundError(message_id)
        return BytesContent(data)

    def release(self, client: str, message_id: str) -> None:
        with self._lock:
            self.messages.pop((client, message_id), None)

    def rewrite_heads(self, size: int, change: Callable[[bytes], bytes | None]) -> int:
        changed = 0
        with self._lock:
            for key, (info, data) in list(self.uploads.items()):
                new = change(data[:size]) if len(data) >= size else None
                if new is not None:
                    self.uploads[key], changed = (info, new + data[size:]), changed + 1
            for key, data in list(self.messages.items()):
                new = change(data[:size]) if len(data) >= size else None
                if new is not None:
                    self.messages[key], changed = new + data[size:], changed + 1
        return changed

    def usage(self, client: str) -> int:
        with self._lock:
            return sum(info.size for (owner, _), (info, _) in self.uploads.items() if owner == client)

    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        with self._lock:
            expired = [key for key, (info, _) in self.uploads.items() if now - info.created_at > self.ttl]
            for key in expired:
                del self.uploads[key]
            orphans = []
            if live is not None:
                keep = set(live)
                orphans = [key for key in self.messages if key[1] not in keep]
                for key in orphans:
                    del self.messages[key]
        return len(expired) + len(orphans)
