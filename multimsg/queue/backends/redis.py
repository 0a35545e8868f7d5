"""The Redis backend: records, leases, the due index, figures and upload bytes in one Redis.

A peer of the other backends behind the same contract (the contract suite runs
over it), so that several gateway processes on several machines share one
queue. The BullMQ/RQ model: one hash per message, a ZSET ``due`` (id -> due
time: new messages and retries) and a ZSET ``inflight`` (id -> lease expiry:
a lapsed lease is due again), all under one hash tag so it works on Redis
Cluster (``redis_scripts`` lists the keys).

Every record change is one Lua script (``redis_scripts.CAS``): compare the
stored record with the one read, write the new one, move it in the due index
and count it in the figures, atomically. Leases are fenced by the token inside
the record: a pass whose lease was taken over compares a stale record and
writes nothing. Times come from the caller's ``now`` (the engine's clock),
never from Redis.

``claim_due`` is two steps, because ``accept`` is a Python callback: read a
batch of candidate ids and their records, ask ``accept``, then claim each
accepted one with the CAS script (which fails if another pass took it first).
Refused candidates stay in the index and are stepped over by position in the
next rounds; when other passes claim at the same time, that can step over a
due message too: it waits for the next pass (deferred, never lost or doubled).

Redis unreachable: every method raises ``Unavailable`` (HTTP 503), never a
raw connection error. The ``redis`` package is imported only here, and this
module only when ``MULTIMSG_BACKEND`` names a Redis URL.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Callable, Iterable, Iterator

import redis

from ...errors import Unavailable
from ...ids import new_id
from ...model import BadRecord, Message, State
from .. import figures
from ..counters import Counters, apply_pass
from ..outbox import Event
from ..store import MessageStore
from .redis_scripts import CAS, Keys, cas_call, document, event_ops, figure_ops, index_ops

__all__ = ["RedisStore", "RedisCounters", "RedisSpool", "connect", "shared_client", "pipeline", "UNREACHABLE"]

log = logging.getLogger("multimsg.redis")

UNREACHABLE = "the shared store is unreachable; try again"
BATCH = 200  # candidates read per round of claim_due
CLAIM = 16  # of which leased at once, when the caller takes the first of them
SKEW = 600.0  # seconds another gateway's clock may run ahead of this one's, for the last hour's figures
TRIES = 20  # compare-and-set attempts before a write gives up (only under heavy contention on one record)


# The outbox (status events for callback URLs): mm:{T}:ev:<id> (the event as JSON), mm:{T}:evdue (ZSET
# id -> due time), mm:{T}:evfig (hash: delivered, given_up). An event is stored by the CAS of the record change
# it reports (``event_ops``); one compare-and-set script changes an event after that.
# KEYS: event, evdue, evfig; ARGV: expected JSON, new JSON ("" = delete), due score, id, figure to count ("" = none).
EVENT_CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[5], 1) end
return 1
"""


def connect(url: str, timeout: float = 5.0) -> "redis.Redis":
    """A client for ``redis://HOST:PORT/DB`` (``rediss://``; a password may be in the URL), or a Redis Cluster client
    for ``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]`` (``rediss+cluster://`` for TLS): the nodes to
    start from; the client learns the others. Every key of a deployment has one hash tag: one slot, one node."""
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return _connect_cluster(url, timeout)
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30)


@functools.lru_cache(maxsize=4)
def shared_client(url: str, timeout: float = 5.0) -> "redis.Redis":
    """The process's client for ``url`` (one connection pool for the store, keys, tokens, limits and pacing)."""
    return connect(url, timeout)


def _connect_cluster(url: str, timeout: float):
    from urllib.parse import unquote, urlsplit

    from redis.cluster import ClusterNode, RedisCluster

    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    user, _, password = auth.partition(":") if auth else ("", "", "")
    nodes = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        nodes.append(ClusterNode(name.strip("[]") or "127.0.0.1", int(port or 6379)))
    if not nodes:
        raise SystemExit("MULTIMSG_BACKEND=redis+cluster:// names no node (redis+cluster://HOST:PORT[,HOST:PORT...])")
    return RedisCluster(startup_nodes=nodes, username=unquote(user) or None, password=unquote(password) or None,
                        ssl=parts.scheme.startswith("rediss"), socket_connect_timeout=timeout, socket_timeout=timeout)


def pipeline(client, key: str, transaction: bool = False):
    """A pipeline on the node that holds ``key`` (every key of a deployment: one hash tag, one slot, one node).

    On Redis Cluster, redis-py's cluster pipeline refuses scripts (EVALSHA) and WATCH; a pipeline on
    the slot's node takes both, and every key in it is in that slot.
    """
    if hasattr(client, "get_node_from_key"):
        return client.get_redis_connection(client.get_node_from_key(key)).pipeline(transaction=transaction)
    return client.pipeline(transaction=transaction)


def guarded(fn):
    """Turn a lost connection into ``Unavailable`` (503) for the callers of ``fn``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable(UNREACHABLE) from exc

    return wrapper


class RedisCounters(Counters):
    def __init__(self, client: "redis.Redis", keys: Keys):
        self.r = client
        self.keys = keys
        self._cas = client.register_script(CAS)

    @guarded
    def documents(self) -> Iterable[figures.Figures]:
        now = time.time()
        # The last hour's per-minute counters, and a few minutes ahead: outcomes are counted at the
        # writer's clock, and the gateways sharing this Redis may run a little ahead of this one.
        minutes = range(int((now - figures.RECENT_WINDOW) // 60), int((now + SKEW) // 60) + 1)
        servs = sorted(m.decode() for m in self.r.smembers(self.keys.servs))
        pipe = pipeline(self.r, self.keys.ver)
        for serv in servs:
            pipe.hgetall(self.keys.fig(serv))
            pipe.zcard(self.keys.queued(serv))
            pipe.zrange(self.keys.queued(serv), 0, 0, withscores=True)
            for outcome in figures.OUTCOMES:
                pipe.mget([self.keys.recent(serv, outcome, m) for m in minutes])
        answers = iter(pipe.execute())
        doc = figures.empty()
        for serv in servs:
            fig = {k.decode(): v.decode() for k, v in next(answers).items()}
            depth, oldest = next(answers), next(answers)
            recent = {}
            for outcome in figures.OUTCOMES:
                counts = {str(m): int(n) for m, n in zip(minutes, next(answers)) if n is not None}
                if counts:
                    recent[outcome] = counts
            queued = (depth, oldest[0][1]) if oldest else None
            doc["services"][serv] = document(serv, fig, queued, recent)
        return [doc]

    @guarded
    def drain_figures(self) -> dict[str, Any]:
        raw = self.r.hget(self.keys.drain, "r")
        return json.loads(raw) if raw else {}

    @guarded
    def drain_pass(self, seconds: float, summary: dict) -> None:
        for _ in range(TRIES):
            raw = self.r.hget(self.keys.drain, "r")
            drain = apply_pass(json.loads(raw) if raw else {}, seconds, summary, time.time())
            keys, args = cas_call(self.keys.drain, self.keys.ver, raw.decode() if raw else "", json.dumps(drain), [])
            if self._cas(keys=keys, args=args):
                return


class RedisStore(MessageStore):
    def __init__(self, client: "redis.Redis", tag: str = "mm", archive_months: int = 12):
        self.r = client
        self.keys = Keys(tag)
        self.archive_months = archive_months
        self.counters = RedisCounters(client, self.keys)
        self._cas = client.register_script(CAS)
        self._event_cas = client.register_script(EVENT_CAS)
        self._evdue = self.keys.events_due
        self._evfig = self.keys.events_figures

    # -- one record change ---------------------------------------------------------
    def _args(self, raw: str | None, before: Message | None, after: Message | None, now: float,
              new: str | None = None, extra: list | None = None) -> tuple[list[str], list[str]]:
        changed = after or before
        assert changed is not None
        message_id = changed.id
        ops = index_ops(self.keys, message_id, after) + figure_ops(self.keys, before, after, now) + (extra or [])
        if after is not None and after.events:  # into the outbox in the same step, not into the record
            ops += event_ops(self.keys, after.events)
            after = after.with_changes(events=[])
        if new is None:
            new = json.dumps(after.to_record()) if after is not None else ""
        return cas_call(self.keys.record(message_id), self.keys.ver, raw or "", new, ops)

    def _write(self, raw: str | None, before: Message | None, after: Message | None, now: float, **kw) -> bool:
        keys, args = self._args(raw, before, after, now, **kw)
        return bool(self._cas(keys=keys, args=args))

    def _read(self, message_id: str) -> tuple[str | None, Message | None]:
        raw = self.r.hget(self.keys.record(message_id), "r")
        if raw is None:
            return None, None
        raw = raw.decode()
        return raw, _parse(raw)

    def _update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        """Read, change (None: leave it), compare-and-set; again if another writer came first."""
        for _ in range(TRIES):
            raw, current = self._read(message_id)
            if current is None:
                return None
            after = change(current)
            if after is None:
                return None
            if after == current or self._write(raw, current, after, now):
                return after.with_changes(events=[]) if after.events else after  # as stored
        raise Unavailable("the shared store is too busy with this message; try again")

    # -- the contract ------------------------------------------------------------
    def _history_ops(self, message: Message) -> list[list[str]]:
        key = self.keys.history_prefix + message.client
        return [["ZADD", key, repr(message.created_at), message.id], ["EXPIRE", key, str(int(self.history_window) + 3600)]]

    @guarded
    def add(self, message: Message) -> None:
        if not self._write(None, None, message, message.created_at, extra=self._history_ops(message)):
            raise ValueError(f"message id {message.id} is already stored")

    @guarded
    def add_many(self, messages: Iterable[Message]) -> int:
        count, pipe = 0, pipeline(self.r, self.keys.ver)
        for message in messages:
            keys, args = self._args(None, None, message, message.created_at, extra=self._history_ops(message))
            self._cas(keys=keys, args=args, client=pipe)
            count += 1
            if count % 1000 == 0:
                pipe.execute()
        pipe.execute()
        return count

    @guarded
    def get(self, message_id: str) -> Message | None:
        return self._read(message_id)[1]

    def claim_due(self, now: float, lease: float, accept: Callable[[Message], bool] | None = None,
                  limit: int | None = None, lapsed_only: bool = False,
                  clock: Callable[[], float] | None = None) -> Iterator[Message]:
        taken = 0
        # A lapsed lease is an entry of the in-flight index scored before now: only that index when those alone are asked for
        skipped = {self.keys.inflight: 0} if lapsed_only else {self.keys.due: 0, self.keys.inflight: 0}
        while limit is None or taken < limit:
            try:
                batch = self._candidates(now, accept, BATCH if limit is None else min(BATCH, limit - taken), skipped)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise Unavailable(UNREACHABLE) from exc
            if batch is None:
                return
            # Leased a few at a time, as they are taken: a lease must not run out while its claim waits to be yielded
            for start in range(0, len(batch), CLAIM):
                try:
                    claimed = self._claim(batch[start:start + CLAIM], clock() if clock else now, lease)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    raise Unavailable(UNREACHABLE) from exc
                for claim in claimed:
                    taken += 1
                    yield claim

    def _candidates(self, now: float, accept, n: int, skipped: dict[str, int]) -> list[tuple[str, Message]] | None:
        """Up to ``n`` messages due at ``now`` (per index) that ``accept`` wants, with their records; None when nothing is due any more."""
        candidates: list[tuple[str, str]] = []  # (index, id)
        for index in skipped:
            ids = self.r.zrangebyscore(index, "-inf", repr(now), start=skipped[index], num=n)
            candidates += [(index, i.decode()) for i in ids]
        if not candidates:
            return None
        pipe = pipeline(self.r, self.keys.ver)
        for _, message_id in candidates:
            pipe.hget(self.keys.record(message_id), "r")
        raws = pipe.execute()
        wanted: list[tuple[str, Message]] = []
        for (index, message_id), raw in zip(candidates, raws):
            if raw is None:  # archived meanwhile, index entry left behind: drop it
                self.r.zrem(index, message_id)
                continue
            raw = raw.decode()
            try:
                message = _parse(raw)
            except BadRecord as exc:
                self._fail_bad(message_id, raw, str(exc), now)
                continue
            if not message.is_due(now) or (accept is not None and not accept(message)):
                skipped[index] += 1  # refused (or not due after all): left untouched, skipped by the next rounds
                continue
            wanted.append((raw, message))
        return wanted

    def _claim(self, wanted: list[tuple[str, Message]], at: float, lease: float) -> list[Message]:
        """Lease these (as read) for ``lease`` seconds from ``at``; those another pass changed meanwhile are left to it."""
        claims = [(raw, message, message.with_changes(claim=new_id(), claim_until=at + lease)) for raw, message in wanted]
        pipe = pipeline(self.r, self.keys.ver)
        for raw, before, after in claims:
            keys, args = self._args(raw, before, after, at)
            self._cas(keys=keys, args=args, client=pipe)
        won = pipe.execute() if claims else []
        return [after for (_, _, after), ok in zip(claims, won) if ok]  # a lost one was taken by another pass

    def _fail_bad(self, message_id: str, raw: str, reason: str, now: float) -> None:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {"id": message_id, "unreadable": raw}
        record.update({"state": str(State.FAILED), "last_error": f"malformed record: {reason}", "claim": None, "updated_at": now})
        ops = [["ZREM", self.keys.due, message_id], ["ZREM", self.keys.inflight, message_id]]
        keys, args = cas_call(self.keys.record(message_id), self.keys.ver, raw, json.dumps(record), ops)
        self._cas(keys=keys, args=args)
        log.warning("message %s: malformed record failed: %s", message_id, reason)

    @guarded
    def extend(self, claims: Iterable[Message], until: float) -> list[bool]:
        claims = list(claims)
        pipe = pipeline(self.r, self.keys.ver)
        for claim in claims:
            pipe.hget(self.keys.record(claim.id), "r")
        raws = pipe.execute()
        results: list[bool | None] = []
        pipe = pipeline(self.r, self.keys.ver)
        for claim, raw in zip(claims, raws):
            current = _parse_quietly(raw)
            if current is None or claim.claim is None or not current.leased_by(claim.claim):
                results.append(False)
                continue
            keys, args = self._args(raw.decode(), current, current.with_changes(claim_until=until), until)
            self._cas(keys=keys, args=args, client=pipe)
            results.append(None)
        written = iter(pipe.execute())
        out = []
        for claim, result in zip(claims, results):
            if result is None:
                result = bool(next(written)) or self._update(  # changed meanwhile: look again, alone
                    claim.id, lambda m, token=claim.claim: m.with_changes(claim_until=until) if m.leased_by(token) else None,
                    until) is not None
            out.append(result)
        return out

    @guarded
    def finish(self, claim: Message, changes: dict[str, Any], now: float) -> Message | None:
        if claim.claim is None:
            return None

        def outcome(current: Message) -> Message | None:
            if claim.claim is None or not current.leased_by(claim.claim):
                return None  # fenced: the lease was taken over
            return self.finished(current, changes, now)

        return self._update(claim.id, outcome, now)

    @guarded
    def update(self, message_id: str, change: Callable[[Message], Message | None], now: float) -> Message | None:
        return self._update(message_id, change, now)

    # -- the outbox --------------------------------------------------------------
    def _event_key(self, event_id: str) -> str:
        return self.keys.event(event_id)

    def _event_write(self, expected: str, event: Event | None, event_id: str, figure: str = "") -> bool:
        new = "" if event is None else json.dumps(event.to_record())
        score = "0" if event is None else repr(event.due_at())
        return bool(self._event_cas(keys=[self._event_key(event_id), self._evdue, self._evfig],
                                    args=[expected, new, score, event_id, figure]))

    @guarded
    def enqueue_event(self, event: Event) -> None:
        pipe = pipeline(self.r, self._evdue, transaction=True)
        for op in event_ops(self.keys, [event.to_record()]):
            pipe.execute_command(*op)
        pipe.execute()

    @guarded
    def claim_events(self, now: float, lease: float, limit: int = 100) -> list[Event]:
        claimed = []
        for raw_id in self.r.zrangebyscore(self._evdue, "-inf", now, start=0, num=limit):
            event_id = raw_id.decode()
            raw = self.r.get(self._event_key(event_id))
            if raw is None:
                self.r.zrem(self._evdue, event_id)
                continue
            event = Event.from_record(json.loads(raw))
            if event.due_at() > now:
                continue
            mine = event.with_changes(claim=new_id(), claim_until=now + lease)
            if self._event_write(raw.decode(), mine, event_id):  # another gateway may have claimed it first
                claimed.append(mine)
        return claimed

    @guarded
    def finish_event(self, claim: Event, next_at: float | None, delivered: bool, now: float) -> bool:
        raw = self.r.get(self._event_key(claim.id))
        if raw is None or claim.claim is None:
            return False
        current = Event.from_record(json.loads(raw))
        if current.claim != claim.claim:
            return False
        if next_at is None:
            return self._event_write(raw.decode(), None, claim.id, "delivered" if delivered else "given_up")
        later = current.with_changes(claim=None, claim_until=None, next_at=next_at, attempts=current.attempts + 1)
        return self._event_write(raw.decode(), later, claim.id)

    @guarded
    def outbox_figures(self) -> dict[str, int]:
        pending = self.r.zcard(self._evdue)
        counts = {k.decode(): int(v) for k, v in self.r.hgetall(self._evfig).items()}
        return {"pending": int(pending), "delivered": counts.get("delivered", 0), "given_up": counts.get("given_up", 0)}

    @guarded
    def shared_key(self, name: str, make: Callable[[], bytes]) -> bytes | None:
        """One key for every gateway sharing this Redis: the first to ask stores it (SET NX), all read it."""
        key = self.keys.base + "key:" + name
        self.r.set(key, make(), nx=True)
        value = self.r.get(key)
        return None if value is None else (value.encode() if isinstance(value, str) else bytes(value))

    @guarded
    def report(self, message_id: str, now: float) -> Message | None:
        def mark(current: Message) -> Message:
            return current.with_changes(reported_at=now) if current.final and current.reported_at is None else current

        return self._update(message_id, mark, now)

    @guarded
    def archive(self, message_id: str, now: float, if_: Callable[[Message], bool] | None = None) -> Message | None:
        month = time.strftime("%Y-%m", time.gmtime(now))
        for _ in range(TRIES):
            raw, current = self._read(message_id)
            if current is None or (if_ is not None and not if_(current)):
                return None
            copy = self.keys.archived_copy_prefix + message_id  # the history's copy, for the rest of the window
            extra = [["RPUSH", self.keys.archive(month), raw], ["SADD", self.keys.archives, month], ["HSET", copy, "r", raw],
                     ["EXPIRE", copy, str(max(1, int(current.created_at + self.history_window - now)))]]
            if self._write(raw, current, None, now, extra=extra):
                return current
        raise Unavailable("the shared store is too busy with this message; try again")

    @guarded
    def history_index(self, client: str, now: float) -> list[tuple[float, str]]:
        key, start = self.keys.history_prefix + client, now - self.history_window
        self.r.zremrangebyscore(key, "-inf", f"({start!r}")
        found: list[Any] = list(self.r.zrangebyscore(key, repr(start), "+inf", withscores=True))
        return [(float(score), member.decode()) for member, score in found]

    @guarded
    def history_load(self, client: str, message_ids: list[str]) -> dict[str, Message]:
        pipe = pipeline(self.r, self.keys.ver)
        for message_id in message_ids:
            pipe.hget(self.keys.record(message_id), "r")
            pipe.hget(self.keys.archived_copy_prefix + message_id, "r")
        answers = pipe.execute()
        found = {}
        for index, message_id in enumerate(message_ids):
            message = _parse_quietly(answers[2 * index]) or _parse_quietly(answers[2 * index + 1])
            if message is not None and message.client == client:
                found[message_id] = message
        return found

    def _scan(self) -> Iterator[tuple[str, str]]:
        """(id, raw record) of every stored message."""
        ids = [key.decode()[len(self.keys.record_prefix):] for key in self.r.scan_iter(match=self.keys.record_prefix + "*", count=1000)]
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            pipe = pipeline(self.r, self.keys.ver)
            for message_id in chunk:
                pipe.hget(self.keys.record(message_id), "r")
            for message_id, raw in zip(chunk, pipe.execute()):
                if raw is not None:
                    yield message_id, raw.decode()

    @guarded
    def messages(self) -> Iterator[Message]:
        found = [m for _, raw in self._scan() if (m := _parse_quietly(raw)) is not None]
        return iter(found)

    def final_messages(self) -> Iterator[Message]:
        return iter([m for m in self.messages() if m.final])

    @guarded
    def rebuild(self, changed_only: bool = False) -> int:
        """Recount depth, queued ages and the due index from the records, unless a record changed meanwhile.

        The figures are changed in the same script as the records, so they do
        not drift; this repairs them after a manual edit or a restore. The
        recount is applied under WATCH of the version counter: if any record
        changed during the scan, it is tried again (and given up after a few
        tries, since then the counts kept by the scripts are the fresh ones).
        """
        for _ in range(3):
            with pipeline(self.r, self.keys.ver, transaction=True) as pipe:
                pipe.watch(self.keys.ver)
                messages = [m for _, raw in self._scan() if (m := _parse_quietly(raw)) is not None]
                servs = {m.decode() for m in pipe.smembers(self.keys.servs)} | {m.serv for m in messages}
                pipe.multi()
                for serv in servs:
                    fields = [f for f in (k.decode() for k in self.r.hkeys(self.keys.fig(serv))) if f.startswith("state:")]
                    if fields:
                        pipe.hdel(self.keys.fig(serv), *fields)
                    pipe.delete(self.keys.queued(serv))
                pipe.delete(self.keys.due, self.keys.inflight)
                for m in messages:
                    for op in index_ops(self.keys, m.id, m) + figure_ops(self.keys, None, m, m.created_at):
                        pipe.execute_command(*op)
                try:
                    pipe.execute()
                    return len(messages)
                except redis.WatchError:
                    continue
        log.info("rebuild: records kept changing during the recount; the figures kept by the scripts stay")
        return len(messages)

    def problems(self) -> list[str]:
        try:
            self.r.ping()
        except (redis.ConnectionError, redis.TimeoutError):
            return [UNREACHABLE]
        return []

    @guarded
    def sweep(self, now: float, older_than: float) -> int:
        """Drop archive months beyond ``archive_months`` (the archive lists live in Redis)."""
        if self.archive_months <= 0:
            return 0
        year, month = (int(x) for x in time.strftime("%Y %m", time.gmtime(now)).split())
        oldest = year * 12 + month - 1 - (self.archive_months - 1)
        pruned = 0
        for raw in self.r.smembers(self.keys.archives):
            name = raw.decode()
            y, m = (int(x) for x in name.split("-"))
            if y * 12 + m - 1 < oldest:
                self.r.delete(self.keys.archive(name))
                self.r.srem(self.keys.archives, name)
                pruned += 1
        return pruned


def _parse(raw: str) -> Message:
    try:
        record = json.loads(raw)
    except ValueError:
        raise BadRecord("the record is not JSON") from None
    return Message.from_record(record)


def _parse_quietly(raw: bytes | str | None) -> Message | None:
    if raw is None:
        return None
    try:
        return _parse(raw.decode() if isinstance(raw, bytes) else raw)
    except BadRecord:
        return None


from .redis_spool import RedisSpool  # noqa: E402  (one module to import for the whole backend)
