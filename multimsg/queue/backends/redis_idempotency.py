"""Idempotency records in Redis: the peer of ``multimsg.idempotency.FileKeyRecords`` for the Redis backend.

One string per key, ``mm:{T}:idem:<name>`` (under the deployment's hash tag,
like every other key): a first request's hold is set by a script unless a live
record is there (one whose ``until`` is still ahead), with the lease as its TTL,
or, for a hold that reserved an id, the time it is kept (``expires``), so a
crashed request's hold lapses by itself and its reservation outlives it; the
answer replaces it with ``MULTIMSG_IDEMPOTENCY_TTL`` as its TTL, so Redis
expires it (the sweep has nothing to do). Replacing and releasing compare the
hold first (a script), so a request whose hold lapsed and was taken by a retry
never overwrites the retry's.
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

# KEYS[1] the record; ARGV: our hold, its TTL (ms), now (s). Stored unless a live record is there (returned then).
BEGIN = """
local v = redis.call('GET', KEYS[1])
if v then
  local ok, record = pcall(cjson.decode, v)
  if not ok or type(record) ~= 'table' or tonumber(record['until']) == nil or tonumber(record['until']) > tonumber(ARGV[3]) then
    return v
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisKeyRecords(KeyRecords):
    def __init__(self, client, tag: str):
        self.r = client
        self.prefix = Keys(tag).base + "idem:"
        self._begin = client.register_script(BEGIN)
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    @guarded
    def peek(self, name: str) -> dict | None:
        return parse_record(self.r.get(self.prefix + name))  # Redis drops it once it is no longer kept

    @guarded
    def begin(self, name: str, pending: str, lease: float, now: float) -> dict | None:
        record = parse_record(pending) or {}
        keep = max(float(record.get("until") or 0.0), float(record.get("expires") or 0.0)) - now
        raw = self._begin(keys=[self.prefix + name], args=[pending, self._ms(max(keep, lease)), repr(now)])
        if raw is None:
            return None
        return parse_record(raw) or {"state": "pending"}  # live; unreadable: held, not ours

    @guarded
    def complete(self, name: str, pending: str, done: str, ttl: float, now: float) -> None:
        self._complete(keys=[self.prefix + name], args=[pending, done, self._ms(ttl)])

    @guarded
    def release(self, name: str, pending: str) -> None:
        self._release(keys=[self.prefix + name], args=[pending])
