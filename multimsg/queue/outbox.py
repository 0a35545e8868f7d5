"""Status events waiting to be POSTed to a client's callback URL: the outbox's record.

An ``Event`` is stored by the message store (``MessageStore.enqueue_event``)
before anyone tries to deliver it, so it survives a crash; a dispatcher leases
due events (``claim_events``: a fresh ``claim`` token and ``claim_until``, the
same fencing as message leases) and ends each lease with ``finish_event``:
delivered or given up (the event leaves the outbox and is counted), or retried
later. The body and ``id`` are fixed when the event is made, so every retry
carries the same ``webhook-id`` and the same bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Event", "OUTBOX_FIGURES"]

OUTBOX_FIGURES = ("delivered", "given_up")  # counted when an event leaves the outbox


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
