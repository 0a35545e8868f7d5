"""One drain pass: claim the due messages, hand each to its service, record the outcome.

At most one pass runs per data folder (a non-blocking FileLock); a pass started
meanwhile answers ``busy`` at once. A pass claims messages before sending them,
so a pass that dies leaves claims that the next pass takes back (see
``store.is_due``): delivery is at-least-once, and the only duplicates are the
messages in flight at the instant of a crash.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from ..ids import new_id
from ..services.base import DELIVERED, FAILED, MISCONFIGURED, RETRY, Outcome, ServiceBase
from . import states
from .retry import RetryPolicy
from .spool import Spool
from .store import MessageStore

__all__ = ["Drain", "transition"]

log = logging.getLogger("multimsg.drain")

MISCONFIGURED_RECHECK = 60.0  # seconds between tries of a service whose credentials were refused


@dataclass
class Summary:
    busy: bool = False
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    misconfigured: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "busy": self.busy,
            "claimed": self.claimed,
            "delivered": self.delivered,
            "retried": self.retried,
            "failed": self.failed,
            "misconfigured": self.misconfigured,
        }


def transition(record: dict, outcome: Outcome, policy: RetryPolicy, now: float) -> dict:
    """The changes an outcome makes to a record (a pure function of its inputs)."""
    changes: dict = {"claim": None, "updated_at": now, "platform_ids": record.get("platform_ids", []) + outcome.platform_ids}
    if outcome.kind == DELIVERED:
        return {**changes, "state": states.DELIVERED, "last_error": None}
    if outcome.kind == FAILED:
        return {**changes, "state": states.FAILED, "last_error": outcome.reason, "attempts": record["attempts"] + 1}
    if outcome.kind == MISCONFIGURED:
        # Not the message's fault: it keeps its attempts and waits.
        return {**changes, "last_error": outcome.reason, "next_attempt_at": now + MISCONFIGURED_RECHECK}
    assert outcome.kind == RETRY, outcome.kind
    attempts = record["attempts"] + 1
    if policy.exhausted(attempts):
        reason = f"gave up after {attempts} attempts: {outcome.reason}"
        return {**changes, "state": states.FAILED, "last_error": reason, "attempts": attempts}
    delay = policy.delay(attempts, outcome.retry_after)
    return {**changes, "attempts": attempts, "last_error": outcome.reason, "next_attempt_at": now + delay}


class Drain:
    def __init__(
        self,
        store: MessageStore,
        spool: Spool,
        service_for: Callable[[str], ServiceBase],
        policy: RetryPolicy,
        lock_path: Path,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.spool = spool
        self.service_for = service_for
        self.policy = policy
        self.lock_path = lock_path
        self.clock = clock

    def run_pass(self) -> dict:
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return Summary(busy=True).as_dict()
        try:
            return self._pass().as_dict()
        finally:
            lock.release()

    def _pass(self) -> Summary:
        summary = Summary()
        claim = new_id()
        for record in self.store.claim_due(self.clock(), claim):
            summary.claimed += 1
            outcome = self._attempt(record)
            self._record(record, outcome, summary)
        self.spool.sweep(self.clock())
        return summary

    def _attempt(self, record: dict) -> Outcome:
        if self.policy.expired(record["created_at"], self.clock()):
            return Outcome.failed(f"expired: not delivered within {self.policy.validity:g} s ({record.get('last_error') or 'no error'})")
        service = self.service_for(record["serv"])
        if not service.configured():
            missing = ", ".join(service.missing_credentials())
            return Outcome.misconfigured(f"{service.name} is not configured (set {missing})")
        path = self.spool.message_path(record["client"], record["id"])
        data = {
            "id": record["id"],
            "dir": str(path.parent),
            "path": path,
            "dest": record["dest"],
            "type": record["type"],
            "state": record["state"],
            "filename": record.get("filename"),
            "options": record.get("options", {}),
            "platform_ids": record.get("platform_ids", []),
        }
        try:
            return service.send(data)
        except FileNotFoundError:
            return Outcome.failed("the message's content is gone from the spool")

    def _record(self, record: dict, outcome: Outcome, summary: Summary) -> None:
        changes = transition(record, outcome, self.policy, self.clock())
        self.store.update(record["id"], changes)
        state = changes.get("state", states.QUEUED)
        if state == states.DELIVERED:
            summary.delivered += 1
        elif state == states.FAILED:
            summary.failed += 1
        elif outcome.kind == MISCONFIGURED:
            summary.misconfigured[record["serv"]] = outcome.reason
            log.error("service %s is misconfigured, its messages stay queued: %s", record["serv"], outcome.reason)
        else:
            summary.retried += 1
        log.info(
            "message %s serv=%s outcome=%s state=%s attempt=%s reason=%s",
            record["id"], record["serv"], outcome.kind, state, changes.get("attempts", record["attempts"]), outcome.reason or "-",
        )
