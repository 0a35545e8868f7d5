"""The drain's pacing and holds shared by every worker through Redis (the Redis backend's peers of ``pacing`` and ``holds``).

A platform's limit is one limit however many workers send: with the Redis
backend each service and each destination has one GCRA bucket in Redis, on
Redis's clock (``TIME`` inside the scripts), so no worker's clock matters::

    mm:{T}:pace:<serv>          hash: tat, hold (ms, Redis clock), slow (the spacing's slowdown factor)
    mm:{T}:pace:<serv>:<dest>   hash: tat, hold; expires once it constrains nothing
    mm:{T}:holds                hash: service -> [until (Unix time), reason] (misconfigured services)

``TURN`` is one script for one send: if the destination is not free (its
previous send not yet answered plus its interval, or a platform hold), nothing
is charged and the caller is told how long to wait; otherwise it reserves the
service's next slot (``max(now, tat, hold)``; ``tat`` moves one interval on)
and marks the destination busy, and the caller sleeps until the slot. So
sends stay evenly spaced ``1 / (rate * MULTIMSG_PACE_MARGIN)`` apart across
all workers, never in bursts. A ``retry_after`` answered to any worker sets
the bucket's ``hold``: every worker's next reservation starts after it, and a
worker that reserved a slot before the hold came looks again before it sends.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Callable

from ...services.base import Held, ServiceBase, Throttle
from ..holds import Holds
from ..pacing import DEFAULT_HOLD, RECOVERY_STEP, SLOWDOWN_MAX, SLOWDOWN_STEP, Pacers, ServicePacer
from .redis import guarded
from .redis_scripts import Keys

__all__ = ["RedisPacers", "RedisServicePacer", "RedisHolds", "TURN"]

log = logging.getLogger("multimsg.drain")

DEST_BUSY = 30_000.0  # ms a destination stays reserved for a send not yet answered (a worker that died frees it then)
LATE = 0.5  # a slot woken up later than this many intervals is given up, so late wake-ups never make a burst
SERVICE_TTL = 3_600_000  # ms an idle service bucket is kept

_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000\n"

# KEYS: service hash, destination hash. ARGV: service interval (ms), destination interval (ms), patience (ms),
# "1" when the caller reserved this destination itself and asks again (a hold came in while it slept).
# Returns {status, wait ms, held ms, slowdown, slot}: status 1 = slot reserved (sleep `wait`), 0 = destination
# not free (nothing charged; wait and ask again), 2 = held longer than the patience (nothing charged).
TURN = _NOW + """
local s = redis.call('HMGET', KEYS[1], 'tat', 'hold', 'slow')
local d = redis.call('HMGET', KEYS[2], 'tat', 'hold')
local stat, shold, slow = tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '1')
local dtat, dhold = tonumber(d[1] or '0'), tonumber(d[2] or '0')
local held = math.max(shold, dhold) - now
if held > tonumber(ARGV[3]) then return {2, '0', tostring(held), tostring(slow), '0'} end
local ready = dhold
if ARGV[4] ~= '1' then ready = math.max(dtat, dhold) end
if ready > now then return {0, tostring(ready - now), tostring(held), tostring(slow), '0'} end
local slot = math.max(now, stat, shold)
redis.call('HSET', KEYS[1], 'tat', string.format('%.3f', slot + tonumber(ARGV[1]) * slow))
redis.call('PEXPIRE', KEYS[1], """ + str(SERVICE_TTL) + """)
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[2], 'tat', string.format('%.3f', slot + tonumber(ARGV[2]) + """ + str(DEST_BUSY) + """))
  redis.call('PEXPIRE', KEYS[2], math.ceil(slot - now + tonumber(ARGV[2]) + """ + str(DEST_BUSY) + """))
end
return {1, tostring(slot - now), tostring(held), tostring(slow), string.format('%.3f', slot)}
"""

# KEYS: destination hash. ARGV: interval (ms). The destination's previous send was answered: next one a full interval on.
ANSWERED = _NOW + """
local tat = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'tat', string.format('%.3f', tat))
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tat, hold) - now) + 1000)
return 1
"""

# KEYS: a bucket's hash. ARGV: hold (ms), slowdown step (1: none), slowdown max, ttl floor (ms). Returns the new slowdown.
HOLD = _NOW + """
local hold_until = now + tonumber(ARGV[1])
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
if hold_until > hold then redis.call('HSET', KEYS[1], 'hold', string.format('%.3f', hold_until)) else hold_until = hold end
local slow = tonumber(redis.call('HGET', KEYS[1], 'slow') or '1')
slow = math.min(tonumber(ARGV[3]), slow * tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'slow', tostring(slow))
local ttl = redis.call('PTTL', KEYS[1])
local need = math.max(math.ceil(hold_until - now) + 1000, tonumber(ARGV[4]))
if ttl < need then redis.call('PEXPIRE', KEYS[1], need) end
return tostring(slow)
"""

# KEYS: service hash, destination hash. Returns {ms the service is held, ms the destination is held} from now.
HELD = _NOW + """
local shold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
local dhold = tonumber(redis.call('HGET', KEYS[2], 'hold') or '0')
return {tostring(shold - now), tostring(dhold - now)}
"""

# KEYS: service hash. ARGV: recovery step. Narrows the spacing back after a delivery.
RECOVER = """
local slow = tonumber(redis.call('HGET', KEYS[1], 'slow') or '1')
if slow > 1 then slow = math.max(1, slow - tonumber(ARGV[1])); redis.call('HSET', KEYS[1], 'slow', tostring(slow)) end
return tostring(slow)
"""


class _Scripts:
    def __init__(self, client):
        self.turn = client.register_script(TURN)
        self.answered = client.register_script(ANSWERED)
        self.hold = client.register_script(HOLD)
        self.held = client.register_script(HELD)
        self.recover = client.register_script(RECOVER)


class RedisServicePacer(ServicePacer):
    """A ``ServicePacer`` whose buckets (service and destinations) are shared by every worker through Redis.

    The local destination buckets of the parent class still order this
    process's own destinations (``ready_at``); who may send when is decided
    by the shared buckets in ``wait_turn``.
    """

    def __init__(self, service: ServiceBase, client, keys: Keys, scripts: _Scripts, *, margin: float = 0.92,
                 expected_latency: float = 0.25, sleep: Callable[[float], None] = time.sleep):
        super().__init__(service, margin=margin, expected_latency=expected_latency, sleep=sleep)
        self.r = client
        self.scripts = scripts
        self.prefix = f"{keys.base}pace:{service.name}"
        self._slowdown = 1.0

    def _key(self, dest: str | None = None) -> str:
        return self.prefix if dest is None else f"{self.prefix}:{dest}"

    @property
    def _interval_ms(self) -> float:
        return 1000.0 / self.rate if self.rate else 0.0

    @guarded
    def held_for(self, dest: str | None = None) -> float:
        service_ms, dest_ms = self.scripts.held(keys=[self._key(), self._key(dest if dest is not None else "")])
        return max(0.0, float(service_ms), float(dest_ms) if dest is not None else 0.0) / 1000.0

    @guarded
    def wait_turn(self, dest: str, patience: float = math.inf) -> None:
        patience_ms = repr(patience * 1000.0) if math.isfinite(patience) else "1e18"
        keys = [self._key(), self._key(dest)]
        again = "0"
        while True:
            status, wait, held, slowdown, slot = self.scripts.turn(
                keys=keys, args=[repr(self._interval_ms), repr(self.dest_interval(dest) * 1000.0), patience_ms, again])
            self._slowdown = float(slowdown)
            if int(status) == 2:
                raise Held(float(held) / 1000.0)
            target = self.clock() + float(wait) / 1000.0
            if float(wait) > 0:
                self.sleep(float(wait) / 1000.0)
            if int(status) == 0:
                continue
            if self._interval_ms and (self.clock() - target) * 1000.0 > self._interval_ms * LATE:
                again = "1"  # woke too late (a busy CPU): sending now would bunch with the next slot; take a fresh one
                continue
            # A throttle may have come in while we slept: then reserve again, after it.
            service_hold, dest_hold = self.r.hmget(keys[0], ["hold"])[0], self.r.hmget(keys[1], ["hold"])[0]
            if max(float(service_hold or 0), float(dest_hold or 0)) <= float(slot):
                return
            again = "1"  # the destination is ours already: only the hold is waited for

    @guarded
    def answered(self, dest: str) -> None:
        super().answered(dest)
        interval = self.dest_interval(dest)
        if interval > 0:
            self.scripts.answered(keys=[self._key(dest)], args=[repr(interval * 1000.0)])

    @guarded
    def throttled(self, scope: Throttle, dest: str, retry_after: float | None) -> None:
        if scope == Throttle.DEST:
            seconds = retry_after if retry_after is not None else max(DEFAULT_HOLD, 2 * self.dest_interval(dest))
            self.scripts.hold(keys=[self._key(dest)], args=[repr(seconds * 1000.0), "1", "1", "1000"])
            return
        seconds = retry_after if retry_after is not None else DEFAULT_HOLD
        self._slowdown = float(self.scripts.hold(keys=[self._key()], args=[repr(seconds * 1000.0), repr(SLOWDOWN_STEP),
                                                                           repr(SLOWDOWN_MAX), str(SERVICE_TTL)]))

    @guarded
    def delivered(self) -> None:
        if self._slowdown > 1.0:
            self._slowdown = float(self.scripts.recover(keys=[self._key()], args=[repr(RECOVERY_STEP)]))


class RedisPacers(Pacers):
    """The pacers of one process, their buckets shared by every process through Redis."""

    def __init__(self, client, tag: str, margin: float = 0.92, expected_latency: float = 0.25):
        super().__init__(margin, expected_latency)
        self.r = client
        self.keys = Keys(tag)
        self.scripts = _Scripts(client)

    def get(self, serv: str, service: ServiceBase) -> ServicePacer:
        with self._lock:
            pacer = self._pacers.get(serv)
            if pacer is None:
                pacer = self._pacers[serv] = RedisServicePacer(service, self.r, self.keys, self.scripts, margin=self.margin,
                                                               expected_latency=self.expected_latency)
            return pacer


class RedisHolds(Holds):
    """Misconfigured-service holds seen by every worker (the Redis peer of ``holds.Holds``; Unix time)."""

    def __init__(self, client, tag: str, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.r = client
        self.key = Keys(tag).base + "holds"
        self.clock = clock

    @staticmethod
    def _parse(raw) -> tuple[float, str] | None:
        try:
            until, reason = json.loads(raw)
            return float(until), str(reason)
        except (ValueError, TypeError):
            return None

    @guarded
    def reason(self, serv: str) -> str | None:
        held = self._parse(self.r.hget(self.key, serv))
        if held is None or self.clock() >= held[0]:
            return None
        return held[1]

    @guarded
    def probing(self, serv: str) -> bool:
        return bool(self.r.hexists(self.key, serv))

    @guarded
    def held(self) -> dict[str, str]:
        now, found = self.clock(), {}
        for serv, raw in self.r.hgetall(self.key).items():
            held = self._parse(raw)
            if held is not None and now < held[0]:
                found[serv.decode()] = held[1]
        return found

    @guarded
    def hold(self, serv: str, reason: str, recheck: float = 60.0) -> None:
        self.r.hset(self.key, serv, json.dumps([self.clock() + recheck, reason]))
        log.error("service %s is misconfigured; its messages stay queued (next try in %g s): %s", serv, recheck, reason)

    @guarded
    def release(self, serv: str) -> None:
        if self.r.hdel(self.key, serv):
            log.warning("service %s works again; sending its queued messages", serv)
