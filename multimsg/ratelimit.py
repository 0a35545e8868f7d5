"""Per-client request rate limiting (``MULTIMSG_RATE_LIMIT``, ``MULTIMSG_RATE_BURST``).

A token bucket per client key: a client may send ``burst`` requests at once,
then ``rate`` requests per second; over that it gets ``RateLimited`` with the
seconds until its next request would pass (the HTTP layer answers 429 with
``Retry-After``). ``MULTIMSG_RATE_LIMIT=0`` turns limiting off.

With the embedded backend the buckets live in this process's memory behind one
lock, so the limit holds exactly across the threads of one server process. The
local runner with several workers (``MULTIMSG_WORKERS``) makes a
``SharedRateLimiter`` before it forks them: the same buckets in one shared
memory map, under a lock that the kernel releases if its holder dies, so its
workers together allow a client ``rate`` too. Separate server processes on one
data folder (functions-framework handlers, two runners) each keep their own
count: N of them allow up to N× the rate. With the Redis backend every process shares one
bucket per client in Redis (``redis_engine.RedisRateLimiter``: a GCRA script on
Redis's clock), so N processes together still allow the client ``rate``.
The table of buckets is bounded (least recently used clients are forgotten
first), so a flood of distinct client addresses cannot grow memory without end.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Callable

from .errors import RateLimited

__all__ = ["RateLimiter", "SharedRateLimiter", "limiter", "check_rate", "share_between_processes"]

MAX_CLIENTS = 100_000
PROBES = 8  # slots a client's bucket may sit in (SharedRateLimiter): the least recently used one gives way


def _take(tokens: float, at: float, now: float, rate: float, burst: float) -> tuple[float, float]:
    """One request from a bucket holding ``tokens`` at ``at``: (tokens left, seconds to wait; 0 = it passes)."""
    tokens = min(burst, tokens + (now - at) * rate)
    wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate
    return (tokens if wait else tokens - 1.0), wait


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


class _Buckets(Limiter):
    """Token buckets kept by this process (in its memory, or in memory it shares): their rate, burst, clock and lock."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.clock = clock
        self._lock = threading.Lock()


class RateLimiter(_Buckets):
    """``rate`` requests per second per client, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        super().__init__(rate, burst, clock)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def acquire(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0.0 if it passes, else seconds to wait."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens, wait = _take(tokens, at, now, self.rate, self.burst)
            self._buckets[client] = (tokens, now)  # most recently used last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


class SharedRateLimiter(_Buckets):
    """``RateLimiter``'s buckets in memory shared with every process forked after it was made.

    A table of ``slots`` buckets (client hash, tokens, time) in a memory map of
    an unlinked temporary file; a client's bucket is in one of ``PROBES``
    slots from its hash, and a new client takes the least recently used of
    them (a forgotten client starts with a full burst, as with ``RateLimiter``).
    A change is made under a POSIX record lock on the file (released by the
    kernel if the process holding it dies) plus a thread lock within a process.
    """

    SLOT = struct.Struct("=Qdd")

    def __init__(self, rate: float, burst: int, *, slots: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        super().__init__(rate, burst, clock)  # time.monotonic is CLOCK_MONOTONIC: one clock for every process of the machine
        self.slots = slots
        self._file = tempfile.TemporaryFile(prefix="multimsg-rate-")
        self._file.truncate(slots * self.SLOT.size)
        self._map = mmap.mmap(self._file.fileno(), slots * self.SLOT.size)

    def acquire(self, client: str) -> float:
        key = int.from_bytes(hashlib.blake2b(client.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") or 1
        now = self.clock()
        with self._lock:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX)
            try:
                offset = self._slot(key) * self.SLOT.size
                held, tokens, at = self.SLOT.unpack_from(self._map, offset)
                if held != key:
                    tokens, at = self.burst, now
                tokens, wait = _take(tokens, at, now, self.rate, self.burst)
                self.SLOT.pack_into(self._map, offset, key, tokens, now)
            finally:
                fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN)
        return wait

    def _slot(self, key: int) -> int:
        """The slot holding ``key``'s bucket, else an empty one, else the least recently used of its ``PROBES``."""
        victim, oldest = key % self.slots, math.inf
        for step in range(PROBES):
            index = (key + step) % self.slots
            held, _, at = self.SLOT.unpack_from(self._map, index * self.SLOT.size)
            if held in (key, 0):  # slots are never emptied: past an empty one the key is not stored
                return index
            if at < oldest:
                victim, oldest = index, at
        return victim


_shared: SharedRateLimiter | None = None


def share_between_processes() -> None:
    """Make the limiter of this process one shared with the processes forked from it from now on.

    Only where it would be kept in memory (the embedded backend, limiting on):
    the Redis limiter is shared by every process already.
    """
    from .config import settings
    from .gateway import redis_client

    global _shared
    s = settings()
    limiter.cache_clear()
    if s.rate_limit > 0 and redis_client(s) is None:
        _shared = SharedRateLimiter(s.rate_limit, s.rate_burst)


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
    return _shared or RateLimiter(s.rate_limit, s.rate_burst)


def check_rate(client: str) -> None:
    """Raise ``RateLimited`` if ``client`` is over its rate (a no-op when limiting is off)."""
    active = limiter()
    if active is not None:
        active.check(client)
