"""The drain: claim the due messages, send them as fast as each platform allows, record each outcome.

``Drain`` is the engine of one data folder: ``run_pass`` (what every trigger
calls) and what lasts across passes (pacers, services on hold, the sweep of
expired uploads and unreported results); ``scheduler.Pass`` runs one pass.

At most one pass runs per data folder (a non-blocking FileLock); a pass started
meanwhile answers ``busy`` at once. Within a pass:

- Messages are claimed lazily, one shard at a time, and at most ``window``
  are held in memory (waiting or in flight), however long the backlog.
- Each service has its own lane: a bounded thread pool (``concurrency``) and a
  heap of destinations ordered by when each may receive its next message, so a
  destination that must wait never holds up the others. A destination has at
  most one message in flight, and those the pass holds for it go oldest first.
- The service paces itself: right before each request it calls
  ``data["pace"]()``, which sleeps until both the service and the destination
  have a free slot (``pacing.ServicePacer``). A rate-limit answer holds the
  service (or the destination) for the platform's ``retry_after``; a hold
  longer than ``horizon`` is not slept through: the messages it concerns stay
  queued, untouched, for a later pass.
- A destination takes at most what its limit lets through in ``horizon``
  seconds per pass (the rest waits for the next pass), so a slow destination
  cannot fill the pass's window and starve the others.
- Each outcome is written to the store by the thread that sent the message,
  right after the answer: a crash duplicates at most the messages in flight.
- A service whose credentials are refused (or missing) is put on hold: its
  messages stay queued, untouched, and every pass reports it (and logs an
  ERROR) until a probe message gets through; the validity period still applies.

A pass that dies leaves claims that the next pass takes back (see
``store.is_due``): delivery is at-least-once, and the only duplicates are the
messages in flight at the instant of a crash.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from ..services.base import ServiceBase
from .pacing import ServicePacer
from .retry import MISCONFIGURED_RECHECK, RetryPolicy
from .scheduler import Pass, Summary
from .spool import Spool
from .store import MessageStore

__all__ = ["Drain", "Summary", "Tuning"]

log = logging.getLogger("multimsg.drain")


@dataclass(frozen=True)
class Tuning:
    """The drain's knobs (settings ``MULTIMSG_PACE_MARGIN`` etc.; see ``from_settings``)."""

    margin: float = 0.92  # fraction of each declared limit used
    expected_latency: float = 0.25  # seconds a platform takes to answer; sizes the default pools
    window: int = 1000  # messages a pass holds in memory at once (waiting + in flight)
    horizon: float = 60.0  # a destination takes at most what its limit lets through in this many seconds per pass
    sweep_interval: float = 600.0  # seconds between sweeps of expired uploads and unreported results
    result_ttl: float = 7 * 24 * 3600.0  # seconds a final state waits for /cons before it is archived unread

    @classmethod
    def from_settings(cls, s) -> "Tuning":
        return cls(s.pace_margin, s.expected_latency, max(1, s.drain_window), s.drain_horizon, s.sweep_interval, s.result_ttl)


class Drain:
    """The delivery engine of one data folder; ``run_pass`` is what every trigger calls."""

    def __init__(
        self,
        store: MessageStore,
        spool: Spool,
        service_for: Callable[[str], ServiceBase],
        policy: RetryPolicy,
        lock_path: Path,
        clock: Callable[[], float] = time.time,
        tuning: Tuning | None = None,
    ):
        self.store = store
        self.spool = spool
        self.service_for = service_for
        self.policy = policy
        self.lock_path = lock_path
        self.clock = clock
        self.tuning = tuning or Tuning()
        # Kept across the passes of one process (the runner's timer, POST /drain):
        self._pacers: dict[str, ServicePacer] = {}
        self._on_hold: dict[str, tuple[float, str]] = {}  # serv -> (monotonic time of the next probe, reason)
        self._hooked: set[str] = set()  # services seen calling data["pace"] themselves
        self._last_sweep = float("-inf")

    def run_pass(self) -> dict:
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return Summary(busy=True).as_dict()
        try:
            started = time.monotonic()
            summary = Pass(self).run()
            self._sweep()
            if summary.claimed or summary.deferred or summary.misconfigured:
                log.info("drain pass: %s, %d deferred, %.1f s", summary.as_dict(), summary.deferred, time.monotonic() - started)
            return summary.as_dict()
        finally:
            lock.release()

    # -- kept across passes ----------------------------------------------------
    def pacer(self, serv: str, service: ServiceBase) -> ServicePacer:
        if serv not in self._pacers:
            self._pacers[serv] = ServicePacer(service, margin=self.tuning.margin, expected_latency=self.tuning.expected_latency)
        return self._pacers[serv]

    def hold_reason(self, serv: str) -> str | None:
        """Why ``serv`` is on hold, or None (a hold lapses so that a probe can go through)."""
        held = self._on_hold.get(serv)
        if held is None:
            return None
        if time.monotonic() >= held[0]:
            return None
        return held[1]

    def put_on_hold(self, serv: str, reason: str, recheck: float = MISCONFIGURED_RECHECK) -> None:
        self._on_hold[serv] = (time.monotonic() + recheck, reason)
        log.error("service %s is misconfigured; its messages stay queued (next try in %g s): %s", serv, recheck, reason)

    def release_hold(self, serv: str) -> None:
        if self._on_hold.pop(serv, None) is not None:
            log.warning("service %s works again; sending its queued messages", serv)

    def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self.tuning.sweep_interval:
            return
        self._last_sweep = time.monotonic()
        now = self.clock()
        try:
            removed = self.spool.sweep(now)
            # Results nobody asked for would otherwise stay in the store for ever.
            unreported = list(self.store.unreported(now - self.tuning.result_ttl))
            for message_id in unreported:
                record = self.store.archive(message_id)
                if record is not None:
                    self.spool.release(record["client"], message_id)
        except Exception:
            log.exception("sweeping expired uploads and unreported results failed")
            return
        if removed or unreported:
            log.info("swept %d expired upload(s), archived %d unreported result(s)", removed, len(unreported))
