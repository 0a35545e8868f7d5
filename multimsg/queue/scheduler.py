"""The scheduler of one drain pass: lanes, heaps of destinations, pools, outcomes.

``Pass.run`` is a loop in one thread: it leases due messages from the store
(``claim_due``, lazily, at most ``window`` held), sorts them into one lane per
service (a bounded thread pool and a heap of destinations ordered by when each
may next receive), hands ready messages to the pools, and finishes what the
pools send back. It extends the leases of everything it holds every third of
a lease, and drops what it no longer holds; as often, it takes the messages
whose lease lapsed meanwhile (a crashed pass's: ``_next_lapsed``). The
sending threads pace themselves (``_Turns``, through ``data["pace"]``) and
write each outcome to the store right after the answer, fenced by the lease. What lasts across
passes (pacers, holds, unwritten outcomes, the sweep) lives in ``drain.Drain``.
"""

from __future__ import annotations

import heapq
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from .. import convert
from ..errors import InvalidInput, Unavailable
from ..model import Message, State
from ..services.base import Held, Outcome, OutcomeKind, ServiceBase
from .pacing import ServicePacer
from .retry import throttle_scope, transition
from .sealed import open_name

if TYPE_CHECKING:
    from .drain import Drain

__all__ = ["Pass", "Summary"]

log = logging.getLogger("multimsg.drain")

PRUNE_EVERY = 5.0  # seconds between clean-ups of idle destination buckets
IDLE_WAKE = 0.5  # the scheduler looks around at least this often


@dataclass
class Summary:
    busy: bool = False
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    misconfigured: dict[str, str] = field(default_factory=dict)
    deferred: int = 0  # left queued, untouched, for a later pass (logged, not in the JSON)
    unwritable: str | None = None  # why outcomes could not be written to the store
    lost: int = 0  # leases taken over by another pass (logged, not in the JSON)

    def as_dict(self) -> dict:
        extra = {"unwritable": self.unwritable} if self.unwritable else {}
        return {**extra,
            "busy": self.busy,
            "claimed": self.claimed,
            "delivered": self.delivered,
            "retried": self.retried,
            "failed": self.failed,
            "misconfigured": self.misconfigured,
        }



@dataclass
class _Done:
    lane: "_Lane"
    record: Message
    outcome: Outcome
    state: str  # the state written, or UNWRITTEN / LOST


UNWRITTEN = "unwritten"  # the store refused the outcome: kept by the drain, written later
LOST = "lost"  # the lease was taken over: nothing written


class _Lane:
    """One service within a pass: its pool, its waiting messages, its ready destinations."""

    def __init__(self, serv: str, service: ServiceBase | None, pacer: ServicePacer | None, hold: str | None, probing: bool):
        self.serv = serv
        self.service = service
        self.pacer = pacer
        self.hold = hold  # why the service is on hold, or None
        self.size = pacer.concurrency if pacer else 1
        # A service coming off hold gets one message at a time until one is delivered.
        self.concurrency = 1 if probing else self.size
        self.pool: ThreadPoolExecutor | None = None
        self.inflight = 0
        self.waiting: dict[str, list[tuple[float, str, Message]]] = {}  # dest -> heap of (created_at, id, message)
        self.ready: list[tuple[float, int, int, str]] = []  # heap of (ready_at, rank, seq, dest); rank 0: taken back
        self.scheduled: set[str] = set()  # dests in ``ready``
        self.busy: set[str] = set()  # dests with a message in flight
        self.expired: list[Message] = []  # to be failed without sending

    def submit(self, fn, *args) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.size, thread_name_prefix=f"drain-{self.serv}")
        self.inflight += 1
        self.pool.submit(fn, *args)

    def queued_for(self, dest: str) -> int:
        return len(self.waiting.get(dest, ())) + (dest in self.busy)


class Pass:
    """The state of one pass; ``run`` is its scheduler loop (one thread) over the lanes' pools."""

    def __init__(self, drain: "Drain"):
        self.drain = drain
        self.store = drain.store
        self.tuning = drain.tuning
        self.policy = drain.policy
        self.clock = drain.clock
        self.holds = drain.holds
        self.share = drain.share
        self.summary = Summary()
        self.held: dict[str, Message] = {}  # id -> our claim, for every message this pass holds
        self.extended_at = time.monotonic()
        self.lanes: dict[str, _Lane] = {}
        self.done: queue.Queue[_Done] = queue.Queue()
        self.pending = 0  # claimed and not yet finished
        self.seq = 0
        self.pruned_at = time.monotonic()
        self.lapsed: Iterator[Message] | None = None  # the current scan for lapsed leases (``_next_lapsed``)
        self.rescan_at = time.monotonic() + self.tuning.lease / 3
        self.summary.misconfigured.update(self.holds.held())  # reported by every pass until it works again

    # -- the loop ---------------------------------------------------------------
    def run(self) -> Summary:
        stream = self.store.claim_due(self.clock.now(), self.tuning.lease, self._accept, clock=self.clock.now)
        exhausted = stopped = False
        try:
            while True:
                self._collect(0)
                self._extend()  # first: after a stall, what another pass took over meanwhile is not sent again
                self._dispatch()
                if self.drain.unwritten and not self.drain.write_pending():
                    # The store refuses writes: take no new work until it takes them again.
                    self.summary.unwritable = f"{len(self.drain.unwritten)} outcome(s) not yet written to the store"
                    stopped = True
                if not stopped and self.pending < self.tuning.window:
                    record, taken_back = self._next_lapsed(), True
                    if record is None and not exhausted:
                        taken_back = False
                        try:
                            record = next(stream)
                        except StopIteration:
                            exhausted = True
                    if record is not None:
                        self._take(record, taken_back)
                        continue
                if (exhausted or stopped) and self.pending == 0:
                    break
                self._collect(self._next_wake())
                self._prune()
        finally:
            for scan in (stream, self.lapsed):
                getattr(scan, "close", lambda: None)()  # a generator's close ends the scan; the contract is any Iterator
            for lane in self.lanes.values():
                if lane.pool is not None:
                    lane.pool.shutdown(wait=True)  # in-flight sends finish and write their outcomes
            self._collect(0)
            if self.drain.unwritten and not self.drain.write_pending():
                self.summary.unwritable = f"{len(self.drain.unwritten)} outcome(s) not yet written to the store"
        return self.summary

    def _next_lapsed(self) -> Message | None:
        """A message whose lease lapsed while this pass runs (its pass crashed), leased to this one; or None.

        The main scan leases what was due when the pass began, so without
        this a crashed pass's messages would wait for a pass begun after their
        lease lapsed: behind a backlog, a long wait. Every third of a lease
        the pass looks for lapsed leases (``claim_due(lapsed_only=True)``,
        which skips the rest of the backlog where the backend can) and takes
        them before anything else, and sends them first (they waited a lease already).
        """
        if self.lapsed is None:
            if time.monotonic() < self.rescan_at:
                return None
            self.rescan_at = time.monotonic() + self.tuning.lease / 3
            self.lapsed = self.store.claim_due(self.clock.now(), self.tuning.lease, self._accept_lapsed, lapsed_only=True,
                                              clock=self.clock.now)
        try:
            return next(self.lapsed)
        except StopIteration:
            self.lapsed = None
            return None

    def _extend(self, force: bool = False) -> None:
        """Extend the lease of every message the pass holds; forget those it no longer holds."""
        if not self.held or (not force and time.monotonic() - self.extended_at < self.tuning.lease / 3):
            return
        self.extended_at = time.monotonic()
        claims = list(self.held.values())
        try:
            held = self.store.extend(claims, self.clock.now() + self.tuning.lease)
        except Exception:
            log.exception("could not extend the leases of %d message(s)", len(claims))
            return
        lost = {claim.id for claim, ok in zip(claims, held) if not ok}
        if not lost:
            return
        log.warning("%d lease(s) were taken over by another pass; those messages are left to it", len(lost))
        for lane in self.lanes.values():
            for dest in list(lane.waiting):
                kept = [entry for entry in lane.waiting[dest] if entry[1] not in lost]
                dropped = len(lane.waiting[dest]) - len(kept)
                if dropped:
                    heapq.heapify(kept)
                    self.pending -= dropped
                    self.summary.lost += dropped
                    if kept:
                        lane.waiting[dest] = kept
                    else:
                        del lane.waiting[dest]
            for record in [r for r in lane.expired if r.id in lost]:
                lane.expired.remove(record)
                self.pending -= 1
        for message_id in lost:
            self.held.pop(message_id, None)

    def _next_wake(self) -> float:
        now = time.monotonic()
        wake = now + IDLE_WAKE
        for lane in self.lanes.values():
            if lane.ready and lane.inflight < lane.concurrency and not lane.hold:
                wake = min(wake, lane.ready[0][0])
        return max(0.0, wake - now)

    def _collect(self, timeout: float) -> None:
        try:
            item = self.done.get(timeout=timeout) if timeout > 0 else self.done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._finish(item)
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return

    # -- intake -----------------------------------------------------------------
    def _accept(self, record: Message) -> bool:
        """Whether to lease this due message now (asked once per message, before leasing)."""
        serv = record.serv
        if not self.share.serves(serv):
            return False  # another drain process sends for this instance
        if self.policy.expired(record.created_at, self.clock.trusted()):
            return True  # to be failed as expired, whatever the service's state
        lane = self._lane(serv)
        if lane.hold or lane.pacer is None:
            self.summary.misconfigured[serv] = lane.hold or "no pacer"
            self.summary.deferred += 1
            return False
        if lane.pacer.held_for(record.dest) > self.tuning.horizon:
            self.summary.deferred += 1  # the platform told us to wait longer than a pass goes on
            return False
        cap = self._dest_cap(lane, record.dest)
        if cap is not None and lane.queued_for(record.dest) >= cap:
            self.summary.deferred += 1
            return False
        return True

    def _accept_lapsed(self, record: Message) -> bool:
        return record.id not in self.held and self._accept(record)  # never one of our own, whose lease we extend

    def _dest_cap(self, lane: _Lane, dest: str) -> int | None:
        interval = lane.pacer.dest_interval(dest) if lane.pacer else 0.0
        return max(1, int(self.tuning.horizon / interval)) if interval > 0 else None

    def _lane(self, serv: str) -> _Lane:
        lane = self.lanes.get(serv)
        if lane is not None:
            return lane
        hold = self.holds.reason(serv)
        probing = self.holds.probing(serv)
        service: ServiceBase | None
        pacer: ServicePacer | None
        try:
            service = self.drain.service_for(serv)
        except Exception as exc:
            service, pacer, hold = None, None, f"unknown service {serv!r} ({exc})"
        else:
            pacer = self.drain.pacers.get(serv, service)
            if hold is None and not service.configured():
                hold = f"{service.name} is not configured (set {', '.join(service.missing_credentials())})"
                self.holds.hold(serv, hold)
        lane = self.lanes[serv] = _Lane(serv, service, pacer, hold, probing)
        if hold:
            self.summary.misconfigured[serv] = hold
        return lane

    def _take(self, record: Message, taken_back: bool = False) -> None:
        if record.id in self.held:
            return  # leased again by the look for lapsed leases, the newer lease, which is the one held
        if not self._still_leased(record):
            return
        if taken_back:
            log.info("message %s: taken back, its lease lapsed (the pass that held it stopped)", record.id)
        self.summary.claimed += 1
        self.pending += 1
        self.held[record.id] = record
        lane = self._lane(record.serv)
        if self.policy.expired(record.created_at, self.clock.trusted()):
            lane.expired.append(record)
        elif lane.hold:
            self._defer(record)
        else:
            heapq.heappush(lane.waiting.setdefault(record.dest, []), (record.created_at, record.id, record))
            self._schedule(lane, record.dest, first=taken_back)

    def _still_leased(self, record: Message) -> bool:
        """Whether a lease the scan took a while ago is still ours, extended now; a store leases a batch at once,
        and the pass takes them one by one, so the last of a batch may have waited longer than a lease."""
        until = self.clock.now() + self.tuning.lease
        if record.claim_until is None or until - record.claim_until < self.tuning.lease / 3:
            return True  # fresh
        try:
            [held] = self.store.extend([record], until)
        except Exception:
            return True  # extended with the others, or found lost, at the next round
        if not held:
            self.summary.lost += 1
            log.info("message %s: its lease lapsed before the pass took it, and another pass has it", record.id)
        return held

    def _defer(self, record: Message) -> None:
        """Give a leased message back to the queue as it is, for a later pass."""
        self.pending -= 1
        self.summary.deferred += 1
        self.held.pop(record.id, None)
        try:
            self.store.finish(record, {}, self.clock.now())
        except Exception:
            log.warning("message %s: could not give its lease back; it is taken again when the lease lapses", record.id)

    def _schedule(self, lane: _Lane, dest: str, first: bool = False) -> None:
        """Put ``dest`` among the ready ones, at the time its pacer allows; ``first``: before others ready then."""
        if dest in lane.busy or dest in lane.scheduled or not lane.waiting.get(dest):
            return
        self.seq += 1
        heapq.heappush(lane.ready, (lane.pacer.ready_at(dest), 0 if first else 1, self.seq, dest))
        lane.scheduled.add(dest)

    # -- dispatch ---------------------------------------------------------------
    def _dispatch(self) -> None:
        now = time.monotonic()
        for lane in self.lanes.values():
            while lane.inflight < lane.concurrency:
                if lane.expired:
                    lane.submit(self._expire, lane, lane.expired.pop())
                    continue
                if lane.hold or not lane.ready or lane.ready[0][0] > now:
                    break
                dest = heapq.heappop(lane.ready)[-1]
                lane.scheduled.discard(dest)
                if lane.pacer.held_for(dest) > self.tuning.horizon:
                    self._set_aside(lane, lane.waiting.pop(dest))  # held by the platform beyond this pass
                    continue
                if not lane.waiting.get(dest):
                    continue  # its messages were taken over by another pass (``_extend``)
                _, _, record = heapq.heappop(lane.waiting[dest])
                if not lane.waiting[dest]:
                    del lane.waiting[dest]
                lane.busy.add(dest)
                lane.submit(self._send, lane, record)

    def _put_on_hold(self, lane: _Lane, reason: str) -> None:
        """The service refused our credentials: everything of it still waiting stays queued."""
        lane.hold = reason
        self.summary.misconfigured[lane.serv] = reason
        self.holds.hold(lane.serv, reason)
        for heap in lane.waiting.values():
            self._set_aside(lane, heap)
        lane.waiting.clear()
        lane.ready.clear()
        lane.scheduled.clear()

    def _set_aside(self, lane: _Lane, heap: list[tuple[float, str, Message]]) -> None:
        """Leave these waiting messages queued for a later pass (failing those that expired)."""
        for _, _, record in heap:
            if self.policy.expired(record.created_at, self.clock.trusted()):
                lane.expired.append(record)
            else:
                self._defer(record)

    # -- in the lanes' threads ----------------------------------------------------
    def _expired(self, record: Message) -> Outcome:
        return Outcome.failed(f"expired: not delivered within {self.policy.validity:g} s ({record.last_error or 'never tried'})")

    def _expire(self, lane: _Lane, record: Message) -> None:
        self._record(lane, record, self._expired(record), attempted=False)

    def _send(self, lane: _Lane, record: Message) -> None:
        outcome, attempted = Outcome.retry("the drain stopped before the send was tried"), False
        try:
            if self.policy.expired(record.created_at, self.clock.trusted()):
                outcome = self._expired(record)
            else:
                attempted = True
                outcome = self._attempt(lane, record)
        except Exception as exc:
            log.exception("sending message %s with %s raised", record.id, lane.serv)
            outcome = Outcome.retry(f"internal error while sending ({type(exc).__name__})")
        finally:
            self._record(lane, record, outcome, attempted)

    def _attempt(self, lane: _Lane, record: Message) -> Outcome:
        service, pacer, dest = lane.service, lane.pacer, record.dest
        assert service is not None and pacer is not None  # a lane without them is on hold
        if not service.configured():
            return Outcome.misconfigured(f"{service.name} is not configured (set {', '.join(service.missing_credentials())})")
        try:
            content = self.drain.spool.message_content(record.client, record.id)
            opened = record.with_changes(filename=open_name(content, record.filename))  # sealed at rest (queue/sealed.py)
            content, filename = convert.for_send(opened, content, service)  # converted when the message asks for it
        except FileNotFoundError:
            return Outcome.failed("the message's content is gone from the spool")
        except convert.ConversionError as exc:
            return exc.outcome
        except InvalidInput as exc:
            return Outcome.failed(exc.reason)
        except Unavailable as exc:  # the shared store or the blob store is down: the server's fault, not the message's
            return Outcome.retry(f"{lane.serv}: {exc.reason}")
        turns = _Turns(pacer, dest, patience=self.tuning.horizon)
        data = {
            "id": record.id,
            "content": content,
            "dest": dest,
            "type": record.type,
            "filename": filename,
            "options": dict(record.options),
            "platform_ids": list(record.platform_ids),
            "pace": turns,
        }
        try:
            outcome = service.send(data)
        except Held as held:  # nothing was sent: a platform's hold outlasts this pass
            return Outcome.retry(f"{lane.serv}: rate-limited by the platform for {held.seconds:.0f} s more", retry_after=held.seconds)
        except FileNotFoundError:
            outcome = Outcome.failed("the message's content is gone from the spool")
        except InvalidInput as exc:
            outcome = Outcome.failed(f"{lane.serv}: {exc}")
        except Unavailable as exc:  # the content could not be read on (a blob store that went down mid-read)
            outcome = Outcome.retry(f"{lane.serv}: {exc.reason}")
        finally:
            convert.release(content)
        if turns.requests:
            pacer.answered(dest)
        scope = throttle_scope(outcome)
        if scope:
            pacer.throttled(scope, dest, outcome.retry_after)
            log.warning("%s says too fast (%s, retry_after=%s): slowing down", lane.serv, outcome.reason, outcome.retry_after)
        elif outcome.kind == OutcomeKind.DELIVERED:
            pacer.delivered()
        return outcome

    def _record(self, lane: _Lane, record: Message, outcome: Outcome, attempted: bool = True) -> None:
        """Write the outcome durably (fenced by the lease), then tell the scheduler, whatever happens."""
        state, changes = UNWRITTEN, {}
        try:
            changes = transition(record, outcome, self.policy, self.clock.now(), attempted)
            state = str(changes.get("state", State.QUEUED))
            written = self.store.finish(record, changes, self.clock.now())
            if written is None:
                state = LOST
                log.warning("message %s: its lease was taken over by another pass; outcome %s not written", record.id, outcome.kind)
            else:
                self.drain.changed(written)
        except Exception as exc:
            if not changes:  # the record itself made the outcome unwritable: fail it, with the reason
                changes = {"state": State.FAILED, "last_error": f"internal error recording the outcome ({type(exc).__name__})",
                           "updated_at": self.clock.now()}
            from .drain import Unwritten

            log.error("could not write the outcome of message %s (%s: %s); kept, written again before new work",
                      record.id, outcome.kind, exc)
            self.drain.keep_unwritten(Unwritten(record, changes, str(changes.get("state", State.QUEUED))))
            state = UNWRITTEN
        finally:
            self.done.put(_Done(lane, record, outcome, state))
        log.info(
            "message %s serv=%s outcome=%s state=%s attempts=%s reason=%s",
            record.id, lane.serv, outcome.kind, state, changes.get("attempts", record.attempts), outcome.reason or "-",
        )

    # -- back in the scheduler ----------------------------------------------------
    def _finish(self, done: _Done) -> None:
        lane, record = done.lane, done.record
        lane.inflight -= 1
        self.pending -= 1
        self.held.pop(record.id, None)
        lane.busy.discard(record.dest)
        if done.state in (UNWRITTEN, LOST):
            self.summary.lost += done.state == LOST
        elif done.state == State.DELIVERED:
            self.summary.delivered += 1
            if lane.hold is None and lane.concurrency < lane.size:
                lane.concurrency = lane.size
                self.holds.release(lane.serv)
        elif done.state == State.FAILED:
            self.summary.failed += 1
        elif done.outcome.kind == OutcomeKind.MISCONFIGURED:
            if lane.hold is None:
                self._put_on_hold(lane, done.outcome.reason)
        else:
            self.summary.retried += 1
        if lane.hold is None:
            self._schedule(lane, record.dest)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self.pruned_at < PRUNE_EVERY:
            return
        self.pruned_at = now
        for lane in self.lanes.values():
            if lane.pacer is not None:
                lane.pacer.forget_idle(lane.busy | lane.scheduled)


class _Turns:
    """The ``pace`` a service calls right before each message-sending request.

    Every part gets the same patience: a platform hold longer than the
    horizon raises ``Held`` before a later part as before the first, and the
    service returns a retry carrying the parts already delivered.
    """

    def __init__(self, pacer: ServicePacer, dest: str, patience: float):
        self.pacer = pacer
        self.dest = dest
        self.patience = patience
        self.requests = 0

    def __call__(self) -> None:
        if self.requests:
            self.pacer.answered(self.dest)  # the previous part was just answered
        self.pacer.wait_turn(self.dest, self.patience)  # may raise Held
        self.requests += 1
