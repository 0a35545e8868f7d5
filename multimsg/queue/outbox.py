"""Status events waiting to be POSTed to a client's callback URL: the outbox's record, and which changes make one.

A change of a message worth an event (a final state written by ``finish``, a
receipt that raises the level) carries it in the record it writes
(``noted``: ``Message.events``), and the store puts it in its outbox in the
same atomic write as the change (``queue/store.py``): a crash leaves both the
change and its event, or neither. The event's ``id`` and body are fixed then,
once, so every attempt (and a repeat of the move after a crash) carries the
same ``webhook-id`` and the same bytes.

A dispatcher leases due events (``claim_events``: a fresh ``claim`` token and
``claim_until``, the same fencing as message leases) and ends each lease with
``finish_event``: delivered or given up (the event leaves the outbox and is
counted), or retried later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..ids import new_id
from ..model import Message, State, iso

__all__ = ["Event", "OUTBOX_FIGURES", "FINAL_EVENTS", "make_event", "noted"]

OUTBOX_FIGURES = ("delivered", "given_up")  # counted when an event leaves the outbox
FINAL_EVENTS = {State.DELIVERED: "message.delivered", State.FAILED: "message.failed", State.CANCELLED: "message.cancelled"}  # what a final state is worth


@dataclass(frozen=True)
class Event:
    id: str  # the webhook-id: the same on every attempt
    url: str
    body: str  # the JSON payload, exactly as signed and sent
    message_id: str = ""
    attempts: int = 0
    created_at: float = 0.0
    next_at: float = 0.0
    claim: str | None = None
    claim_until: float | None = None

    def due_at(self) -> float:
        if self.claim is not None and self.claim_until is not None:
            return max(self.next_at, self.claim_until)
        return self.next_at

    def with_changes(self, **changes: Any) -> "Event":
        return replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> "Event":
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("id", "url", "body")):
            raise ValueError("not an event record")
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def make_event(message: Message, kind: str, now: float) -> Event | None:
    """The event for ``message`` after a change worth ``kind`` (None: it has no callback URL).

    Body: ``{"type": kind, "timestamp": ISO time, "data": <the /cons JSON answer>}``.
    """
    if not message.callback:
        return None
    body = json.dumps({"type": kind, "timestamp": iso(now), "data": message.report()}, ensure_ascii=False)
    return Event(id="msg_" + new_id(), url=message.callback, body=body, message_id=message.id, created_at=now, next_at=now)


def noted(message: Message, kind: str | None, now: float) -> Message:
    """``message`` carrying the event its change is worth, to be written with it (unchanged: none)."""
    event = make_event(message, kind, now) if kind is not None else None
    if event is None:
        return message
    return message.with_changes(events=[*message.events, event.to_record()])
