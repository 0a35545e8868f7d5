"""Pacing: how fast the drain may send, per service and per destination.

Each service declares its limits as data: ``rate`` (sends per second for the
whole service) and ``dest_limit(dest)`` (sends per seconds to one
destination). The service's settings (its ``ServiceConfig``) can override
them:

- ``MULTIMSG_<SERV>_RATE``: sends per second (0 turns service pacing off);
- ``MULTIMSG_<SERV>_DEST_INTERVAL``: seconds between two sends to one
  destination, for every destination (0 turns per-destination pacing off);
- ``MULTIMSG_<SERV>_CONCURRENCY``: how many sends may be in flight at once.

Platforms count requests in any sliding window, and our requests reach them a
few milliseconds after we decide to send, never exactly on time. So the drain
uses a fraction of each limit (``MULTIMSG_PACE_MARGIN``, 0.92) and never sends
in bursts: a ``Slots`` is a GCRA, a token bucket that holds a single token, so
sends are evenly spaced ``1 / rate`` apart and any one-second window holds at
most ``ceil(rate)`` of them.

A destination is only ever sent one message at a time (the drain sees to it),
and its next send waits for the previous request to be *answered* plus its
interval: a request arrives at the platform somewhere between our decision and
the answer, so this is the only spacing that holds whatever the network did.

A rate-limit answer holds the whole service (or the destination) for the
platform's ``retry_after`` and widens the service's spacing, which then narrows
back as sends succeed.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from ..services.base import Held, ServiceBase, Throttle

__all__ = ["Slots", "ServicePacer", "Pacers", "Held", "SERVICE", "DEST"]

SERVICE, DEST = Throttle.SERVICE, Throttle.DEST

MAX_CONCURRENCY = 64
SLOWDOWN_STEP = 1.5  # a throttle multiplies the service's spacing by this...
SLOWDOWN_MAX = 4.0  # ...up to this...
RECOVERY_STEP = 0.01  # ...and each delivered message takes this much of it back
DEFAULT_HOLD = 0.5  # seconds to hold the service after a rate-limit answer that did not say how long
# A sender that wakes this much after its slot takes another one instead. Threads reserve slots ahead and sleep until
# them; a process that stood still (its core taken by another, a stop) woke them all at once, and every slot that went
# by while it stood went out in one burst, on top of a full second of sends at the rate: more than the platform's
# limit in that second (rate-limit answers in bench.accounts on a loaded machine). Late by at most this much, a second
# holds at most (1 + LATE_SLOT) x the paced rate (92% of the limit: 97%).
LATE_SLOT = 0.05


class Slots:
    """Evenly spaced send times (a GCRA with a bucket of one token); thread-safe."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.tat = 0.0  # "theoretical arrival time": the earliest free slot
        self.hold_until = 0.0
        self.slowdown = 1.0
        self._lock = threading.Lock()

    def take(self) -> float:
        """Reserve the next free slot and return its time (the caller sleeps until then)."""
        with self._lock:
            slot = max(self.clock(), self.tat, self.hold_until)
            self.tat = slot + self.interval * self.slowdown
            return slot

    def free_at(self) -> float:
        """When the next slot is free (without reserving it)."""
        return max(self.tat, self.hold_until)

    def not_before(self, moment: float) -> None:
        """No slot before ``moment`` (the next send waits until then)."""
        with self._lock:
            self.tat = max(self.tat, moment)

    def hold(self, seconds: float) -> None:
        """Nothing goes out for ``seconds``, not even slots already handed out."""
        with self._lock:
            self.hold_until = max(self.hold_until, self.clock() + seconds)

    def slow_down(self) -> None:
        with self._lock:
            self.slowdown = min(SLOWDOWN_MAX, self.slowdown * SLOWDOWN_STEP)

    def recover(self) -> None:
        if self.slowdown > 1.0:
            with self._lock:
                self.slowdown = max(1.0, self.slowdown - RECOVERY_STEP)


class ServicePacer:
    """The pacing of one service: its bucket, one bucket per busy destination, its pool size."""

    def __init__(self, service: ServiceBase, *, margin: float = 0.92, expected_latency: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        config = service.config
        self.service = service
        self.margin = margin
        self.clock = clock
        self.sleep = sleep
        self.declared_rate = service.declared_rate
        self.rate = self.declared_rate * margin if self.declared_rate > 0 else 0.0
        self.slots = Slots(1.0 / self.rate if self.rate else 0.0, clock)
        sized = math.ceil(self.rate * expected_latency * 1.5) if self.rate else MAX_CONCURRENCY // 4
        self.concurrency = max(1, config.concurrency if config.concurrency is not None else min(MAX_CONCURRENCY, max(2, sized)))
        self.dest_override = config.dest_interval
        self._dests: dict[str, Slots] = {}
        self._lock = threading.Lock()

    # -- limits --------------------------------------------------------------
    def dest_interval(self, dest: str) -> float:
        """Seconds between two sends to ``dest`` (0: no per-destination limit)."""
        if self.dest_override is not None:
            return max(0.0, self.dest_override)
        count, per_seconds = self.service.dest_limit(dest)
        return per_seconds / count / self.margin if count > 0 and per_seconds > 0 else 0.0

    def _dest(self, dest: str) -> Slots:
        with self._lock:
            slots = self._dests.get(dest)
            if slots is None:
                slots = self._dests[dest] = Slots(self.dest_interval(dest), self.clock)
            return slots

    def ready_at(self, dest: str) -> float:
        """When ``dest`` may receive its next send (monotonic clock)."""
        slots = self._dests.get(dest)
        return slots.free_at() if slots is not None else 0.0

    # -- sending ---------------------------------------------------------------
    def held_for(self, dest: str | None = None) -> float:
        """Seconds the platform told us to hold the service (or ``dest``) from now on."""
        until = self.slots.hold_until
        slots = self._dests.get(dest) if dest is not None else None
        if slots is not None:
            until = max(until, slots.hold_until)
        return max(0.0, until - self.clock())

    def wait_turn(self, dest: str, patience: float = math.inf) -> None:
        """Sleep until both ``dest`` and the service may send; take the service's slot.

        Raises ``Held`` rather than sleep through a platform's hold longer than ``patience``.
        """
        dest_slots = self._dest(dest)
        while True:
            held = self.held_for(dest)
            if held > patience:
                raise Held(held)
            wait = dest_slots.free_at() - self.clock()
            if wait > 0:
                self.sleep(wait)
            slot = self.slots.take()
            wait = slot - self.clock()
            if wait > 0:
                self.sleep(wait)
            if self.clock() - slot > LATE_SLOT:
                continue  # the process stood still past this slot (its core taken, a pause): sent now, it would go out in a burst
            # A throttle may have come in while we slept: then wait for it, in turn.
            if self.slots.hold_until <= slot and dest_slots.hold_until <= slot:
                return

    def answered(self, dest: str) -> None:
        """A request to ``dest`` was just answered: its next send waits a full interval from now."""
        slots = self._dest(dest)
        slots.not_before(self.clock() + slots.interval)

    def throttled(self, scope: Throttle, dest: str, retry_after: float | None) -> None:
        """The platform said we are too fast: hold (and slow down) the service, or hold the destination."""
        if scope == DEST:
            slots = self._dest(dest)
            slots.hold(retry_after if retry_after is not None else max(DEFAULT_HOLD, 2 * slots.interval))
            return
        self.slots.hold(retry_after if retry_after is not None else DEFAULT_HOLD)
        self.slots.slow_down()

    def delivered(self) -> None:
        self.slots.recover()

    def forget_idle(self, busy: set[str] | frozenset[str] = frozenset()) -> int:
        """Drop the buckets of destinations that no longer constrain anything; returns how many."""
        now = self.clock()
        with self._lock:
            idle = [dest for dest, slots in self._dests.items() if slots.free_at() <= now and dest not in busy]
            for dest in idle:
                del self._dests[dest]
        return len(idle)


class Pacers:
    """The pacers of one process, one per service, kept across drain passes."""

    def __init__(self, margin: float = 0.92, expected_latency: float = 0.25):
        self.margin = margin
        self.expected_latency = expected_latency
        self._pacers: dict[str, ServicePacer] = {}
        self._lock = threading.Lock()

    def get(self, serv: str, service: ServiceBase) -> ServicePacer:
        with self._lock:
            pacer = self._pacers.get(serv)
            if pacer is None:
                pacer = self._pacers[serv] = ServicePacer(service, margin=self.margin, expected_latency=self.expected_latency)
            return pacer
