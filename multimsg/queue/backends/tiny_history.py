"""The embedded backend's history index: ``history/<client digest>/<day>.jsonl``, per client (``store.history``).

A line ``{"id", "at"}`` per message (``TinyStore.add`` appends it before its
shard write: a crash leaves an entry that points at nothing, never a message
missing from it), and a copy of the record after every change its client can
see (not lease changes) and when it is archived, appended under the shard's
lock after the shard write. A page is read from the client's own file, never
from the shards (whose size grows with everyone's messages); an id with no
copy (a crash between the two writes) is read from its shard, and
``TinyStore.rebuild`` (at every sweep) copies again the records of every shard
a write marked before its shard write and did not unmark after its copies. Each line starts with a
newline, so a line torn by a crash never swallows the next one. A day file
older than the window is deleted whole.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ... import jsonbytes
from ...errors import StorageFull, Unavailable
from ...fsutil import append_grouped, ensure_private_dir
from ...locks import Locks, LockTimeout
from ...model import BadRecord, Message
from ..store import Damaged, StoreUnwritable

if TYPE_CHECKING:
    from .tiny import _Txn

__all__ = ["TinyHistory", "day"]

log = logging.getLogger("multimsg.store")


def day(at: float) -> str:
    """The day file a message made at ``at`` belongs to."""
    return _day(int(max(0.0, at) // 86400))


@lru_cache(maxsize=64)
def _day(number: int) -> str:
    # Asked a few times for every change: a UTC day is 86,400 seconds (time.gmtime ignores leap seconds).
    return time.strftime("%Y-%m-%d", time.gmtime(number * 86400))


@lru_cache(maxsize=1024)
def _digest(client: str) -> str:
    """The name of a client's history folder (asked twice for every change of its messages)."""
    return hashlib.blake2b(client.encode(), digest_size=12).hexdigest()


class TinyHistory:
    """The history half of ``TinyStore`` (which provides the folder, its locks, ``get`` and the window)."""

    history_dir: Path
    history_window: float
    fsync: bool
    locks: Locks

    def get(self, message_id: str) -> Message | None:
        raise NotImplementedError

    def _history_folder(self, client: str) -> Path:
        return self.history_dir / _digest(client)

    def _history_append(self, client: str, at: float, entries: list[dict], durable: bool = True) -> None:
        digest = _digest(client)
        # Each line starts with a newline: a line torn by a crash never swallows the next one.
        lines = b"".join(b"\n" + jsonbytes.dumps(e) for e in entries)
        path, lock = f"{self.history_dir}/{digest}/{day(at)}.jsonl", partial(self.locks.keyed, f"history-{digest}")
        try:
            try:  # with the other threads appending to the file now: one write and one fsync (fsutil)
                append_grouped(path, lines, fsync=self.fsync and durable, lock=lock)
            except FileNotFoundError:  # the client's first message
                ensure_private_dir(self.history_dir / digest)
                append_grouped(path, lines, fsync=self.fsync and durable, lock=lock)
        except LockTimeout:
            raise Unavailable("the history index is busy; try again") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server's storage is full; nothing of this change was stored") from exc
            raise StoreUnwritable(f"the history index cannot be written ({os.strerror(exc.errno or 0) or exc})") from exc

    @staticmethod
    def _history_changes(txn: _Txn) -> dict[tuple[str, str, bool], list[dict]]:
        """The copies ``txn``'s changes a client can see (not a lease's) need, by client, day and durability."""
        by_day: dict[tuple[str, str, bool], list[dict]] = {}
        for before, after in txn.events:
            if after is None or (before is not None and before.public() == after.public()):
                continue
            # A new message's id line is already durable (``add``): losing this copy only costs a shard read.
            by_day.setdefault((after.client, day(after.created_at), before is not None), []).append(
                {"id": after.id, "at": after.created_at, "r": after.to_record()})
        return by_day

    def _history_copies(self, txn: _Txn, changes: dict[tuple[str, str, bool], list[dict]] | None = None) -> bool:
        """Copy each change a client can see to its client's history, after the shard write; False if one could not be."""
        written = True
        for (client, _, durable), entries in (self._history_changes(txn) if changes is None else changes).items():
            try:
                self._history_append(client, entries[0]["at"], entries, durable)
            except Unavailable as exc:  # the shard is written: the history is one change behind (``rebuild`` copies again)
                log.warning("history copy of %d change(s) not written: %s", len(entries), exc.reason)
                written = False
        return written

    def _history_lines(self, folder: Path, now: float) -> Iterator[dict]:
        oldest = day(now - self.history_window)
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".jsonl"))
        except FileNotFoundError:
            return
        for name in names:
            if name[: -len(".jsonl")] < oldest:
                (folder / name).unlink(missing_ok=True)  # a whole day past the window
                continue
            try:
                raw = (folder / name).read_bytes()
            except FileNotFoundError:
                continue
            for line in raw.split(b"\n"):
                try:
                    entry = jsonbytes.loads(line) if line else None
                except ValueError:
                    continue  # torn by a crash
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("at"), (int, float)):
                    yield entry

    def history_index(self, client: str, now: float) -> list[tuple[float, str]]:
        start = now - self.history_window
        return list({(float(e["at"]), e["id"]) for e in self._history_lines(self._history_folder(client), now) if e["at"] >= start})

    def history_load(self, client: str, message_ids: list[str]) -> dict[str, Message]:
        """From the client's own copies (the last one of each message); a shard only for an id without one (a crash)."""
        wanted, copies = set(message_ids), {}
        for entry in self._history_lines(self._history_folder(client), time.time()):
            if "r" in entry and entry["id"] in wanted:
                copies[entry["id"]] = entry["r"]  # in the order written: the last is the latest
        found: dict[str, Message] = {}
        for message_id in message_ids:
            try:
                message = Message.from_record(copies[message_id]) if message_id in copies else self.get(message_id)
            except (BadRecord, Damaged):
                continue
            if message is not None and message.client == client:
                found[message_id] = message
        return found

    def _prune_history(self, now: float) -> int:
        oldest, removed = day(now - self.history_window), 0
        for folder in os.scandir(self.history_dir):
            for entry in list(os.scandir(folder.path)) if folder.is_dir() else []:
                if entry.name.endswith(".jsonl") and entry.name[: -len(".jsonl")] < oldest:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
        return removed
