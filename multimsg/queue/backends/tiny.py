"""The embedded backend's store: TinyDB shards under the data folder, a due index, figures per shard.

A new message is not written into its shard by ``add``: it is one line of
this process's journal segment (``store/journal/``, ``tiny_journal.py``),
group-committed with the other threads' lines. ``get`` looks in the shard,
then in the lines not filed yet; every other operation first folds the
journal into the shards (``fold``: the lines not filed yet, from
every process's segment, filed as below), so what an add answered is seen by
every later read; the drain's pass does most of the filing, in batches.

TinyDB rewrites its whole file on every write, so records are sharded by
message id over up to 4096 small TinyDB files (``store/<shard>.json``), each
changed only under its own lock (``multimsg/locks.py``) and written atomically (temporary file,
fsync, rename, fsync of the folder). A change is one read and one write of one
shard of a few dozen records, however many messages are stored.

Beside the shards (all derived data, rebuilt by ``rebuild``):

- ``store/due/<shard>``: an empty file whose modification time is the
  earliest time any message of the shard is due (a retry, a lapsed lease);
  absent when none is; and ``store/due/at/<day>/<minute>/<shard>``, the same
  shard filed under the day and minute it is due. A pass lists the days, then
  only the minutes already due, and opens only those shards: with 100,000
  messages none of which is due (scheduled sends spread over the next 30
  days, say) it reads two short folder listings. (A flat ``at/<minute>/`` of
  an older version is still read, and emptied by the sweep's rebuild.) The index is lowered
  *before* a shard write that makes something due earlier and set exactly
  after it, so a crash leaves it early (a wasted look), never late.
- ``store/counts/<shard>.json``: the shard's figures (``queue/figures.py``),
  changed under the shard's lock right after its write; unreadable ones are
  recounted from the shard. ``store/counts/drain.json``: the drain's figures.
- ``store/quarantine/``: shard files that could not be read, set aside with
  an ERROR so that every other message keeps flowing; ids that hash to a
  damaged shard get ``Damaged`` (503) until an operator restores the file.

Archived records leave the shards for ``archive/messages-YYYY-MM.jsonl``.

Each client's history (``store.history``) is ``history/<client digest>/<day>.jsonl``
(``tiny_history.py``).

The outbox of status events is ``outbox/<event id>.json`` (one file per event,
written atomically, fsynced), changed under one ``outbox`` lock; delivered and
given-up counts are in ``outbox/counts.json``. A pass lists the folder: it
holds only the events not yet delivered.

A change and its events are in two files, so the shard is the commit point:
the record is written with its events (``Message.events``), which are then
written into the outbox (each unless already there) and the record written
again without them, under the shard's lock and the outbox lock (no pass can
take such an event before its record lets go of it). ``store/noted/<shard>``
marks a shard that may hold events on their way, made before its write;
``claim_events`` first completes the moves such marks name (a kill -9 in
between), and every change of a shard completes any it finds there. The
event's id was fixed in the record, so a move done twice stores it once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator

from ... import jsonbytes
from ...errors import StorageFull, Unavailable
from ...fsutil import append_durable, ensure_private_dir, fsync_dir, read_file, unlink_quietly, write_atomic, write_file
from ...ids import new_id
from ...layout import Layout
from ...locks import LockTimeout, locks_of
from ...model import BadRecord, Message, State
from .. import figures
from ..counters import Counters, apply_pass
from ..outbox import Event
from ..storage import AtomicJSONStorage
from ..store import Damaged, MessageStore, StoreUnwritable
from .tiny_history import TinyHistory, day
from .tiny_journal import Journal

__all__ = ["TinyStore", "ShardCounters"]

log = logging.getLogger("multimsg.store")

_TABLE = "messages"  # TinyDB's table name inside each shard file
SHARD_HEX_DIGITS = 3  # 4096 shards: ~25 records each at 100k stored messages
LOCK_TIMEOUT = 30.0
DUE_BUCKET = 60.0  # seconds per folder of the due index
DAY_BUCKETS = 1440  # minute folders per day folder
_LEGACY_MINUTE = 10**6  # an at/ entry this large is a minute of the flat layout (a day number is ~20,000)


def _raw_due(record: dict) -> float | None:
    """``Message.due_at`` of a raw record, without building the message (None: final or unreadable)."""
    try:
        if record.get("state") != State.QUEUED:
            return None
        due = float(record.get("next_attempt_at") or 0.0)
        if record.get("claim") is not None and record.get("claim_until") is not None:
            due = max(due, float(record["claim_until"]))
        return due
    except (TypeError, ValueError, AttributeError):
        return 0.0  # due now, so that the claim fails it with the reason


def _not_queued(record: Any) -> bool:
    """Whether a raw record may be final (an unreadable one is left to ``Message.from_record`` to refuse)."""
    return not isinstance(record, dict) or record.get("state") != State.QUEUED


# A leased record's lease end as a shard file holds it (``AtomicJSONStorage`` writes without spaces; unleased: null)
_CLAIM_UNTIL = re.compile(rb'"claim_until":(-?[0-9][0-9.eE+-]*)')


def _shard_number(name: str) -> int | None:
    """A shard's lock number from its name (hex digits); None for a name that is not a shard's."""
    try:
        return int(name, 16)
    except ValueError:
        return None


class _Txn:
    """The records of one shard, read under its lock; the changes to write back at the end."""

    def __init__(self, table: dict[str, Any]):
        self.table = table  # doc id -> record
        self.events: list[tuple[Message | None, Message | None]] = []  # (before, after) of each change, for the figures
        self.changed = False
        self.due_lowered: float | None = None
        self.noted = False  # a record written with status events for the outbox
        self.recovering = False  # opened to complete moves a crash interrupted

    def find(self, message_id: str) -> tuple[str, dict] | None:
        for doc_id, record in self.table.items():
            if isinstance(record, dict) and record.get("id") == message_id:
                return doc_id, record
        return None

    def put(self, doc_id: str | None, before: Message | None, after: Message) -> Message:
        """Write ``after`` (with its status events, until they are moved); the message as it then reads."""
        if doc_id is None:
            doc_id = str(max((int(k) for k in self.table if k.isdigit()), default=0) + 1)
        record = after.to_record()
        self.table[doc_id] = record
        self.events.append((before, after))
        self.changed = True
        due = after.due_at()
        if due is not None:
            self.due_lowered = due if self.due_lowered is None else min(self.due_lowered, due)
        if after.events:
            self.noted = True
            return after.with_changes(events=[])
        return after

    def kept_events(self) -> dict[str, dict]:
        """The records (doc id -> record) still holding status events on their way to the outbox."""
        return {doc_id: r for doc_id, r in self.table.items() if isinstance(r, dict) and r.get("events")}

    def remove(self, doc_id: str, before: Message | None) -> None:
        del self.table[doc_id]
        if before is not None:
            self.events.append((before, None))
        self.changed = True

    def earliest_due(self) -> float | None:
        dues = [d for r in self.table.values() if isinstance(r, dict) and (d := _raw_due(r)) is not None]
        return min(dues) if dues else None


class ShardCounters(Counters):
    """The figures of a TinyStore: one document per shard, summed at read time."""

    def __init__(self, folder: Path, lock: Callable[[str], ContextManager[None]], fold: Callable[[], None] = lambda: None):
        self.folder = ensure_private_dir(folder)
        self._root = str(self.folder)
        self.lock = lock
        self.fold = fold  # the store's journal, filed before the figures are read

    def path(self, shard: str) -> str:
        return f"{self._root}/{shard}.json"

    def read(self, shard: str) -> figures.Figures | None:
        try:
            document = jsonbytes.loads(read_file(self.path(shard)))
        except FileNotFoundError:
            return figures.empty()
        except ValueError:
            return None  # torn by a crash: recount
        return document if isinstance(document, dict) else None

    def write(self, shard: str, document: figures.Figures) -> None:
        # Derived data, rewritten in place without fsync: a torn file is recounted.
        path = self.path(shard)
        try:
            write_file(path, [jsonbytes.dumps(document)], fsync=False)
        except OSError:
            try:
                os.truncate(path, 0)  # empty, not torn (a full disk): the next change recounts the shard
            except OSError:
                pass
            raise

    def documents(self) -> Iterable[figures.Figures]:
        try:
            self.fold()
        except (Unavailable, StorageFull) as exc:  # the figures of what is filed still answer (/metrics, stats)
            log.warning("queue figures without the journal's unfiled lines: %s", exc)
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".json") and entry.name != "drain.json":
                document = self.read(entry.name[: -len(".json")])
                if document:
                    yield document

    def drain_figures(self) -> dict[str, Any]:
        try:
            document = json.loads(read_file(self.folder / "drain.json"))
        except (FileNotFoundError, ValueError):
            return {}
        return document if isinstance(document, dict) else {}

    def drain_pass(self, seconds: float, summary: dict) -> None:
        try:
            with self.lock("counts-drain"):
                drain = apply_pass(self.drain_figures(), seconds, summary, time.time())
                write_atomic(self.folder / "drain.json", json.dumps(drain).encode(), fsync=False)
        except (LockTimeout, OSError):
            log.warning("drain figures not updated for one pass")


class TinyStore(TinyHistory, MessageStore):
    counters: ShardCounters

    def __init__(self, layout: Layout, *, fsync: bool = True, lock_timeout: float = LOCK_TIMEOUT,
                 shard_hex_digits: int = SHARD_HEX_DIGITS, link_folder: Callable[[str], str] | None = None):
        self.layout = layout
        # The folder of a client's content links, fsynced with each add's journal line (``FileSpool.links_synced_by_store``).
        self.link_folder = link_folder
        self.shard_hex_digits = shard_hex_digits
        self.fsync = fsync
        self.lock_timeout = lock_timeout
        self.locks = locks_of(layout.locks)
        self._store_root = str(layout.store)
        self.due_dir = ensure_private_dir(layout.store / "due")
        self._due_root = str(self.due_dir)
        self.quarantine_dir = ensure_private_dir(layout.store / "quarantine")
        self.journal = Journal(layout.store / "journal", self.locks, fsync=fsync)
        self.counters = ShardCounters(layout.store / "counts", self._lock, self.fold)
        self.outbox_dir = ensure_private_dir(layout.home / "outbox")
        self.noted_dir = ensure_private_dir(layout.store / "noted")
        self._mark_source = str(layout.store / "mark")
        self._touch(self._mark_source)
        marking = (layout.store / "pending").is_dir()
        self.pending_dir = ensure_private_dir(layout.store / "pending")
        self._pending_root = str(self.pending_dir)
        self.history_dir = ensure_private_dir(layout.history)
        if not marking:  # the first time here: a new store, or one written before writes marked their shards
            if self.shards():
                self._rebuilt_mark.unlink(missing_ok=True)  # its next sweep goes through every shard, once
            else:
                self._touch(self._rebuilt_mark)  # nothing written before now to go through again

    # -- shards ------------------------------------------------------------------
    def shard_of(self, message_id: str) -> str:
        return hashlib.blake2b(message_id.encode(), digest_size=4).hexdigest()[: self.shard_hex_digits]

    def _lock(self, name: str) -> ContextManager[None]:
        return self.locks.named(name)

    def _shard_path(self, shard: str) -> str:
        """``layout.shard(shard)`` as a string (a path made for every read and write of a shard)."""
        return f"{self._store_root}/{shard}.json"

    def shards(self) -> list[str]:
        return sorted(e.name[: -len(".json")] for e in os.scandir(self.layout.store) if e.name.endswith(".json") and e.is_file())

    @contextmanager
    def _txn(self, shard: str, durable: bool = True, sync_folder: bool = True) -> Iterator[_Txn]:
        """The shard's records under its lock; changes are written back (once) when the block ends.

        ``durable=False`` skips the fsync: for lease extensions, whose loss in a
        crash only makes a lease lapse early (which a crash does anyway).
        ``sync_folder=False``: the caller fsyncs ``store/`` once for many shards (the journal's fold).
        """
        held = ExitStack()
        try:
            held.enter_context(self.locks.slot(int(shard, 16)))
        except LockTimeout:
            raise Unavailable("the store is busy; try again") from None
        with held:
            storage = AtomicJSONStorage(self._shard_path(shard), fsync=self.fsync and durable, sync_folder=sync_folder)
            try:
                document = storage.read() or {}
                table = document.get(_TABLE, {})
                if not isinstance(table, dict):
                    raise ValueError("no table of messages")
            except ValueError as exc:
                self._quarantine(shard, exc)
                table = {}
            txn = _Txn(table)
            yield txn
            if txn.changed:
                self._write(shard, storage, txn)
            kept = txn.kept_events()
            if kept or txn.recovering:
                self._move_events(shard, storage, txn, kept)

    def _write(self, shard: str, storage: AtomicJSONStorage, txn: _Txn) -> None:
        indexed: float | None | bool = False  # not read yet
        if txn.due_lowered is not None:
            indexed = self._lower_due(shard, txn.due_lowered)  # before: a crash leaves the index early, never late
        if txn.noted:
            self._mark(f"{self.noted_dir}/{shard}")  # before, too: a crash leaves the mark, and the move is done again
        copies = self._history_changes(txn)
        counts = any(figures.changes_figures(before, after) for before, after in txn.events)
        pending = self._pending_root + os.sep + shard if copies or counts else None
        if pending:
            self._mark(pending)  # before: a crash leaves the mark, and the next sweep writes the figures and copies again
        self._write_table(storage, txn.table)
        self._set_due(shard, txn.earliest_due(), indexed)
        counted = not counts or self._count(shard, txn)
        if self._history_copies(txn, copies) and counted and pending:
            unlink_quietly(pending)

    @staticmethod
    def _write_table(storage: AtomicJSONStorage, table: dict[str, Any]) -> None:
        try:
            storage.write({_TABLE: table})
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server's storage is full; nothing of this change was stored") from exc
            raise StoreUnwritable(f"the store cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc

    def _move_events(self, shard: str, storage: AtomicJSONStorage, txn: _Txn, kept: dict[str, dict]) -> None:
        """Put the status events the shard's records hold into the outbox, then write the records without them.

        The change they report is already written: if the move fails, the
        events stay in the records (and the shard stays marked) until a later
        change of the shard or ``claim_events`` moves them.
        """
        try:
            if kept:
                with self._outbox():
                    self._enqueue_kept(kept.values())
                    for doc_id, record in kept.items():
                        txn.table[doc_id] = {**record, "events": []}
                    self._write_table(storage, txn.table)
            (self.noted_dir / shard).unlink(missing_ok=True)
        except (Unavailable, StorageFull, OSError) as exc:  # the change itself is written: never report it unwritten
            log.warning("store shard %s: status events not in the outbox yet (%s); moved by a later pass", shard, exc)

    def _enqueue_kept(self, records: Iterable[dict]) -> None:
        """Write the events held by ``records`` into the outbox (under its lock), each unless already there."""
        for record in records:
            for raw in record.get("events") or []:
                try:
                    event = Event.from_record(raw)
                    path = self._event_path(event.id)
                except (ValueError, TypeError):
                    log.error("message %s holds a malformed status event; dropped: %r", record.get("id"), raw)
                    continue
                if not path.exists():
                    self._write_event(event)

    def _recover_events(self) -> None:
        """Complete the moves into the outbox that a crash interrupted (the shards ``noted/`` names)."""
        for entry in list(os.scandir(self.noted_dir)):
            if entry.name.isalnum():
                with self._txn(entry.name) as txn:
                    txn.recovering = True

    def _count(self, shard: str, txn: _Txn) -> bool:
        """Write the shard's figures after ``txn``'s changes (some of which change them); False if they could not be."""
        try:
            document = self.counters.read(shard)
            if document is None:
                document = figures.empty()
                figures.recount(document, self._parsed(txn.table))
            else:
                now = time.time()
                for before, after in txn.events:
                    figures.count(document, before, after, now)
            self.counters.write(shard, document)
        except OSError:
            log.exception("queue figures of shard %s not updated", shard)
            return False
        return True

    def _quarantine(self, shard: str, exc: Exception) -> None:
        source = self.layout.shard(shard)
        target = self.quarantine_dir / f"{shard}.json.{int(time.time())}"
        try:
            os.replace(source, target)
        except FileNotFoundError:
            return
        log.error("store shard %s is damaged (%s): set aside as %s; its messages are unavailable until an operator restores it",
                  source.name, exc, target)
        try:
            document = self.counters.read(shard) or figures.empty()
            figures.recount(document, [])  # its records are gone from the count; its totals stay
            self.counters.write(shard, document)
        except OSError:
            pass

    def _damaged(self, shard: str) -> bool:
        return any(self.quarantine_dir.glob(f"{shard}.json.*"))

    @staticmethod
    def _parsed(table: dict[str, Any]) -> list[Message]:
        found = []
        for record in table.values():
            try:
                found.append(Message.from_record(record))
            except BadRecord:
                continue
        return found

    # -- the due index -------------------------------------------------------------
    # due/<shard>: the shard's earliest due time, as the file's mtime (one stat reads it).
    # due/at/<bucket>/<shard>: the same shard filed under its minute (bucket = due // 60),
    # so a pass lists only the buckets that are due, never every shard.
    # Paths here are strings: the index is touched several times per change, and pathlib's joins cost more than the syscalls.
    def _due_path(self, shard: str) -> str:
        return f"{self._due_root}/{shard}"

    @staticmethod
    def _minute(due: float) -> int:
        return int(max(0.0, due) // DUE_BUCKET)

    def _bucket_path(self, shard: str, due: float) -> str:
        minute = self._minute(due)
        return f"{self._due_root}/at/{minute // DAY_BUCKETS}/{minute}/{shard}"

    def _buckets(self, last: int | None = None) -> list[str]:
        """The minute folders of the due index (up to minute ``last``), legacy flat ones included."""
        found = []
        try:
            entries = [e for e in os.scandir(self.due_dir / "at") if e.name.isdigit()]
        except FileNotFoundError:
            return []
        for entry in entries:
            n = int(entry.name)
            if n >= _LEGACY_MINUTE:
                if last is None or n <= last:
                    found.append(entry.path)
                continue
            if last is not None and n > last // DAY_BUCKETS:
                continue
            try:
                found += [m.path for m in os.scandir(entry.path) if m.name.isdigit() and (last is None or int(m.name) <= last)]
            except FileNotFoundError:
                continue
        return found

    @staticmethod
    def _drop_empty(bucket: str | Path) -> None:
        """Remove an emptied minute folder and its day folder (another writer may be filling them: then they stay)."""
        bucket = os.fspath(bucket)
        for folder in (bucket, os.path.dirname(bucket)):
            try:
                os.rmdir(folder)
            except OSError:
                return

    def _indexed_due(self, shard: str) -> float | None:
        try:
            return os.stat(self._due_path(shard)).st_mtime_ns / 1e9
        except FileNotFoundError:
            return None

    @staticmethod
    def _touch(path: str | Path) -> None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except FileNotFoundError:  # the first shard due in this minute
            ensure_private_dir(Path(os.path.dirname(path)))
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def _mark(self, path: str) -> None:
        """Make ``path`` exist, as a mark whose content and times say nothing: a hard link to ``store/mark``.

        A link is a directory entry only; a new file is an inode too, which
        cost some 200 us of CPU here (a link 10 us), and a write makes up to
        three marks. Where links are refused, a new empty file.
        """
        try:
            os.link(self._mark_source, path)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the first shard due in this minute (or the mark itself was removed)
            ensure_private_dir(Path(os.path.dirname(path)))
            self._touch(self._mark_source)
            try:
                os.link(self._mark_source, path)
            except FileExistsError:
                pass
            except OSError:
                self._touch(path)
        except OSError:  # no hard links here, or too many to one file
            self._touch(path)

    def _set_due(self, shard: str, due: float | None, old: float | None | bool = False) -> float | None:
        """File the shard under ``due`` (None: nothing due); ``old``: what the index holds now, if known. Returns ``due``."""
        path = self._due_path(shard)
        if old is False:
            old = self._indexed_due(shard)
        ns = None if due is None else int(max(0.0, due) * 1e9)
        if old is not None and ns is not None and int(old * 1e9) == ns:
            return due  # already filed so
        same_minute = old is not None and due is not None and self._minute(old) == self._minute(due)
        if old is not None and not same_minute:
            bucket = self._bucket_path(shard, old)
            unlink_quietly(bucket)
            self._drop_empty(os.path.dirname(bucket))
        if due is None or ns is None:
            unlink_quietly(path)
            return None
        if not same_minute:
            self._mark(self._bucket_path(shard, due))
        if old is None:
            self._touch(path)
        os.utime(path, ns=(ns, ns))
        return due

    def _lower_due(self, shard: str, due: float) -> float | None:
        """Make the index say ``due`` at the latest; returns what it says now."""
        current = self._indexed_due(shard)
        if current is None or due < current:
            return self._set_due(shard, due, current)
        return current

    def due_shards(self, now: float) -> list[str]:
        """The shards with something due at ``now``, earliest first."""
        limit, last = int(now * 1e9), int(max(0.0, now) // DUE_BUCKET)
        found = []
        for bucket in self._buckets(last):
            try:
                names = [e.name for e in os.scandir(bucket)]
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    mtime = os.stat(self._due_path(name)).st_mtime_ns
                except FileNotFoundError:
                    continue
                if mtime <= limit:
                    found.append((mtime, name))
        return [name for _, name in sorted(set(found))]

    # -- the journal (``tiny_journal.py``) ---------------------------------------------
    def fold(self) -> None:
        """File the messages added (by any process) and not in their shards yet: before any read or change of the store."""
        try:
            self.journal.fold(self._file)
        except LockTimeout:
            raise Unavailable("the store is busy; try again") from None

    def _file(self, records: list[dict]) -> None:
        """File journaled records into their shards, each unless already there (a fold done again after a crash)."""
        messages = []
        for record in records:
            try:
                messages.append(Message.from_record(record))
            except BadRecord as exc:
                log.error("store journal holds a malformed message %r (%s); skipped", record.get("id"), exc)
        self._add_many(messages, only_new=True)

    # -- the contract ----------------------------------------------------------------
    def add(self, message: Message) -> None:
        folders = (self.link_folder(message.client),) if self.link_folder is not None else ()
        self.journal.append(message.to_record(), folders)

    def add_many(self, messages: Iterable[Message]) -> int:
        return self._add_many(messages)

    def _add_many(self, messages: Iterable[Message], only_new: bool = False) -> int:
        """Write new messages straight into their shards (their history lines first), one write per shard, one folder fsync."""
        by_shard: dict[str, list[Message]] = {}
        by_day: dict[tuple[str, str], list[Message]] = {}
        for message in messages:
            by_shard.setdefault(self.shard_of(message.id), []).append(message)
            by_day.setdefault((message.client, day(message.created_at)), []).append(message)
        for (client, _), batch in by_day.items():
            self._history_append(client, batch[0].created_at, [{"id": m.id, "at": m.created_at} for m in batch])
        for shard, batch in by_shard.items():
            with self._txn(shard, sync_folder=False) as txn:
                for message in batch:
                    if not only_new or txn.find(message.id) is None:
                        txn.put(None, None, message)
        if by_shard and self.fsync:
            fsync_dir(self._store_root)  # every shard's rename above, before the caller counts them stored
        return sum(len(batch) for batch in by_shard.values())

    def _read_unlocked(self, shard: str) -> dict[str, Any] | None:
        # Safe without the lock: shard files are only ever replaced whole. None: unreadable.
        try:
            raw = read_file(self._shard_path(shard))
        except FileNotFoundError:
            return {}
        try:
            table = jsonbytes.loads(raw).get(_TABLE, {}) if raw else {}
        except (ValueError, AttributeError):
            return None
        return table if isinstance(table, dict) else None

    def get(self, message_id: str) -> Message | None:
        # Its shard, else the journal's lines not filed yet (no fold: a look costs no filing), else its shard
        # again: a fold may have filed it meanwhile, and removed the segment it was read from.
        found = self._filed(message_id, damaged_ok=True)
        if found is not None:
            return found
        record = self.journal.find(message_id)
        if record is not None:
            try:
                return Message.from_record(record)
            except BadRecord as exc:
                raise Damaged(f"message {message_id} is stored damaged ({exc})") from None
        return self._filed(message_id)

    def _filed(self, message_id: str, damaged_ok: bool = False) -> Message | None:
        """The message as its shard holds it (``damaged_ok``: None, not ``Damaged``, for an id of a damaged shard)."""
        shard = self.shard_of(message_id)
        table = self._read_unlocked(shard)
        if table is None:
            with self._txn(shard):  # sets the damaged file aside
                pass
            table = {}
        for record in table.values():
            if isinstance(record, dict) and record.get("id") == message_id:
                try:
                    return Message.from_record(record)
                except BadRecord as exc:
                    raise Damaged(f"message {message_id} is stored damaged ({exc})") from None
        if not damaged_ok and self._damaged(shard):
            raise Damaged("this id belongs to a part of the store that was damaged and set aside; ask the operator")
        return None

    def claim_due(self, now: float, lease: float, accept: Callable[[Message], bool] | None = None,
                  limit: int | None = None, lapsed_only: bool = False,
                  clock: Callable[[], float] | None = None) -> Iterator[Message]:
        self.fold()
        taken = 0
        for shard in self.due_shards(now):
            if limit is not None and taken >= limit:
                return
            if lapsed_only and not self._holds_lapsed(shard, now):
                continue  # read without the lock, not parsed: behind a backlog, nearly every due shard holds no lease
            batch: list[Message] = []
            at = clock() if clock else now
            # Not fsynced (as a lease extension is not): a claim lost with the page cache leaves the message unleased, as a
            # lapsed lease does once the pass that held it is gone, and a machine that lost its page cache lost that pass too.
            # Every outcome is written durably (``finish``), claim and all. This keeps a pass's intake off the fsync wait:
            # one pass leases a shard at a time, in one thread.
            with self._txn(shard, durable=False) as txn:
                for doc_id, record in list(txn.table.items()):
                    if limit is not None and taken + len(batch) >= limit:
                        break
                    due = _raw_due(record) if isinstance(record, dict) else 0.0
                    if due is None or due > now or (lapsed_only and not (isinstance(record, dict) and record.get("claim"))):
                        continue
                    try:
                        message = Message.from_record(record)
                    except BadRecord as exc:
                        self._fail_bad(txn, doc_id, record, str(exc), now)
                        continue
                    if accept is not None and not accept(message):
                        continue
                    claimed = message.with_changes(claim=new_id(), claim_until=at + lease)
                    txn.put(doc_id, message, claimed)
                    batch.append(claimed)
            taken += len(batch)
            yield from batch

    def _holds_lapsed(self, shard: str, now: float) -> bool:
        """Whether ``shard`` may hold a lease that lapsed by ``now`` (a first look at its bytes; the claim reads it again, locked)."""
        try:
            raw = read_file(self._shard_path(shard))
        except FileNotFoundError:
            return False
        return any(float(until) <= now for until in _CLAIM_UNTIL.findall(raw))

    @staticmethod
    def _fail_bad(txn: _Txn, doc_id: str, record: Any, reason: str, now: float) -> None:
        log.error("stored message %s is malformed (%s): failed", record.get("id") if isinstance(record, dict) else "?", reason)
        fixed = dict(record) if isinstance(record, dict) else {}
        fixed.update({"state": str(State.FAILED), "last_error": f"malformed record: {reason}", "claim": None,
                      "claim_until": None, "updated_at": now})
        txn.table[doc_id] = fixed
        txn.changed = True

    def extend(self, claims: Iterable[Message], until: float) -> list[bool]:
        claims = list(claims)
        held = [False] * len(claims)
        by_shard: dict[str, list[int]] = {}
        for index, claim in enumerate(claims):
            by_shard.setdefault(self.shard_of(claim.id), []).append(index)
        for shard, indexes in by_shard.items():
            with self._txn(shard, durable=False) as txn:
                for index in indexes:
                    claim = claims[index]
                    found = txn.find(claim.id)
                    if found is None or claim.claim is None or found[1].get("claim") != claim.claim:
                        continue
                    current = Message.from_record(found[1])
                    txn.put(found[0], current, current.with_changes(claim_until=until))
                    held[index] = True
        return held

    def finish(self, claim: Message, changes: dict[str, Any], now: float) -> Message | None:
        with self._txn(self.shard_of(claim.id)) as txn:
            found = txn.find(claim.id)
            if found is None or claim.claim is None or found[1].get("claim") != claim.claim:
                return None
            current = Message.from_record(found[1])
            return txn.put(found[0], current, self.finished(current, changes, now))

    def update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        self.fold()
        with self._txn(self.shard_of(message_id)) as txn:
            found = txn.find(message_id)
            if found is None:
                return None
            current = Message.from_record(found[1])
            after = change(current)
            if after is not None and after != current:
                return txn.put(found[0], current, after)
            return after

    # -- the outbox --------------------------------------------------------------
    def _event_path(self, event_id: str) -> Path:
        if not event_id.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"not an event id: {event_id!r}")
        return self.outbox_dir / f"{event_id}.json"

    @contextmanager
    def _outbox(self) -> Iterator[None]:
        try:
            with self._lock("outbox"):
                yield
        except LockTimeout:
            raise Unavailable("the outbox is busy; try again") from None

    def _write_event(self, event: Event, durable: bool = True) -> None:
        try:
            write_atomic(self._event_path(event.id), json.dumps(event.to_record()).encode(), fsync=self.fsync and durable)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server's storage is full; the event was not stored") from exc
            raise StoreUnwritable(f"the outbox cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc

    def _events(self) -> list[Event]:
        found = []
        for entry in os.scandir(self.outbox_dir):
            if not entry.name.endswith(".json") or entry.name == "counts.json" or entry.name.startswith("."):
                continue
            try:
                found.append(Event.from_record(json.loads(Path(entry.path).read_bytes())))
            except (OSError, ValueError, TypeError):
                log.error("outbox file %s is unreadable; left in place", entry.name)
        return found

    def _event_counts(self) -> dict[str, int]:
        try:
            document = json.loads((self.outbox_dir / "counts.json").read_bytes())
        except (FileNotFoundError, ValueError):
            document = {}
        return {name: int(document.get(name, 0)) for name in ("delivered", "given_up")}

    def enqueue_event(self, event: Event) -> None:
        with self._outbox():
            if not self._event_path(event.id).exists():
                self._write_event(event)

    def claim_events(self, now: float, lease: float, limit: int = 100) -> list[Event]:
        self.fold()
        self._recover_events()
        with self._outbox():
            due = sorted((e for e in self._events() if e.due_at() <= now), key=lambda e: (e.due_at(), e.id))[:limit]
            claimed = [e.with_changes(claim=new_id(), claim_until=now + lease) for e in due]
            for event in claimed:
                self._write_event(event, durable=False)  # a lost claim only makes the event due again
            return claimed

    def finish_event(self, claim: Event, next_at: float | None, delivered: bool, now: float) -> bool:
        with self._outbox():
            path = self._event_path(claim.id)
            try:
                current = Event.from_record(json.loads(path.read_bytes()))
            except (FileNotFoundError, ValueError):
                return False
            if claim.claim is None or current.claim != claim.claim:
                return False
            if next_at is not None:
                self._write_event(current.with_changes(claim=None, claim_until=None, next_at=next_at, attempts=current.attempts + 1))
                return True
            counts = self._event_counts()
            counts["delivered" if delivered else "given_up"] += 1
            write_atomic(self.outbox_dir / "counts.json", json.dumps(counts).encode(), fsync=False)
            path.unlink()
            if self.fsync:
                fsync_dir(self.outbox_dir)
            return True

    def outbox_figures(self) -> dict[str, int]:
        pending = sum(1 for e in os.scandir(self.outbox_dir)
                      if e.name.endswith(".json") and e.name != "counts.json" and not e.name.startswith("."))
        return {"pending": pending, **self._event_counts()}

    def report(self, message_id: str, now: float) -> Message | None:
        message = self.get(message_id)
        if message is None or not message.final or message.reported_at is not None:
            return message
        self.fold()  # (a message added final, as imports may, can still be in the journal)
        with self._txn(self.shard_of(message_id)) as txn:
            found = txn.find(message_id)
            if found is None:
                return None
            current = Message.from_record(found[1])
            if current.reported_at is None:
                reported = current.with_changes(reported_at=now)
                txn.put(found[0], current, reported)
                return reported
            return current

    def archive(self, message_id: str, now: float, if_: Callable[[Message], bool] | None = None) -> Message | None:
        # Under the journal's lock, after a fold: a fold done again after a crash never files an archived message anew.
        try:
            with self.journal.holding(self._file):
                return self._archive(message_id, now, if_)
        except LockTimeout:
            raise Unavailable("the store is busy; try again") from None

    def _archive(self, message_id: str, now: float, if_: Callable[[Message], bool] | None) -> Message | None:
        with self._txn(self.shard_of(message_id)) as txn:
            found = txn.find(message_id)
            if found is None:
                return None
            try:
                message: Message | None = Message.from_record(found[1])
            except BadRecord:
                message = None
            if message is not None and if_ is not None and not if_(message):
                return None
            if found[1].get("events"):  # events a crash left on their way: into the outbox before the record goes
                with self._outbox():
                    self._enqueue_kept([found[1]])
            month = time.strftime("%Y-%m", time.gmtime(now))
            line = (json.dumps({**found[1], "events": []}, separators=(",", ":")) + "\n").encode()
            # Archive first, then forget, under the shard's lock: a crash between
            # leaves the record in both places (archived twice at worst), never in
            # neither, and of two callers only the first finds it.
            try:
                with self._lock("archive"):
                    append_durable(self.layout.archive / f"messages-{month}.jsonl", line, fsync=self.fsync)
            except LockTimeout:
                raise Unavailable("the archive is busy; try again") from None
            except OSError as exc:
                raise StoreUnwritable(f"the archive cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc
            if isinstance(found[1].get("client"), str):
                self._history_append(found[1]["client"], float(found[1].get("created_at") or 0.0),
                                     [{"id": message_id, "at": float(found[1].get("created_at") or 0.0), "r": found[1]}])
            txn.remove(found[0], message)
            return message

    def _tables(self) -> Iterator[dict[str, Any]]:
        """Each shard's records (read without its lock; unreadable and empty shards left out): the scans'."""
        self.fold()
        for shard in self.shards():
            table = self._read_unlocked(shard)
            if table:
                yield table

    def messages(self) -> Iterator[Message]:
        for table in self._tables():
            yield from self._parsed(table)

    def final_messages(self) -> Iterator[Message]:
        # Only the records not queued are built: behind a backlog, nearly every record is queued (a sweep with 7,600
        # stored spent 0.4 s of CPU building them all, and more in ``messages`` for their ids, now ``message_ids``).
        for table in self._tables():
            yield from (m for m in self._parsed({k: r for k, r in table.items() if _not_queued(r)}) if m.final)

    def message_ids(self) -> set[str]:
        return {r["id"] for table in self._tables() for r in table.values() if isinstance(r, dict) and isinstance(r.get("id"), str)}

    def rebuild(self, changed_only: bool = False) -> int:
        """Copy every record to its client's history again, recount the figures and refile the due index, shard by shard.

        ``changed_only`` (the drain's sweep, every ``MULTIMSG_SWEEP_INTERVAL``):
        only the shards marked pending. A write whose change has figures or a
        history copy to write after the shard marks its shard before the shard
        write (``store/pending/<shard>``) and unmarks it once both are written,
        so what a crash (or a failed copy) can have left behind is in a marked
        shard. Going through every shard at every sweep copied every stored
        message into the history again each time (with 100,000 stored, minutes
        of CPU); going through every shard written since the last sweep still
        cost some 1.7 ms of CPU per message written. A data folder from before
        the marks (no ``store/rebuilt``) is gone through whole, once.
        """
        self.fold()
        began = time.time()
        counted = 0
        present = set(self.shards())
        marked = {e.name for e in os.scandir(self.pending_dir)}
        whole = not changed_only or self._rebuilt_at() is None
        for shard in sorted(present if whole else marked & present):
            with self._txn(shard) as txn:
                messages = self._parsed(txn.table)
                txn.events += [(None, m) for m in messages]  # the history's copies, written again
                copied = self._history_copies(txn)
                txn.events = []
                document = self.counters.read(shard) or figures.empty()
                counted += figures.recount(document, messages)
                self.counters.write(shard, document)
                self._set_due(shard, txn.earliest_due())
                if copied:  # under the shard's lock: no write of it is under way
                    unlink_quietly(self._pending_root + os.sep + shard)
        for shard in marked - present:  # marked by a write whose shard is gone since (or not a shard's name)
            if (number := _shard_number(shard)) is None:
                unlink_quietly(self._pending_root + os.sep + shard)
                continue
            with self.locks.slot(number):
                if not self.layout.shard(shard).exists():
                    unlink_quietly(self._pending_root + os.sep + shard)
        # What is filed for a shard that has no file goes, and bucket entries left by a crash (their shard is
        # filed under another minute, or none). Each is judged under its shard's lock, as writers file theirs:
        # a message queued meanwhile into a new shard (not in ``present``) keeps its place in the index.
        for entry in os.scandir(self.due_dir):
            if entry.is_file() and entry.name not in present and (number := _shard_number(entry.name)) is not None:
                with self.locks.slot(number):
                    if not self.layout.shard(entry.name).exists():
                        Path(entry.path).unlink(missing_ok=True)
        for bucket in self._buckets():
            for entry in list(os.scandir(bucket)):
                if (number := _shard_number(entry.name)) is None:
                    continue
                with self.locks.slot(number):
                    due = self._indexed_due(entry.name)
                    if due is None or self._bucket_path(entry.name, due) != entry.path:
                        Path(entry.path).unlink(missing_ok=True)
            self._drop_empty(bucket)
        self._touch(self._rebuilt_mark)
        os.utime(self._rebuilt_mark, (began, began))
        return counted

    @property
    def _rebuilt_mark(self) -> Path:
        return self.layout.store / "rebuilt"

    def _rebuilt_at(self) -> float | None:
        try:
            return os.stat(self._rebuilt_mark).st_mtime
        except FileNotFoundError:
            return None

    def history_index(self, client: str, now: float) -> list[tuple[float, str]]:
        self.fold()
        return super().history_index(client, now)

    def problems(self) -> list[str]:
        damaged = sorted(p.name for p in self.quarantine_dir.iterdir())
        if not damaged:
            return []
        return [f"damaged store files set aside in {self.quarantine_dir}: {', '.join(damaged[:5])}"
                + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")]

    def sweep(self, now: float, older_than: float) -> int:
        """Temporary files of writes that a crash interrupted (journal segments it left unnamed too); history days past the window."""
        removed = self._prune_history(now)
        try:  # a segment whose process is gone and whose lines are all filed is removed by a fold, even with nothing new
            self.journal.fold(self._file, force=True)
        except LockTimeout:
            pass
        for folder, suffix in ((self.layout.store, ".tmp"), (self.journal.folder, ".new")):
            for entry in os.scandir(folder):
                if entry.name.endswith(suffix) and now - entry.stat().st_mtime > older_than:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
        return removed
