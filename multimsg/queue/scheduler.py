"""The scheduler of one drain pass: lanes, heaps of destinations, pools, outcomes.

``Pass.run`` is a loop in one thread: it takes claimed records from the store
(``claim_due``, lazily, at most ``window`` held), sorts them into one lane per
service (a bounded thread pool and a heap of destinations ordered by when each
may next receive), hands ready messages to the pools, and finishes what the
pools send back. The sending threads pace themselves (``_Turns``, through
``data["pace"]``) and write each outcome to the store right after the answer.
What lasts across passes (pacers, holds, the sweep) lives in ``drain.Drain``.
"""

from __future__ import annotations

import heapq
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from ..ids import new_id
from ..services.base import DELIVERED, MISCONFIGURED, Outcome, ServiceBase
from . import states
from .pacing import Held, ServicePacer
from .retry import throttle_scope, transition

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

    def as_dict(self) -> dict:
        return {
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
    record: dict
    outcome: Outcome
    state: str


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
        self.waiting: dict[str, list[tuple[float, str, dict]]] = {}  # dest -> heap of (created_at, id, record)
        self.ready: list[tuple[float, int, str]] = []  # heap of (ready_at, seq, dest)
        self.scheduled: set[str] = set()  # dests in ``ready``
        self.busy: set[str] = set()  # dests with a message in flight
        self.expired: list[dict] = []  # to be failed without sending

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
        self.tuning = drain.tuning
        self.policy = drain.policy
        self.claim = new_id()
        self.summary = Summary()
        self.lanes: dict[str, _Lane] = {}
        self.done: queue.Queue[_Done] = queue.Queue()
        self.pending = 0  # claimed and not yet finished
        self.seq = 0
        self.pruned_at = time.monotonic()
        for serv in list(drain._on_hold):  # a service on hold is reported by every pass until it works again
            reason = drain.hold_reason(serv)
            if reason:
                self.summary.misconfigured[serv] = reason

    # -- the loop ---------------------------------------------------------------
    def run(self) -> Summary:
        stream = self.drain.store.claim_due(self.drain.clock(), self.claim, self._accept)
        exhausted = False
        try:
            while True:
                self._collect(0)
                self._dispatch()
                if not exhausted and self.pending < self.tuning.window:
                    try:
                        record = next(stream)
                    except StopIteration:
                        exhausted = True
                    else:
                        self._take(record)
                        continue
                if exhausted and self.pending == 0:
                    break
                self._collect(self._next_wake())
                self._prune()
        finally:
            getattr(stream, "close", lambda: None)()  # a generator's close ends the scan; the contract is any Iterator
            for lane in self.lanes.values():
                if lane.pool is not None:
                    lane.pool.shutdown(wait=True)  # in-flight sends finish and write their outcomes
            self._collect(0)
        return self.summary

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
    def _accept(self, record: dict) -> bool:
        """Whether to claim this due record now (asked once per record, before claiming)."""
        serv = record.get("serv", "")
        if self.policy.expired(record["created_at"], self.drain.clock()):
            return True  # to be failed as expired, whatever the service's state
        lane = self._lane(serv)
        if lane.hold:
            self.summary.misconfigured[serv] = lane.hold
            self.summary.deferred += 1
            return False
        if lane.pacer.held_for(record["dest"]) > self.tuning.horizon:
            self.summary.deferred += 1  # the platform told us to wait longer than a pass goes on
            return False
        cap = self._dest_cap(lane, record["dest"])
        if cap is not None and lane.queued_for(record["dest"]) >= cap:
            self.summary.deferred += 1
            return False
        return True

    def _dest_cap(self, lane: _Lane, dest: str) -> int | None:
        interval = lane.pacer.dest_interval(dest) if lane.pacer else 0.0
        return max(1, int(self.tuning.horizon / interval)) if interval > 0 else None

    def _lane(self, serv: str) -> _Lane:
        lane = self.lanes.get(serv)
        if lane is not None:
            return lane
        hold = self.drain.hold_reason(serv)
        probing = serv in self.drain._on_hold
        try:
            service = self.drain.service_for(serv)
        except Exception as exc:
            service, pacer, hold = None, None, f"unknown service {serv!r} ({exc})"
        else:
            pacer = self.drain.pacer(serv, service)
            if hold is None and not service.configured():
                hold = f"{service.name} is not configured (set {', '.join(service.missing_credentials())})"
                self.drain.put_on_hold(serv, hold)
        lane = self.lanes[serv] = _Lane(serv, service, pacer, hold, probing)
        if hold:
            self.summary.misconfigured[serv] = hold
        return lane

    def _take(self, record: dict) -> None:
        self.summary.claimed += 1
        self.pending += 1
        lane = self._lane(record["serv"])
        if self.policy.expired(record["created_at"], self.drain.clock()):
            lane.expired.append(record)
        elif lane.hold:
            self._defer(record)
        else:
            heapq.heappush(lane.waiting.setdefault(record["dest"], []), (record["created_at"], record["id"], record))
            self._schedule(lane, record["dest"])

    def _defer(self, record: dict) -> None:
        """Leave a claimed record queued as it is (the next pass takes the claim back)."""
        self.pending -= 1
        self.summary.deferred += 1

    def _schedule(self, lane: _Lane, dest: str) -> None:
        if dest in lane.busy or dest in lane.scheduled or not lane.waiting.get(dest):
            return
        self.seq += 1
        heapq.heappush(lane.ready, (lane.pacer.ready_at(dest), self.seq, dest))
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
                _, _, dest = heapq.heappop(lane.ready)
                lane.scheduled.discard(dest)
                if lane.pacer.held_for(dest) > self.tuning.horizon:
                    self._set_aside(lane, lane.waiting.pop(dest))  # held by the platform beyond this pass
                    continue
                _, _, record = heapq.heappop(lane.waiting[dest])
                if not lane.waiting[dest]:
                    del lane.waiting[dest]
                lane.busy.add(dest)
                lane.submit(self._send, lane, record)

    def _put_on_hold(self, lane: _Lane, reason: str) -> None:
        """The service refused our credentials: everything of it still waiting stays queued."""
        lane.hold = reason
        self.summary.misconfigured[lane.serv] = reason
        self.drain.put_on_hold(lane.serv, reason)
        for heap in lane.waiting.values():
            self._set_aside(lane, heap)
        lane.waiting.clear()
        lane.ready.clear()
        lane.scheduled.clear()

    def _set_aside(self, lane: _Lane, heap: list[tuple[float, str, dict]]) -> None:
        """Leave these waiting messages queued for a later pass (failing those that expired)."""
        for _, _, record in heap:
            if self.policy.expired(record["created_at"], self.drain.clock()):
                lane.expired.append(record)
            else:
                self._defer(record)

    # -- in the lanes' threads ----------------------------------------------------
    def _expired(self, record: dict) -> Outcome:
        return Outcome.failed(f"expired: not delivered within {self.policy.validity:g} s ({record.get('last_error') or 'never tried'})")

    def _expire(self, lane: _Lane, record: dict) -> None:
        self._record(lane, record, self._expired(record), attempted=False)

    def _send(self, lane: _Lane, record: dict) -> None:
        outcome, attempted = Outcome.retry("the drain stopped before the send was tried"), False
        try:
            if self.policy.expired(record["created_at"], self.drain.clock()):
                outcome = self._expired(record)
            else:
                attempted = True
                outcome = self._attempt(lane, record)
        except Exception as exc:
            log.exception("sending message %s with %s raised", record["id"], lane.serv)
            outcome = Outcome.retry(f"internal error while sending ({type(exc).__name__})")
        finally:
            self._record(lane, record, outcome, attempted)

    def _attempt(self, lane: _Lane, record: dict) -> Outcome:
        service, pacer, dest = lane.service, lane.pacer, record["dest"]
        if not service.configured():
            return Outcome.misconfigured(f"{service.name} is not configured (set {', '.join(service.missing_credentials())})")
        path = self.drain.spool.message_path(record["client"], record["id"])
        if not path.exists():
            return Outcome.failed("the message's content is gone from the spool")
        turns = _Turns(pacer, dest, prepaid=lane.serv not in self.drain._hooked, patience=self.tuning.horizon)
        data = {
            "id": record["id"],
            "dir": str(path.parent),
            "path": path,
            "dest": dest,
            "type": record["type"],
            "state": record["state"],
            "filename": record.get("filename"),
            "options": record.get("options", {}),
            "platform_ids": record.get("platform_ids", []),
            "pace": turns,
        }
        try:
            if turns.prepaid:
                # Until the service is seen pacing itself, take its first slot for it.
                pacer.wait_turn(dest, self.tuning.horizon)
            outcome = service.send(data)
        except Held as held:  # nothing was sent: a platform's hold outlasts this pass
            return Outcome.retry(f"{lane.serv}: rate-limited by the platform for {held.seconds:.0f} s more", retry_after=held.seconds)
        except FileNotFoundError:
            outcome = Outcome.failed("the message's content is gone from the spool")
        except InvalidInput as exc:
            outcome = Outcome.failed(f"{lane.serv}: {exc}")
        if turns.calls:
            self.drain._hooked.add(lane.serv)
        if turns.requests:
            pacer.answered(dest)
        scope = throttle_scope(outcome)
        if scope:
            pacer.throttled(scope, dest, outcome.retry_after)
            log.warning("%s says too fast (%s, retry_after=%s): slowing down", lane.serv, outcome.reason, outcome.retry_after)
        elif outcome.kind == DELIVERED:
            pacer.delivered()
        return outcome

    def _record(self, lane: _Lane, record: dict, outcome: Outcome, attempted: bool = True) -> None:
        """Write the outcome durably, then tell the scheduler (whatever happens)."""
        changes = transition(record, outcome, self.policy, self.drain.clock(), attempted)
        state = changes.get("state", states.QUEUED)
        try:
            self.drain.store.update(record["id"], changes)
        except Exception:
            # The record keeps its claim and state: the next pass sends it again.
            log.exception("could not record the outcome of message %s (%s); it stays queued", record["id"], outcome.kind)
        finally:
            self.done.put(_Done(lane, record, outcome, state))
        log.info(
            "message %s serv=%s outcome=%s state=%s attempts=%s reason=%s",
            record["id"], lane.serv, outcome.kind, state, changes.get("attempts", record["attempts"]), outcome.reason or "-",
        )

    # -- back in the scheduler ----------------------------------------------------
    def _finish(self, done: _Done) -> None:
        lane, record = done.lane, done.record
        lane.inflight -= 1
        self.pending -= 1
        lane.busy.discard(record["dest"])
        if done.state == states.DELIVERED:
            self.summary.delivered += 1
            if lane.hold is None and lane.concurrency < lane.size:
                lane.concurrency = lane.size
                self.drain.release_hold(lane.serv)
        elif done.state == states.FAILED:
            self.summary.failed += 1
        elif done.outcome.kind == MISCONFIGURED:
            if lane.hold is None:
                self._put_on_hold(lane, done.outcome.reason)
        else:
            self.summary.retried += 1
        if lane.hold is None:
            self._schedule(lane, record["dest"])

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

    ``prepaid``: the drain already waited for the first slot (for a service
    not yet seen calling ``pace``), so the first call returns at once.
    """

    def __init__(self, pacer: ServicePacer, dest: str, prepaid: bool, patience: float):
        self.pacer = pacer
        self.dest = dest
        self.prepaid = prepaid
        self.patience = patience
        self.calls = 0
        self.requests = 1 if prepaid else 0

    def __call__(self) -> None:
        self.calls += 1
        if self.prepaid:
            self.prepaid = False
            return
        if self.requests:
            self.pacer.answered(self.dest)  # the previous part was just answered
            self.pacer.wait_turn(self.dest)  # a later part waits as long as it takes: parts go in order
        else:
            self.pacer.wait_turn(self.dest, self.patience)  # may raise Held: nothing of this message sent yet
        self.requests += 1
