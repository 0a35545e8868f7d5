"""The Redis backend's keys, its Lua scripts, and figures as Redis operations.

Every key of a deployment starts with ``mm:{T}:`` (one hash tag ``{T}``), so
all of them live in one slot and the scripts may touch any of them on Redis
Cluster too::

    mm:{T}:m:<id>            hash, field "r": the Message record as JSON
    mm:{T}:due               ZSET id -> next_attempt_at   (queued, not leased)
    mm:{T}:inflight          ZSET id -> claim_until       (queued, leased)
    mm:{T}:servs             SET of service names seen (for the figures)
    mm:{T}:fig:<serv>        hash: state:<s>, out:<o>, lat:<o>:<bucket|inf|sum|count>
    mm:{T}:queued:<serv>     ZSET id -> created_at of the queued messages (oldest age)
    mm:{T}:recent:<serv>:<o>:<minute>   counter, expires after a bit more than an hour
    mm:{T}:archive:<YYYY-MM> list of archived records (JSON)
    mm:{T}:hist:<client>     ZSET id -> created_at: the client's history index (expires with the window)
    mm:{T}:ha:<id>           hash, field "r": the record as archived, for the history (expires with the window)
    mm:{T}:drain             hash, field "r": the drain figures (JSON)
    mm:{T}:ver               counter bumped by every record change (rebuild's WATCH)
    mm:{T}:ev:<id>           an outbox event (JSON); mm:{T}:evdue ZSET id -> due time; mm:{T}:evfig hash: delivered, given_up
    mm:{T}:d:<client>:<data id>, mm:{T}:blob:<blob id>, ... (the spool, ``redis_spool``)

One script, ``CAS``, does every record change: it compares the stored record
with the one Python read (the whole JSON string, so the claim token is part of
what is compared: that is the fencing) and only then writes the new record and
applies the index and figures operations Python computed from the same two
records, all in one atomic step; the status events the change is worth are
stored in the outbox by the same step (``event_ops``). Python, not Lua, merges the changes: Redis's
cjson encodes numbers with 14 significant digits, which would round Unix
times to a tenth of a millisecond on every write.
"""

from __future__ import annotations

import json
from typing import Any

from ...model import FINAL_STATES, Message, State
from .. import figures

__all__ = ["Keys", "CAS", "cas_call", "ATTACH", "RELEASE", "figure_ops", "index_ops", "event_ops"]

RECENT_TTL = int(figures.RECENT_WINDOW) + 180  # a per-minute counter outlives the hour it is counted in

# KEYS[1] the record's hash, KEYS[2] the version counter, KEYS[3...] every key the operations touch (all in
# KEYS, none built in Lua: Redis Cluster routes a script by its KEYS). ARGV[1] the expected record ("" = absent),
# ARGV[2] the new record ("" = delete), ARGV[3] a JSON list of operations [command, key index, args...] (all strings).
CAS = """
local current = redis.call('HGET', KEYS[1], 'r')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('HSET', KEYS[1], 'r', ARGV[2]) end
local allowed = {HINCRBY=1, HINCRBYFLOAT=1, ZADD=1, ZREM=1, SADD=1, INCRBY=1, EXPIRE=1, RPUSH=1, SET=1, HSET=1}
for _, op in ipairs(cjson.decode(ARGV[3])) do
  if not allowed[op[1]] then return redis.error_reply('CAS: command not allowed: ' .. tostring(op[1])) end
  redis.call(op[1], KEYS[tonumber(op[2])], unpack(op, 3))
end
redis.call('INCR', KEYS[2])
return 1
"""


def cas_call(record: str, ver: str, expected: str, new: str, ops: list[list[str]]) -> tuple[list[str], list[str]]:
    """(KEYS, ARGV) of one ``CAS`` call: each operation's key moved into KEYS and named by its index there."""
    keys, index, encoded = [record, ver], {record: 1, ver: 2}, []
    for command, key, *rest in ops:
        if key not in index:
            keys.append(key)
            index[key] = len(keys)
        encoded.append([command, str(index[key]), *rest])
    return keys, [expected, new, json.dumps(encoded)]

# Give a message its reference to an upload's blob. KEYS: upload meta, blob, message reference, references index.
# ARGV: message member, now. Returns the blob id, or false if the upload is gone.
ATTACH = """
local blob = redis.call('HGET', KEYS[1], 'blob')
if not blob or redis.call('EXISTS', KEYS[2]) == 0 then return false end
redis.call('HINCRBY', KEYS[2], 'refs', 1)
redis.call('PERSIST', KEYS[2])
redis.call('SET', KEYS[3], blob)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return blob
"""

# Drop a message's reference. KEYS: message reference, references index, the blob it pointed to when read, the
# blob's upload (Python reads both first: no key is built in Lua). ARGV: message member, the blob id read.
# The blob goes when its last reference goes, unless its upload is still live: then it expires with the upload.
# Returns the blob id when the blob is gone (a blob store then deletes its object), -1 if the reference changed
# since it was read (read again), else 0 or 1.
RELEASE = """
local blob = redis.call('GET', KEYS[1])
if blob and blob ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not blob then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return blob end
local refs = redis.call('HINCRBY', KEYS[3], 'refs', -1)
if refs <= 0 then
  local left = redis.call('PTTL', KEYS[4])
  if left > 0 then redis.call('PEXPIRE', KEYS[3], left) else redis.call('DEL', KEYS[3]); return blob end
end
return 1
"""


class Keys:
    """The key names of one deployment (hash tag ``{tag}``)."""

    def __init__(self, tag: str = "mm"):
        if not tag or any(c in tag for c in "{}"):
            raise ValueError("the Redis key tag must be non-empty and without braces")
        self.base = f"mm:{{{tag}}}:"
        self.due = self.base + "due"
        self.inflight = self.base + "inflight"
        self.servs = self.base + "servs"
        self.drain = self.base + "drain"
        self.ver = self.base + "ver"
        self.archives = self.base + "archives"
        self.record_prefix = self.base + "m:"
        self.blob_prefix = self.base + "blob:"
        self.refs = self.base + "refs"
        self.history_prefix = self.base + "hist:"
        self.archived_copy_prefix = self.base + "ha:"
        self.nothing = self.base + "none"  # never written: a stand-in key where a script needs one that is absent
        self.events_due = self.base + "evdue"
        self.events_figures = self.base + "evfig"

    def record(self, message_id: str) -> str:
        return self.record_prefix + message_id

    def event(self, event_id: str) -> str:
        return self.base + "ev:" + event_id

    def fig(self, serv: str) -> str:
        return f"{self.base}fig:{serv}"

    def queued(self, serv: str) -> str:
        return f"{self.base}queued:{serv}"

    def recent(self, serv: str, outcome: str, minute: int) -> str:
        return f"{self.base}recent:{serv}:{outcome}:{minute}"

    def archive(self, month: str) -> str:
        return f"{self.base}archive:{month}"

    def upload(self, client: str, data_id: str) -> str:
        return f"{self.base}d:{client}:{data_id}"

    def uploads(self, client: str) -> str:
        return f"{self.base}up:{client}"

    def blob(self, blob_id: str) -> str:
        return self.blob_prefix + blob_id

    def message_ref(self, client: str, message_id: str) -> str:
        return f"{self.base}mref:{client}:{message_id}"


def _num(x: float) -> str:
    return repr(float(x))


def index_ops(keys: Keys, message_id: str, after: Message | None) -> list[list[str]]:
    """Where the message stands in the due index after the change (in exactly one ZSET, or none)."""
    if after is None or after.final:
        return [["ZREM", keys.due, message_id], ["ZREM", keys.inflight, message_id]]
    if after.claim is not None and after.claim_until is not None:
        return [["ZREM", keys.due, message_id], ["ZADD", keys.inflight, _num(after.claim_until), message_id]]
    return [["ZREM", keys.inflight, message_id], ["ZADD", keys.due, _num(after.next_attempt_at), message_id]]


def event_ops(keys: Keys, events: list[dict[str, Any]]) -> list[list[str]]:
    """Store outbox events (``queue/outbox.py`` records), due at their ``next_at``; one already stored stays as it is."""
    ops = []
    for event in events:
        ops += [["SET", keys.event(event["id"]), json.dumps(event), "NX"],
                ["ZADD", keys.events_due, "NX", _num(event.get("next_at") or 0.0), event["id"]]]
    return ops


def _enter(keys: Keys, m: Message) -> list[list[str]]:
    ops = [["SADD", keys.servs, m.serv], ["HINCRBY", keys.fig(m.serv), f"state:{m.state}", "1"]]
    if m.state == State.QUEUED:
        ops.append(["ZADD", keys.queued(m.serv), _num(m.queued_since), m.id])  # figures.py: the oldest queued's age
    return ops


def _leave(keys: Keys, m: Message) -> list[list[str]]:
    ops = [["HINCRBY", keys.fig(m.serv), f"state:{m.state}", "-1"]]
    if m.state == State.QUEUED:
        ops.append(["ZREM", keys.queued(m.serv), m.id])
    return ops


def _outcome(keys: Keys, serv: str, outcome: str, now: float) -> list[list[str]]:
    recent = keys.recent(serv, outcome, int(now // 60))
    return [["HINCRBY", keys.fig(serv), f"out:{outcome}", "1"], ["INCRBY", recent, "1"], ["EXPIRE", recent, str(RECENT_TTL)]]


def _latency(keys: Keys, serv: str, outcome: str, seconds: float) -> list[list[str]]:
    seconds = max(0.0, seconds)
    bucket = next((str(i) for i, bound in enumerate(figures.LATENCY_BOUNDS) if seconds <= bound), "inf")
    fig, lat = keys.fig(serv), f"lat:{outcome}:"
    return [["HINCRBY", fig, lat + bucket, "1"], ["HINCRBY", fig, lat + "count", "1"],
            ["HINCRBYFLOAT", fig, lat + "sum", _num(seconds)]]


def figure_ops(keys: Keys, before: Message | None, after: Message | None, now: float) -> list[list[str]]:
    """``figures.count`` as Redis operations: the same change counted the same way."""
    if after is None:
        return _leave(keys, before) if before is not None else []
    if before is None:
        return _enter(keys, after)
    if before.state == after.state:
        if after.state == State.QUEUED and after.attempts > before.attempts:
            return _outcome(keys, after.serv, figures.RETRIED, now)
        return []
    ops = _leave(keys, before) + _enter(keys, after)
    if after.state in FINAL_STATES:
        ops += _outcome(keys, after.serv, str(after.state), now) + _latency(keys, after.serv, str(after.state), now - after.created_at)
    return ops


def document(serv: str, fig: dict[str, str], queued: tuple[int, float] | None, recent: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One service's entry of a figures document (the shape ``figures.merge`` reads) from its Redis keys."""
    entry: dict[str, Any] = {"states": {}, "queued": {}, "outcomes": {}, "recent": recent, "latency": {}}
    for name, value in fig.items():
        kind, _, rest = name.partition(":")
        if kind == "state":
            entry["states"][rest] = int(value)
        elif kind == "out":
            entry["outcomes"][rest] = int(value)
        elif kind == "lat":
            outcome, _, part = rest.partition(":")
            hist = entry["latency"].setdefault(outcome, figures.histogram(figures.LATENCY_BOUNDS))
            if part in ("inf", "count"):
                hist[part] = int(value)
            elif part == "sum":
                hist["sum"] = float(value)
            elif part.isdigit() and int(part) < len(hist["buckets"]):
                hist["buckets"][int(part)] = int(value)
    if queued is not None and queued[0] > 0:
        entry["queued"][str(int(queued[1] // 60))] = [queued[0], queued[1]]
    return entry
