"""The message store contract: what the gateway and the drain ask of any backend.

``MessageStore`` is a handful of atomic operations; each backend in
``queue/backends/`` implements all of them with the same meaning, and
``tests/test_backend_contract.py`` runs one suite over every backend.

Leases: ``claim_due`` hands each due message out with a fresh token
(``Message.claim``) and an expiry (``Message.claim_until``). ``finish`` and
``extend`` succeed only with the current token, so a sender whose lease lapsed
and was taken over by another pass is told so (``None``/``False``) and writes
nothing. A lapsed lease makes the message due again for any pass, at any time:
correctness never rests on only one pass running.

Due index: ``claim_due`` costs O(due + log stored), not a scan of every record:
100,000 queued messages none of which is due cost a pass about what an empty
store costs. Retries and scheduled sends are all just a later due time.

Figures (``counters``) change inside the same critical section as the record
change they count.

Receipts: ``update`` is an atomic read-modify-write of one message; ``apply_receipt``
runs the one receipt rule (``queue/receipts.py``) inside it.

Outbox: status events for callback URLs (``queue/outbox.py``) are leased with
``claim_events`` (a token and an expiry, as messages are); ``finish_event``
with the current token ends or reschedules one. ``outbox_figures`` counts
pending, delivered and given-up events.

An event is written with the change it reports, never after it: a record
written (by ``finish``, ``update``, ``add``) with ``Message.events`` has those
events stored in the outbox in the same atomic step as the record, which is
stored and returned without them. ``finish`` adds the event a final state is
worth itself (``finished``), ``apply_receipt`` the one a receipt is worth. A
kill -9 at any point leaves the change and its events, or neither, and an
event is never stored twice or under a second id. Where one atomic write
cannot span both (the embedded backend's files), the backend keeps the events
in the record until they are in the outbox and completes a move that a crash
interrupted before its next ``claim_events``. ``enqueue_event`` stores an
event on its own (an event of that id already stored is left as it is).

Cancel: ``cancel`` is one ``update`` (a compare-and-set where the backend has
one), so it and ``claim_due``/``finish`` never both win: a message is either
leased for sending or cancelled; its ``message.cancelled`` event is written
with it.

History (``GET /messages``): every backend keeps a per-client index of
(created_at, id) of that client's messages, and a copy of each one it
archives, for ``history_window`` seconds. ``history`` pages through it newest
first; it reads only the client's own index and records, so its cost grows
with that client's messages in the window, never with other clients'. It
changes nothing that ``report``, ``archive`` or a pass sees. Entries older
than the window are pruned (``history_index``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Iterator

from ..errors import Unavailable
from ..model import Message, State
from .counters import Counters
from .outbox import FINAL_EVENTS, Event, noted
from .receipts import Receipt, apply

__all__ = ["MessageStore", "Damaged", "StoreUnwritable", "HISTORY_WINDOW", "Cursor"]

HISTORY_WINDOW = 7 * 24 * 3600.0  # MULTIMSG_HISTORY_DAYS, in seconds
HISTORY_BATCH = 100  # records read at a time while paging
Cursor = tuple[float, str]  # (created_at, id) of the last message of a page


class Damaged(Unavailable):
    """The part of the store that holds this id was damaged and set aside (quarantined)."""


class StoreUnwritable(Unavailable):
    """The store could not be written (full disk, I/O error, a lock that never came free)."""


class MessageStore(ABC):
    """Message records keyed by id, with leases, a due index and figures."""

    counters: Counters
    history_window: float = HISTORY_WINDOW  # seconds a message stays in its client's history

    @abstractmethod
    def add(self, message: Message) -> None:
        """Store a new message durably before returning (and count it)."""

    @abstractmethod
    def get(self, message_id: str) -> Message | None:
        """The message, or None. Raises ``Damaged`` if its part of the store was set aside."""

    @abstractmethod
    def claim_due(self, now: float, lease: float, accept: Callable[[Message], bool] | None = None,
                  limit: int | None = None, lapsed_only: bool = False,
                  clock: Callable[[], float] | None = None) -> Iterator[Message]:
        """Lease the messages due at ``now`` and yield them, each with a fresh token, lazily.

        A batch is leased only when the previous one has been consumed.
        ``accept``, when given, is asked once per due message whether the pass
        wants it now; a refused one is left untouched. A stored record that is
        not a valid message is failed with the reason, not yielded.
        ``lapsed_only``: only messages whose lease lapsed by ``now`` (their
        pass stopped extending it: it crashed), looked up without scanning the
        rest of the due messages where the backend can; a running pass asks
        for these every so often (``scheduler.Pass``).
        ``clock``: the caller's clock; each batch is leased until ``clock() +
        lease`` (``now + lease`` without it), so that the last batches of a
        scan that outlasts a lease are not leased already lapsed.
        """

    @abstractmethod
    def extend(self, claims: Iterable[Message], until: float) -> list[bool]:
        """Push the leases of ``claims`` to ``until``; False for each lease no longer held."""

    @abstractmethod
    def finish(self, claim: Message, changes: dict[str, Any], now: float) -> Message | None:
        """Apply an outcome's ``changes`` and end the lease (``finished``); None (nothing written) if the lease was lost."""

    @staticmethod
    def finished(current: Message, changes: dict[str, Any], now: float) -> Message:
        """What ``finish`` writes over ``current``: the changes, the lease ended, and the event a new final state is worth."""
        after = current.with_changes(**{**changes, "claim": None, "claim_until": None})
        if after.final and not current.final:
            after = noted(after, FINAL_EVENTS.get(after.state), now)
        return after

    @abstractmethod
    def report(self, message_id: str, now: float) -> Message | None:
        """The message for ``/cons``; a final state gets ``reported_at`` the first time it is reported."""

    @abstractmethod
    def archive(self, message_id: str, now: float, if_: Callable[[Message], bool] | None = None) -> Message | None:
        """Move the message to the archive and return it, atomically: of two callers, one gets None.

        ``if_``: archive only if the stored message passes this check (judged
        under the same lock as the move).
        """

    @abstractmethod
    def final_messages(self) -> Iterator[Message]:
        """Every message in a final state: a scan, for the sweep, never for a request."""

    @abstractmethod
    def messages(self) -> Iterator[Message]:
        """Every stored message: a scan, for rebuilding figures and imports, never for a request."""

    def message_ids(self) -> set[str]:
        """The id of every stored message (the sweep's: which content links are still used); a scan, like ``messages``."""
        return {m.id for m in self.messages()}

    @abstractmethod
    def rebuild(self, changed_only: bool = False) -> int:
        """Recount figures and the due index from the records; returns how many messages were counted.

        ``changed_only`` (the drain's periodic sweep): a backend may go only
        through what changed since its last rebuild; ``multimsg stats --rebuild`` goes through all.
        """

    @abstractmethod
    def update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        """Replace the message with ``change(message)`` atomically (None from ``change``: leave it); the result, or None."""

    def apply_receipt(self, message_id: str, receipt: Receipt, now: float) -> tuple[Message | None, str | None]:
        """Apply a platform receipt atomically: the message after it and the event it is worth (see ``receipts``)."""
        worth: list[str | None] = [None]

        def change(message: Message) -> Message | None:
            after, worth[0] = apply(message, receipt, now)
            return None if after is None else noted(after, worth[0], now)

        return self.update(message_id, change, now), worth[0]

    def cancel(self, message_id: str, client: str, now: float) -> tuple[Message | None, Message | None]:
        """Make a queued message of ``client`` ``cancelled``, atomically against leases (fenced like ``finish``).

        Returns (the cancelled message, or None if it was not cancelled; the
        message as found, or None if unknown). Only a message that is queued
        and not leased now is cancelled: one a pass holds (``claim_until`` ahead
        of ``now``), a final one or another client's is left as it is. A
        lapsed lease's holder then finds its lease gone and writes nothing.
        """
        found: list[Message | None] = [None]

        def change(message: Message) -> Message | None:
            found[0] = message
            leased = message.claim is not None and (message.claim_until or 0.0) > now
            if message.client != client or message.final or leased:
                return None
            cancelled = message.with_changes(state=State.CANCELLED, claim=None, claim_until=None, updated_at=now)
            return noted(cancelled, FINAL_EVENTS[State.CANCELLED], now)

        return self.update(message_id, change, now), found[0]

    # -- the outbox ----------------------------------------------------------------
    @abstractmethod
    def enqueue_event(self, event: Event) -> None:
        """Store a new event durably before returning, due at ``event.next_at`` (one of that id already stored: left as it is)."""

    @abstractmethod
    def claim_events(self, now: float, lease: float, limit: int = 100) -> list[Event]:
        """Lease up to ``limit`` events due at ``now``, earliest first, each with a fresh token."""

    @abstractmethod
    def finish_event(self, claim: Event, next_at: float | None, delivered: bool, now: float) -> bool:
        """End the lease: ``next_at`` None removes the event (counted delivered or given up), else it is
        due again then with one more attempt. False (nothing written) if the lease was lost."""

    @abstractmethod
    def outbox_figures(self) -> dict[str, int]:
        """``pending`` events, and how many were ``delivered`` and ``given_up`` so far."""

    # -- history -------------------------------------------------------------------
    @abstractmethod
    def history_index(self, client: str, now: float) -> list[Cursor]:
        """(created_at, id) of the client's messages, live or archived, created within ``history_window`` of
        ``now``, in any order; older entries (and archived copies) are pruned. Reads only the client's own index."""

    @abstractmethod
    def history_load(self, client: str, message_ids: list[str]) -> dict[str, Message]:
        """The client's messages among ``message_ids``: the stored record, else the copy kept when it was archived."""

    def history(self, client: str, now: float, since: float = 0.0, before: Cursor | None = None,
                accept: Callable[[Message], bool] | None = None, limit: int = 50) -> list[Message]:
        """The client's own messages, newest first ((created_at, id) descending), archived ones included.

        Only those created at or after ``since`` (and within ``history_window``), strictly older than
        ``before`` (the cursor of the previous page), that ``accept`` takes; at most ``limit``.
        """
        start = max(since, now - self.history_window)
        entries = sorted((e for e in self.history_index(client, now) if e[0] >= start and (before is None or e < before)),
                         reverse=True)
        found: list[Message] = []
        first = 0
        while first < len(entries):
            size = min(HISTORY_BATCH, max(1, limit - len(found)))  # no more records read than the page still needs
            batch = [message_id for _, message_id in entries[first:first + size]]
            first += size
            loaded = self.history_load(client, batch)
            for message_id in batch:
                message = loaded.get(message_id)
                if message is None or message.client != client or (accept is not None and not accept(message)):
                    continue
                found.append(message)
                if len(found) >= limit:
                    return found
        return found

    def add_many(self, messages: Iterable[Message]) -> int:
        """Store many new messages (imports, benchmarks); returns how many."""
        count = 0
        for message in messages:
            self.add(message)
            count += 1
        return count

    def shared_key(self, name: str, make: Callable[[], bytes]) -> bytes | None:
        """A key kept in the store itself, for stores shared by several hosts (None: keep it in the data folder)."""
        return None

    def problems(self) -> list[str]:
        """What is wrong with the store now, for ``/health`` (empty when nothing is)."""
        return []

    def sweep(self, now: float, older_than: float) -> int:
        """Remove the backend's own leftovers older than ``older_than`` seconds; returns how many."""
        return 0
