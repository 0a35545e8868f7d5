"""The message model: a message record's fields, its states, and how it is stored.

``State`` names every state a message can be in; ``Message`` owns the
record's fields. Backends store a message as the plain dict of
``Message.to_record()`` and read it back with ``Message.from_record()``,
which refuses a record it cannot trust (``BadRecord``) rather than letting a
missing or mistyped field travel into the engine.

A message is ``QUEUED`` from ``/msg`` until the drain records a final
outcome: ``DELIVERED`` (the platform accepted every part) or ``FAILED`` (the
platform refused it for good, its attempts ran out, or it expired), or
``CANCELLED`` (``POST /cancel`` took it out of the queue before a pass leased
it; ``MessageStore.cancel``). While a
drain pass sends it, a message carries a lease: ``claim`` (a token unique to
that claim) and ``claim_until`` (when the lease lapses and any pass may take
the message back).

This module depends on nothing else in multimsg, so the client, the HTTP
layer and every backend can share it without dragging the engine along.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

__all__ = ["State", "FINAL_STATES", "Message", "BadRecord", "iso"]

TIME_FIELDS = ("created_at", "updated_at", "next_attempt_at", "scheduled_for")  # shown as ISO times in the JSON answer


class State(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({State.DELIVERED, State.FAILED, State.CANCELLED})


class BadRecord(ValueError):
    """A stored record that is not a valid message (a missing key, a value of the wrong type)."""


@dataclass(frozen=True)
class Message:
    """One message, as stored. Times are wall-clock Unix seconds."""

    id: str
    client: str
    data_id: str
    serv: str
    dest: str
    type: str
    filename: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    state: State = State.QUEUED
    attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    platform_ids: list[str] = field(default_factory=list)
    claim: str | None = None  # the lease token of the pass sending it now
    claim_until: float | None = None  # when that lease lapses
    reported_at: float | None = None  # when /cons first reported its final state
    callback: str | None = None  # where status events are POSTed (multimsg/callbacks.py); None: nowhere
    receipt: dict[str, float] = field(default_factory=dict)  # platform receipt level -> when (sent, delivered, read, failed)
    failure: dict[str, Any] | None = None  # the platform's reason when a receipt said failed
    # Status events this change is worth (``queue/outbox.py`` records), on their way into the outbox: a backend
    # stores them there in the same atomic write as the record (see ``queue/store.py``), never as part of it for long.
    events: list[dict[str, Any]] = field(default_factory=list)
    scheduled_for: float | None = None  # /msg's ``at``: not sent before then (its first next_attempt_at)

    @property
    def queued_since(self) -> float:
        """Since when it has been waiting to be sent: its ``at`` for a scheduled message, else when it was queued."""
        return self.created_at if self.scheduled_for is None else max(self.created_at, self.scheduled_for)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def due_at(self) -> float | None:
        """When a pass may next take this message (None: never, it is final)."""
        if self.final:
            return None
        if self.claim is not None and self.claim_until is not None:
            return max(self.next_attempt_at, self.claim_until)
        return self.next_attempt_at

    def is_due(self, now: float) -> bool:
        due = self.due_at()
        return due is not None and due <= now

    def leased_by(self, token: str) -> bool:
        return self.claim == token

    def with_changes(self, **changes: Any) -> "Message":
        """A copy with ``changes`` (what ``dataclasses.replace`` makes, a shallow copy, without its per-call field walk)."""
        if "state" in changes:
            changes["state"] = State(changes["state"])
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"Message has no field(s) {sorted(unknown)}")
        copied = object.__new__(Message)
        copied.__dict__.update(self.__dict__)
        copied.__dict__.update(changes)  # frozen: set as __init__ would, once
        return copied

    # -- storage ---------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        # What ``dataclasses.asdict`` makes, a field at a time: it deep-copies every value, which made this a
        # tenth of a /msg's CPU. The containers are copied here (one level; ``failure`` and events deeper).
        record = {name: getattr(self, name) for name in _FIELD_NAMES}
        record["state"] = str(self.state)
        record["options"], record["platform_ids"], record["receipt"] = dict(self.options), list(self.platform_ids), dict(self.receipt)
        record["failure"] = copy.deepcopy(self.failure) if self.failure is not None else None
        record["events"] = copy.deepcopy(self.events) if self.events else []
        return record

    @classmethod
    def from_record(cls, record: Any) -> "Message":
        if not isinstance(record, dict):
            raise BadRecord("a record must be a JSON object")
        values = {k: v for k, v in record.items() if k in _FIELD_SET}
        for name in ("id", "client", "data_id", "serv", "dest", "type"):
            if not isinstance(values.get(name), str):
                raise BadRecord(f"record {record.get('id')!r}: {name!r} is missing or not text")
        try:
            values["state"] = State(values.get("state", State.QUEUED))
        except ValueError:
            raise BadRecord(f"record {values['id']}: unknown state {values.get('state')!r}") from None
        ids = values.get("platform_ids")
        values["platform_ids"] = [] if ids is None else ids
        if not isinstance(values["platform_ids"], list) or not all(isinstance(i, str) for i in values["platform_ids"]):
            raise BadRecord(f"record {values['id']}: 'platform_ids' must be a list of text")
        receipt = values.get("receipt")
        values["receipt"] = {} if receipt is None else receipt
        if not isinstance(values["receipt"], dict) or not all(isinstance(v, (int, float)) for v in values["receipt"].values()):
            raise BadRecord(f"record {values['id']}: 'receipt' must be an object of times")
        if values.get("failure") is not None and not isinstance(values["failure"], dict):
            raise BadRecord(f"record {values['id']}: 'failure' must be an object")
        events = values.get("events")
        values["events"] = [] if events is None else events
        if not isinstance(values["events"], list) or not all(isinstance(e, dict) for e in values["events"]):
            raise BadRecord(f"record {values['id']}: 'events' must be a list of objects")
        options = values.get("options")
        values["options"] = {} if options is None else options
        if not isinstance(values["options"], dict):
            raise BadRecord(f"record {values['id']}: 'options' must be an object")
        try:
            values["attempts"] = int(values.get("attempts") or 0)
            for name in ("created_at", "updated_at", "next_attempt_at"):
                values[name] = float(values.get(name) or 0.0)
            for name in ("claim_until", "reported_at", "scheduled_for"):
                if values.get(name) is not None:
                    values[name] = float(values[name])
        except (TypeError, ValueError):
            raise BadRecord(f"record {values['id']}: a count or a time is not a number") from None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What ``/cons`` shows of a message (JSON answer)."""
        return {
            "id": self.id,
            "state": str(self.state),
            "serv": self.serv,
            "dest": self.dest,
            "type": self.type,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_attempt_at": None if self.final else self.next_attempt_at,
            "last_error": self.last_error,
            "platform_ids": list(self.platform_ids),
            "receipt": dict(self.receipt),
            "failure": None if self.failure is None else dict(self.failure),
            "scheduled_for": self.scheduled_for,
        }

    def report(self) -> dict[str, Any]:
        """The ``/cons`` JSON answer (also a status event's ``data``): ``public`` with ISO times."""
        answer = self.public()
        answer.update({name: iso(answer[name]) for name in TIME_FIELDS})
        answer["receipt"] = {level: iso(at) for level, at in answer["receipt"].items()}
        return answer


_FIELD_NAMES = tuple(f.name for f in fields(Message))
_FIELD_SET = frozenset(_FIELD_NAMES)


def iso(epoch: float | None) -> str | None:
    """A Unix time as an ISO 8601 UTC time with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
