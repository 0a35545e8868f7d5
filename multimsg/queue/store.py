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

Outbox: status events for callback URLs (``queue/outbox.py``) are stored with
``enqueue_event`` and leased with ``claim_events`` (a token and an expiry, as
messages are); ``finish_event`` with the current token ends or reschedules
one. ``outbox_figures`` counts pending, delivered and given-up events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Iterator

from ..errors import Unavailable
from ..model import Message
from .counters import Counters
from .outbox import Event
from .receipts import Receipt, apply

__all__ = ["MessageStore", "Damaged", "StoreUnwritable"]


class Damaged(Unavailable):
    """The part of the store that holds this id was damaged and set aside (quarantined)."""


class StoreUnwritable(Unavailable):
    """The store could not be written (full disk, I/O error, a lock that never came free)."""


class MessageStore(ABC):
    """Message records keyed by id, with leases, a due index and figures."""

    counters: Counters

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
        """Apply an outcome's ``changes`` and end the lease; None (nothing written) if the lease was lost."""

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

    @abstractmethod
    def rebuild(self) -> int:
        """Recount figures and the due index from the records; returns how many messages were counted."""

    @abstractmethod
    def update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        """Replace the message with ``change(message)`` atomically (None from ``change``: leave it); the result, or None."""

    def apply_receipt(self, message_id: str, receipt: Receipt, now: float) -> tuple[Message | None, str | None]:
        """Apply a platform receipt atomically: the message after it and the event it is worth (see ``receipts``)."""
        worth: list[str | None] = [None]

        def change(message: Message) -> Message | None:
            after, worth[0] = apply(message, receipt, now)
            return after

        return self.update(message_id, change, now), worth[0]

    # -- the outbox ----------------------------------------------------------------
    @abstractmethod
    def enqueue_event(self, event: Event) -> None:
        """Store a new event durably before returning; due at ``event.next_at``."""

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
