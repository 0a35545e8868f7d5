"""The retry policy: when a message is tried again, and when it is given up.

Exponential backoff with "equal jitter": attempt n waits a random time between
half and all of ``min(cap, base * factor ** (n - 1))``, and never less than
what the platform asked for (``retry_after``). A message fails when its
attempts run out or when it has waited longer than its validity period.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import Settings

__all__ = ["RetryPolicy"]


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

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def expired(self, created_at: float, now: float) -> bool:
        return now - created_at > self.validity
