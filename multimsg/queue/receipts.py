"""Platform receipts (WhatsApp status webhooks) applied to a message: the one rule every backend uses.

``apply(message, receipt, now)`` is a pure function: the changed message (or
None: nothing to change) and the kind of event the change is worth. Backends
run it inside their atomic read-modify-write (``MessageStore.update``), so a
receipt and a drain pass that races it never both win:

- A receipt for a wamid the message has, or for a message still queued (sent,
  but the outcome was never written: a crash, a lost answer), proves the
  platform accepted it: a queued message becomes ``delivered`` with that wamid
  (its lease is dropped, so a pass holding it writes nothing and nobody sends
  it again).
- Levels only go up: sent < delivered < read (``played`` counts as read). A
  level already known is a repeat (nothing changes); a lower level arriving
  after a higher one is recorded but raises nothing.
- ``failed`` after acceptance fails the message with the platform's reason if
  its final state was not reported by ``/cons`` yet; either way it is recorded
  and worth a ``message.failed`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import Message, State

__all__ = ["Receipt", "apply", "LEVELS", "STATUSES"]

LEVELS = {"sent": 1, "delivered": 2, "read": 3}
STATUSES = ("sent", "delivered", "read", "played", "failed")


@dataclass(frozen=True)
class Receipt:
    platform_id: str
    status: str  # one of STATUSES
    at: float  # the platform's timestamp
    error: dict[str, Any] | None = field(default=None)


def _level(receipt: dict[str, float]) -> int:
    return max((LEVELS.get(name, 0) for name in receipt), default=0)


def apply(message: Message, receipt: Receipt, now: float) -> tuple[Message | None, str | None]:
    """The message after ``receipt`` and the event type it is worth (None, None: a repeat, or not this message's)."""
    status = "read" if receipt.status == "played" else receipt.status
    if status not in LEVELS and status != "failed":
        return None, None
    changes: dict[str, Any] = {}
    event: str | None = None
    if receipt.platform_id not in message.platform_ids:
        if message.state != State.QUEUED:
            return None, None  # not a wamid of this message
        # Accepted by the platform although we never wrote it down: delivered, never sent again.
        changes.update(state=State.DELIVERED, platform_ids=[*message.platform_ids, receipt.platform_id],
                       claim=None, claim_until=None, last_error=None, updated_at=now, attempts=max(1, message.attempts))
        event = "message.delivered"
    if status in message.receipt:
        if not changes:
            return None, None  # a repeat
    else:
        before = _level(message.receipt)
        changes["receipt"] = {**message.receipt, status: receipt.at}
        if status == "failed":
            detail = dict(receipt.error or {})
            changes["failure"] = detail
            if message.reported_at is None:
                changes.update(state=State.FAILED, last_error=_reason(detail), updated_at=now,
                               claim=None, claim_until=None)
            event = "message.failed"
        elif LEVELS[status] > before and event is None:
            event = "message.read" if status == "read" else "message.receipt"
        elif event is None:
            event = None  # a lower level after a higher one: recorded quietly
    after = message.with_changes(**changes)
    return after, event


def _reason(detail: dict[str, Any]) -> str:
    code, title = detail.get("code"), detail.get("title") or detail.get("message")
    more = (detail.get("error_data") or {}).get("details") if isinstance(detail.get("error_data"), dict) else None
    text = " ".join(str(x) for x in (f"({code})" if code is not None else None, title, f"- {more}" if more else None) if x)
    return f"the platform reported the message failed: {text or 'no reason given'}"
