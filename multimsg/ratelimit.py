"""Per-client request rate limiting (``MULTIMSG_RATE_LIMIT``, ``MULTIMSG_RATE_BURST``).

A token bucket per client key: a client may send ``burst`` requests at once,
then ``rate`` requests per second; over that it gets ``RateLimited`` with the
seconds until its next request would pass (the HTTP layer answers 429 with
``Retry-After``). ``MULTIMSG_RATE_LIMIT=0`` turns limiting off.

With the embedded backend the buckets live in this process's memory behind one
lock, so the limit holds exactly across the threads of one server process (the
local runner is one process). With the Redis backend every process shares one
bucket per client in Redis (``redis_engine.RedisRateLimiter``: a GCRA script on
Redis's clock), so N processes together still allow the client ``rate``.
The table of buckets is bounded (least recently used clients are forgotten
first), so a flood of distinct client addresses cannot grow memory without end.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Callable

from .errors import RateLimited

__all__ = ["RateLimiter", "limiter", "check_rate"]

MAX_CLIENTS = 100_000


class Limiter:
    """What every per-client limiter shares: ``acquire(client)`` (seconds to wait, 0 = go) and the refusal."""

    rate: float
    burst: float

    def acquire(self, client: str) -> float:
        raise NotImplementedError

    def check(self, client: str) -> None:
        wait = self.acquire(client)
        if wait:
            raise RateLimited(
                f"too many requests: this server takes {self.rate:g} per second per client (bursts of {self.burst:g}); "
                f"retry in {math.ceil(wait)} s",
                retry_after=wait,
            )


class RateLimiter(Limiter):
    """``rate`` requests per second per client, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.max_clients = max_clients
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def acquire(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0.0 if it passes, else seconds to wait."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            if not wait:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait



@lru_cache(maxsize=1)
def limiter():
    """The process's limiter (``RateLimiter``, or its Redis peer with the Redis backend), or None when ``MULTIMSG_RATE_LIMIT`` is 0."""
    from .config import settings
    from .gateway import redis_client

    s = settings()
    if s.rate_limit <= 0:
        return None
    client = redis_client(s)
    if client is not None:
        from .queue.backends.redis_engine import RedisRateLimiter

        return RedisRateLimiter(client, s.redis_tag, s.rate_limit, s.rate_burst)
    return RateLimiter(s.rate_limit, s.rate_burst)


def check_rate(client: str) -> None:
    """Raise ``RateLimited`` if ``client`` is over its rate (a no-op when limiting is off)."""
    active = limiter()
    if active is not None:
        active.check(client)
