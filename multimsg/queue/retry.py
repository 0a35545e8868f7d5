"""The retry policy: when a message is tried again, when it is given up, and
what each send outcome does to its record (``transition``).

Defaults (each one a setting): ``MULTIMSG_RETRY_BASE`` 5 s,
``MULTIMSG_RETRY_FACTOR`` 2, ``MULTIMSG_RETRY_CAP`` 3600 s,
``MULTIMSG_RETRY_MAX_ATTEMPTS`` 12, ``MULTIMSG_VALIDITY`` 24 h.

- Backoff: exponential with "equal jitter": after its n-th failed attempt a
  message waits a random time between half and all of
  ``min(cap, base * factor ** (n - 1))`` (5-10 s, 10-20 s, 20-40 s, ... up to
  30-60 min), and never less than what the platform asked for (``retry_after``).
- Throttles (the platform said "too fast", with or without a ``retry_after``)
  are not the message's fault: they do not use up an attempt, and the message
  waits ``retry_after`` (or ``base``) plus up to 20% of jitter.
- A message fails when its attempts run out, or when it has waited longer than
  its validity period; a retry is never scheduled past that deadline, so an
  expiring message fails on time instead of a backoff later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..model import Message, State
from ..services.base import Outcome, OutcomeKind, Throttle

__all__ = ["RetryPolicy", "transition", "throttle_scope", "MISCONFIGURED_RECHECK"]

MISCONFIGURED_RECHECK = 60.0  # seconds between probes of a service whose credentials were refused


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 5.0
    factor: float = 2.0
    cap: float = 3600.0
    max_attempts: int = 12
    validity: float = 24 * 3600.0

    @classmethod
    def from_settings(cls, s: Settings) -> "RetryPolicy":
        return cls(s.retry_base, s.retry_factor, s.retry_cap, s.retry_max_attempts, s.validity)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        ceiling = min(self.cap, self.base * self.factor ** max(0, attempts - 1))
        return max(random.uniform(ceiling / 2, ceiling), retry_after or 0.0)

    def throttle_delay(self, retry_after: float | None = None) -> float:
        """Seconds to wait after a rate-limit answer: what the platform asked, plus jitter."""
        wait = retry_after if retry_after is not None else self.base
        return wait * random.uniform(1.0, 1.2)

    def next_attempt_at(self, created_at: float, now: float, delay: float) -> float:
        """When to try again: after ``delay``, but no later than just past the validity deadline."""
        return min(now + delay, max(now, self.deadline(created_at)) + 0.001)

    def deadline(self, created_at: float) -> float:
        return created_at + self.validity

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def expired(self, created_at: float, now: float) -> bool:
        return now - created_at > self.validity


def throttle_scope(outcome: Outcome) -> Throttle | None:
    """Whether an outcome says "too fast", and for what: the whole service or the destination.

    A service says so with ``Outcome.throttle`` ("service" or "dest");
    otherwise a retry with the platform's ``retry_after`` is taken as a
    throttle of the whole service (Telegram's 429).
    """
    if outcome.kind != OutcomeKind.RETRY:
        return None
    if outcome.throttle is not None:
        return Throttle(outcome.throttle)
    return Throttle.SERVICE if outcome.retry_after is not None else None


def transition(message: Message, outcome: Outcome, policy: RetryPolicy, now: float, attempted: bool = True) -> dict[str, Any]:
    """The changes an outcome makes to a record (a pure function of its inputs, but for jitter).

    ``attempted``: whether the outcome came from a send attempt (an expired
    message fails without one, and keeps its count of attempts).
    """
    changes: dict[str, Any] = {"updated_at": now, "platform_ids": list(message.platform_ids) + list(outcome.platform_ids)}
    if outcome.kind == OutcomeKind.DELIVERED:
        return {**changes, "state": State.DELIVERED, "last_error": None}
    if outcome.kind == OutcomeKind.FAILED:
        return {**changes, "state": State.FAILED, "last_error": outcome.reason, "attempts": message.attempts + (1 if attempted else 0)}
    if outcome.kind == OutcomeKind.MISCONFIGURED:
        # Not the message's fault: it keeps its attempts and waits.
        next_at = policy.next_attempt_at(message.created_at, now, MISCONFIGURED_RECHECK)
        return {**changes, "last_error": outcome.reason, "next_attempt_at": next_at}
    if throttle_scope(outcome):
        # "Too fast" is not the message's fault either: no attempt used up.
        next_at = policy.next_attempt_at(message.created_at, now, policy.throttle_delay(outcome.retry_after))
        return {**changes, "last_error": outcome.reason, "next_attempt_at": next_at}
    attempts = message.attempts + 1
    if policy.exhausted(attempts):
        reason = f"gave up after {attempts} attempts: {outcome.reason}"
        return {**changes, "state": State.FAILED, "last_error": reason, "attempts": attempts}
    next_at = policy.next_attempt_at(message.created_at, now, policy.delay(attempts, outcome.retry_after))
    return {**changes, "attempts": attempts, "last_error": outcome.reason, "next_attempt_at": next_at}
