"""The drain: lease the due messages, send them as fast as each platform allows, record each outcome.

``Drain`` is the delivery engine of one store: ``run_pass`` (what every
trigger calls) and what lasts across the passes of one process (the pacers,
the holds, outcomes the store refused to take, the sweep). ``scheduler.Pass``
runs one pass; it is built from explicit parts (store, spool, services,
policy, tuning, holds, pacers, clock), so it runs alone in-process in tests.

Correctness rests on leases, not on running alone: every message a pass holds
is leased to it (``MessageStore.claim_due``), the lease is extended while the
pass holds it, and an outcome is written only while the lease is still the
pass's own (``finish``). Any pass may take back a lapsed lease at any time (a
running pass looks for lapsed ones every third of a lease), so
several passes in several processes deliver every message once when nothing
crashes. A non-blocking file lock still lets only one pass run at a time per
data folder (``MULTIMSG_DRAIN_LOCK``, on by default) because one pass already
uses each platform's whole limit; it is an optimisation, not a guarantee.
Where one process's CPU is not enough for several busy accounts, a drain can
send for a ``Share`` of the service instances only (``shares``): several drain
processes then each pace their own instances, under a lock of their own.

Within a pass:

- Messages are leased lazily and at most ``window`` are held at once.
- Each service has its own lane: a bounded pool and a heap of destinations
  ordered by when each may next receive, so one that must wait holds up nobody.
- The service paces itself (``data["pace"]``, ``pacing.ServicePacer``) right
  before each request; a platform hold longer than ``horizon`` is not slept
  through, for a first part or a later one: the message goes back to the queue
  with the parts already delivered, for a later pass.
- Each outcome is written right after the answer. An outcome the store cannot
  take (full disk, I/O error) is kept and written again; while any is pending
  the pass takes no new work, and the next pass writes it before it leases
  anything: without a crash, nothing is sent twice.
- A service whose credentials are refused (or missing) is put on hold.

Delivery is at-least-once: a crash duplicates at most the messages in flight,
and so does a platform that accepted a message but whose answer was lost (a
read timeout, a 5xx after acceptance); see the README.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock, Timeout

from ..model import Message
from ..services.base import ServiceBase
from .clock import SteadyClock
from .holds import Holds
from .pacing import Pacers
from .retry import RetryPolicy
from .scheduler import Pass, Summary
from .shares import Share
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
    report_grace: float = 3600.0  # seconds a reported final state stays readable before it is archived
    lease: float = 60.0  # seconds a claim lasts unless extended
    leftovers_age: float = 3600.0  # a leftover of an interrupted write is removed when older than this
    archive_months: int = 12  # monthly archive files kept (0: all)

    @classmethod
    def from_settings(cls, s) -> "Tuning":
        return cls(s.pace_margin, s.expected_latency, max(1, s.drain_window), s.drain_horizon, s.sweep_interval,
                   s.result_ttl, s.report_grace, max(1.0, s.lease), archive_months=s.archive_months)


@dataclass
class Unwritten:
    """An outcome the store refused to take: written again before anything else."""

    claim: Message
    changes: dict[str, Any]
    state: str


class Drain:
    """The delivery engine of one store; ``run_pass`` is what every trigger calls."""

    def __init__(
        self,
        store: MessageStore,
        spool: Spool,
        service_for: Callable[[str], ServiceBase],
        policy: RetryPolicy,
        lock_path: Path | Sequence[Path] | None = None,
        clock: SteadyClock | None = None,
        tuning: Tuning | None = None,
        archive_folder: Path | None = None,
        pacers: Pacers | None = None,
        holds: Holds | None = None,
        share: Share | None = None,
    ):
        self.store = store
        self.spool = spool
        self.service_for = service_for
        self.policy = policy
        # The drain locks a pass takes (none: leases alone keep passes apart); one per share (``shares``)
        self.lock_paths = [] if lock_path is None else [lock_path] if isinstance(lock_path, Path) else list(lock_path)
        self.share = share or Share()  # the service instances this drain sends for (``shares``: all, by default)
        self.clock = clock or SteadyClock()
        self.tuning = tuning or Tuning()
        self.archive_folder = archive_folder
        # Pacing and holds last across passes: this process's own (embedded backend), or shared by every worker (Redis)
        self.pacers = pacers if pacers is not None else Pacers(self.tuning.margin, self.tuning.expected_latency)
        self.holds = holds if holds is not None else Holds()
        self.unwritten: list[Unwritten] = []
        self._unwritten_lock = threading.Lock()
        self._last_sweep = float("-inf")
        self.on_final: Callable[[Message], None] | None = None  # told of every final state written (callbacks)
        self.after_pass: Callable[[], dict] | None = None  # run after every pass (callback delivery)
        self.sweepers: list[Callable[[float], int]] = []  # more leftovers the sweep removes (idempotency records)

    def run_pass(self) -> dict:
        held: list[FileLock] = []
        for path in self.lock_paths:
            lock = FileLock(path)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                for taken in held:
                    taken.release()
                return Summary(busy=True).as_dict()
            held.append(lock)
        try:
            started = time.monotonic()
            if not self.write_pending():
                summary = Summary(unwritable=f"{len(self.unwritten)} outcome(s) still cannot be written to the store")
                log.error("drain pass skipped: %s", summary.unwritable)
                return summary.as_dict()
            summary = Pass(self).run()
            if self.after_pass is not None and self.share.housekeeper:
                try:
                    events = self.after_pass()
                except Exception:
                    log.exception("delivering callbacks failed")
                else:
                    if any(events.values()):
                        log.info("callbacks: %s", events)
            if self.share.housekeeper:
                self._sweep()
            if summary.claimed or summary.deferred or summary.misconfigured or summary.unwritable:
                log.info("drain pass: %s, %d deferred, %.1f s", summary.as_dict(), summary.deferred, time.monotonic() - started)
            return summary.as_dict()
        finally:
            for lock in reversed(held):
                lock.release()

    def changed(self, written: Message) -> None:
        """An outcome was written: tell ``on_final`` of a final state (never raises)."""
        if written.final and self.on_final is not None:
            try:
                self.on_final(written)
            except Exception:
                log.exception("message %s: its status event could not be stored", written.id)

    # -- outcomes the store refused ------------------------------------------------
    def keep_unwritten(self, item: Unwritten) -> None:
        with self._unwritten_lock:
            self.unwritten.append(item)

    def write_pending(self) -> bool:
        """Write the outcomes kept from earlier failures; True when none is left."""
        with self._unwritten_lock:
            pending, self.unwritten = self.unwritten, []
        left = []
        for item in pending:
            try:
                written = self.store.finish(item.claim, item.changes, self.clock.now())
            except Exception as exc:
                left.append(item)
                log.warning("outcome of message %s still not written (%s)", item.claim.id, exc)
                continue
            if written is None:
                log.warning("message %s: its lease was taken over before its outcome could be written", item.claim.id)
            else:
                log.info("message %s: outcome written late, state=%s", item.claim.id, written.state)
                self.changed(written)
        with self._unwritten_lock:
            self.unwritten = left + self.unwritten
            return not self.unwritten

    # -- housekeeping ----------------------------------------------------------------
    def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self.tuning.sweep_interval:
            return
        self._last_sweep = time.monotonic()
        try:
            self.sweep()
        except Exception:
            log.exception("sweeping expired uploads, results and leftovers failed")

    def sweep(self) -> dict[str, int]:
        """Archive what is due for the archive, delete expired uploads and leftovers, recount figures."""
        now = self.clock.now()
        trusted = self.clock.trusted()
        archived = 0
        t = self.tuning

        def due_for_archive(message: Message) -> bool:
            if message.reported_at is not None:
                return trusted - message.reported_at > t.report_grace
            return trusted - message.updated_at > t.result_ttl  # never asked for

        for message in list(self.store.final_messages()):
            if due_for_archive(message) and self.store.archive(message.id, now, if_=due_for_archive) is not None:
                self.spool.release(message.client, message.id)
                archived += 1
        live = self.store.message_ids()
        removed = self.spool.sweep(now, live, t.leftovers_age) + self.store.sweep(now, t.leftovers_age)
        removed += sum(sweep(now) for sweep in self.sweepers)
        pruned = self._prune_archive(now)
        self.store.rebuild(changed_only=True)
        if archived or removed or pruned:
            log.info("sweep: archived %d result(s), removed %d expired upload(s) or leftover(s), pruned %d archive file(s)",
                     archived, removed, pruned)
        return {"archived": archived, "removed": removed, "pruned": pruned}

    def _prune_archive(self, now: float) -> int:
        if self.archive_folder is None or self.tuning.archive_months <= 0:
            return 0
        year, month = (int(x) for x in time.strftime("%Y %m", time.gmtime(now)).split())
        oldest = year * 12 + month - 1 - (self.tuning.archive_months - 1)
        pruned = 0
        for path in self.archive_folder.glob("messages-*.jsonl"):
            try:
                y, m = path.stem.split("-")[1:3]
                index = int(y) * 12 + int(m) - 1
            except ValueError:
                continue
            if index < oldest:
                path.unlink(missing_ok=True)
                pruned += 1
        return pruned
