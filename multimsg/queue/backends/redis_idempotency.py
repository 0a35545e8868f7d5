"""Idempotency records in Redis: the peer of ``multimsg.idempotency.FileKeyRecords`` for the Redis backend.

One string per key, ``mm:{T}:idem:<name>`` (under the deployment's hash tag,
like every other key): a first request's hold is ``SET NX`` with the lease as
its TTL, so a crashed request's hold lapses by itself; the answer replaces it
with ``MULTIMSG_IDEMPOTENCY_TTL`` as its TTL, so Redis expires it (the sweep
has nothing to do). Replacing and releasing compare the hold first (a script),
so a request whose hold lapsed and was taken by a retry never overwrites the retry's.
"""

from __future__ import annotations

from ...idempotency import KeyRecords, parse_record
from .redis import guarded
from .redis_scripts import Keys

__all__ = ["RedisKeyRecords"]

# KEYS[1] the record; ARGV: our hold, the answer, its TTL (ms). Written if the hold is ours or gone.
COMPLETE = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisKeyRecords(KeyRecords):
    def __init__(self, client, tag: str):
        self.r = client
        self.prefix = Keys(tag).base + "idem:"
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    @guarded
    def begin(self, name: str, pending: str, lease: float, now: float) -> dict | None:
        key = self.prefix + name
        for _ in range(3):  # a record that expires between SET NX and GET: try again
            if self.r.set(key, pending, nx=True, px=self._ms(lease)):
                return None
            raw = self.r.get(key)
            if raw is not None:
                return parse_record(raw) or {"state": "pending"}  # Redis expires it: live; unreadable: held, not ours
        return {"state": "pending"}

    @guarded
    def complete(self, name: str, pending: str, done: str, ttl: float, now: float) -> None:
        self._complete(keys=[self.prefix + name], args=[pending, done, self._ms(ttl)])

    @guarded
    def release(self, name: str, pending: str) -> None:
        self._release(keys=[self.prefix + name], args=[pending])
