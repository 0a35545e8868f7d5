"""One contract suite for every storage backend (records, leases, due index, figures, content).

Each test runs over every backend in ``BACKENDS`` (the memory backend,
TinyDB, and Redis against a real redis-server: ``tests/redis_support.py``), as Dramatiq's backend tests do; the delivery engine is driven
in-process against each one, with a sending service that counts what it was
asked to send.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from multimsg.config import ServiceConfig
from multimsg.errors import NotFound
from multimsg.layout import Layout
from multimsg.model import Message, State
from multimsg.queue.backends.files import FileSpool
from multimsg.queue.backends.memory import MemorySpool, MemoryStore
from multimsg.queue.backends.tiny import TinyStore
from multimsg.queue.drain import Drain, Tuning
from multimsg.queue.retry import RetryPolicy
from multimsg.queue.shares import Share, deal
from multimsg.services.base import Outcome, ServiceBase
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)
from tests.s3_support import s3_bucket, s3_server  # noqa: F401  (fixtures)

BACKENDS = ["memory", "tiny", "redis"]
SPOOLS = BACKENDS + ["s3"]  # the spool's contract also over "s3": bookkeeping in Redis, bytes on a local S3 server
CLIENT = "ip:127.0.0.9"
_ids = (f"{n:016d}" for n in itertools.count(1))


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(store, spool) of one backend."""
    if request.param == "memory":
        return MemoryStore(), MemorySpool(ttl=3600)
    if request.param == "redis":
        from multimsg.queue.backends.redis import RedisSpool, RedisStore, connect

        client = connect(request.getfixturevalue("redis_url"))
        request.addfinalizer(client.close)
        return RedisStore(client), RedisSpool(client, ttl=3600)
    layout = Layout(tmp_path / "home")
    return TinyStore(layout, fsync=False), FileSpool(layout, ttl=3600, fsync=False)


def s3_spool(request, ttl: float = 3600):
    """(S3Spool, redis client, s3 client, bucket): Redis for the references, the session's S3 server for the bytes."""
    from multimsg.queue.backends.redis import connect
    from multimsg.queue.backends.s3_spool import S3Spool

    client = connect(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    s3 = server.client()
    return S3Spool(client, s3, bucket, "uploads", "t", ttl=ttl), client, s3, bucket


@pytest.fixture(params=SPOOLS)
def any_spool(request, backend_for_spool):
    """A spool of every kind in ``SPOOLS`` (the content tests)."""
    if request.param == "s3":
        return s3_spool(request)[0]
    return backend_for_spool(request.param)[1]


@pytest.fixture
def backend_for_spool(request, tmp_path):
    def build(name: str):
        if name == "memory":
            return MemoryStore(), MemorySpool(ttl=3600)
        if name == "redis":
            from multimsg.queue.backends.redis import RedisSpool, RedisStore, connect

            client = connect(request.getfixturevalue("redis_url"))
            request.addfinalizer(client.close)
            return RedisStore(client), RedisSpool(client, ttl=3600)
        layout = Layout(tmp_path / "home")
        return TinyStore(layout, fsync=False), FileSpool(layout, ttl=3600, fsync=False)

    return build


@pytest.fixture
def store(backend):
    return backend[0]


@pytest.fixture
def spool(backend):
    return backend[1]


def message(**changes) -> Message:
    now = changes.pop("now", time.time())
    base = Message(id=next(_ids), client=CLIENT, data_id="d" * 16, serv="counting", dest="1", type="text",
                   created_at=now, updated_at=now, next_attempt_at=now)
    return base.with_changes(**changes) if changes else base


def states(store) -> dict:
    return store.counters.snapshot()["services"].get("counting", {}).get("states", {})


# -- records ---------------------------------------------------------------------------------
def test_a_message_added_is_read_back_whole(store):
    m = message(options={"caption": "hola"}, filename="a.txt")
    store.add(m)
    assert store.get(m.id) == m
    assert store.get("x" * 16) is None


def test_figures_follow_every_change_in_the_same_step(store):
    m = message()
    store.add(m)
    assert states(store)["queued"] == 1
    [claim] = store.claim_due(time.time(), 60)
    store.finish(claim, {"state": State.DELIVERED}, time.time())
    figures = store.counters.snapshot()["services"]["counting"]
    assert (figures["states"]["queued"], figures["states"]["delivered"], figures["outcomes"]["delivered"]) == (0, 1, 1)
    store.archive(m.id, time.time())
    assert states(store)["delivered"] == 0


def test_the_sweeps_scans_give_every_stored_id_and_exactly_the_final_messages(store):
    now = time.time()
    queued, leased, delivered, failed = (message(now=now) for _ in range(4))
    for m in (queued, leased, delivered, failed):
        store.add(m)
    claims = {c.id: c for c in store.claim_due(now, 60)}
    store.finish(claims[delivered.id], {"state": State.DELIVERED}, now)
    store.finish(claims[failed.id], {"state": State.FAILED}, now)
    assert store.message_ids() == {m.id for m in store.messages()} == {queued.id, leased.id, delivered.id, failed.id}
    assert sorted(m.id for m in store.final_messages()) == sorted([delivered.id, failed.id])
    assert {m.id: m.state for m in store.final_messages()} == {delivered.id: State.DELIVERED, failed.id: State.FAILED}
    store.archive(delivered.id, now)
    assert store.message_ids() == {queued.id, leased.id, failed.id}
    assert [m.id for m in store.final_messages()] == [failed.id]


# -- leases ------------------------------------------------------------------------------------
def test_a_claim_is_a_lease_with_a_unique_token(store):
    now = time.time()
    a, b = message(now=now), message(now=now)
    store.add(a)
    store.add(b)
    claims = list(store.claim_due(now, 60))
    assert {c.id for c in claims} == {a.id, b.id}
    assert len({c.claim for c in claims}) == 2 and all(c.claim_until == pytest.approx(now + 60) for c in claims)
    assert list(store.claim_due(now + 1, 60)) == []  # leased: nobody else takes them


def test_a_lapsed_lease_is_taken_back_by_any_pass_and_fences_the_first(store):
    now = time.time()
    m = message(now=now)
    store.add(m)
    [first] = store.claim_due(now, 10)
    [second] = store.claim_due(now + 11, 10)  # the first pass's lease lapsed
    assert second.id == m.id and second.claim != first.claim
    assert store.finish(first, {"state": State.DELIVERED}, now + 12) is None  # fenced: nothing written
    assert store.get(m.id).state == State.QUEUED
    assert store.extend([first, second], now + 30) == [False, True]
    done = store.finish(second, {"state": State.DELIVERED}, now + 12)
    assert done.state == State.DELIVERED and done.claim is None
    assert store.get(m.id).state == State.DELIVERED


def test_lapsed_only_leases_the_lapsed_leases_and_leaves_the_rest_due(store):
    now = time.time()
    orphan, queued, live = message(now=now), message(now=now), message(now=now)
    store.add(orphan)
    [dead] = store.claim_due(now, 5)  # its pass stops extending: the lease lapses at now + 5
    store.add(live)
    [held] = store.claim_due(now, 60)
    store.add(queued)
    assert list(store.claim_due(now + 4, 60, lapsed_only=True)) == []  # not lapsed yet
    assert [c.id for c in store.claim_due(now + 6, 60, lapsed_only=True)] == [orphan.id]
    assert store.finish(dead, {"state": State.DELIVERED}, now + 6) is None  # the dead pass is fenced
    assert store.get(queued.id).claim is None and held.id == live.id
    assert [c.id for c in store.claim_due(now + 6, 60)] == [queued.id]


def test_a_lease_runs_from_when_its_batch_is_leased_not_from_the_scans_start(store):
    now = time.time()
    m = message(now=now)
    store.add(m)
    [claim] = store.claim_due(now, 10, clock=lambda: now + 100)  # a long scan: its last batch is leased late
    assert claim.claim_until == pytest.approx(now + 110)
    assert list(store.claim_due(now + 105, 10, lapsed_only=True)) == []


def test_a_retry_is_not_due_before_its_time(store):
    now = time.time()
    store.add(message(now=now))
    [claim] = store.claim_due(now, 60)
    store.finish(claim, {"next_attempt_at": now + 30, "attempts": 1}, now)
    assert list(store.claim_due(now + 29, 60)) == []
    assert [c.id for c in store.claim_due(now + 31, 60)] == [claim.id]
    assert store.counters.snapshot()["services"]["counting"]["outcomes"]["retried"] == 1


def test_accept_leaves_a_refused_message_untouched_and_due(store):
    now = time.time()
    m = message(now=now)
    store.add(m)
    assert list(store.claim_due(now, 60, accept=lambda _: False)) == []
    assert store.get(m.id).claim is None
    assert [c.id for c in store.claim_due(now, 60)] == [m.id]


# -- /cons and the archive -------------------------------------------------------------------------
def test_report_marks_the_first_report_of_a_final_state_only(store):
    now = time.time()
    m = message(now=now)
    store.add(m)
    assert store.report(m.id, now).reported_at is None  # queued: nothing to mark
    [claim] = store.claim_due(now, 60)
    store.finish(claim, {"state": State.FAILED, "last_error": "no"}, now)
    first = store.report(m.id, now + 1)
    assert first.reported_at == pytest.approx(now + 1)
    assert store.report(m.id, now + 2).reported_at == pytest.approx(now + 1)


def test_archive_is_atomic_one_of_two_callers_gets_the_message(store):
    m = message()
    store.add(m)
    results, start = [], threading.Barrier(8)

    def archive():
        start.wait()
        results.append(store.archive(m.id, time.time()))

    threads = [threading.Thread(target=archive) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.id for r in results if r is not None] == [m.id]
    assert store.get(m.id) is None
    assert states(store)["queued"] == 0  # counted out once, not eight times


# -- scheduled sends and cancel ----------------------------------------------------------------------
def test_a_scheduled_message_waits_in_the_due_index_until_its_time(store):
    now = time.time()
    m = message(now=now, next_attempt_at=now + 3600, scheduled_for=now + 3600)
    store.add(m)
    assert list(store.claim_due(now + 3599, 60)) == []
    [claim] = store.claim_due(now + 3600, 60)
    assert claim.id == m.id and claim.scheduled_for == pytest.approx(now + 3600)


def test_cancel_makes_a_queued_message_final_counted_and_never_due(store):
    now = time.time()
    m = message(now=now, next_attempt_at=now + 600, scheduled_for=now + 600)
    store.add(m)
    cancelled, found = store.cancel(m.id, CLIENT, now)
    assert cancelled.state == State.CANCELLED and cancelled.final and found.state == State.QUEUED
    assert store.get(m.id).state == State.CANCELLED
    assert list(store.claim_due(now + 3600, 60)) == []  # out of the due index
    figures = store.counters.snapshot()["services"]["counting"]
    assert figures["states"]["cancelled"] == 1 and figures["states"]["queued"] == 0
    assert figures["outcomes"]["cancelled"] == 1
    assert store.cancel(m.id, CLIENT, now)[0] is None  # final now: not cancelled twice
    assert store.counters.snapshot()["services"]["counting"]["outcomes"]["cancelled"] == 1


def test_cancel_is_refused_for_a_leased_a_final_or_another_clients_message(store):
    now = time.time()
    leased, other = message(now=now), message(now=now, client="ip:127.0.0.10")
    store.add(leased)
    store.add(other)
    claims = {c.id: c for c in store.claim_due(now, 60)}
    cancelled, found = store.cancel(leased.id, CLIENT, now + 1)
    assert cancelled is None and found.claim == claims[leased.id].claim  # in flight: left to its pass
    assert store.finish(claims[leased.id], {"state": State.DELIVERED}, now + 2).state == State.DELIVERED
    cancelled, found = store.cancel(leased.id, CLIENT, now + 3)
    assert cancelled is None and found.state == State.DELIVERED
    store.finish(claims[other.id], {"next_attempt_at": now + 30, "attempts": 1}, now)
    cancelled, found = store.cancel(other.id, CLIENT, now + 3)
    assert cancelled is None and found.client != CLIENT and store.get(other.id).state == State.QUEUED
    assert store.cancel("f" * 16, CLIENT, now) == (None, None)


def test_cancel_of_a_lapsed_lease_fences_its_holder(store):
    now = time.time()
    m = message(now=now)
    store.add(m)
    [claim] = store.claim_due(now, 10)
    cancelled, _ = store.cancel(m.id, CLIENT, now + 11)  # the lease lapsed: the message is anyone's again
    assert cancelled.state == State.CANCELLED
    assert store.finish(claim, {"state": State.DELIVERED}, now + 12) is None  # fenced: nothing written
    assert store.get(m.id).state == State.CANCELLED


def test_cancel_and_claim_race_each_message_is_either_leased_or_cancelled(store):
    now = time.time()
    ids = [message(now=now).id for _ in range(40)]
    for message_id in ids:
        store.add(message(id=message_id, now=now))
    start, claimed, cancelled = threading.Barrier(2), [], []

    def claim():
        start.wait()
        claimed.extend(c.id for c in store.claim_due(now, 60))

    def cancel():
        start.wait()
        cancelled.extend(i for i in ids if store.cancel(i, CLIENT, now)[0] is not None)

    threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed + cancelled) == sorted(ids)  # each exactly once: never both, never neither
    assert all(store.get(i).state == (State.CANCELLED if i in cancelled else State.QUEUED) for i in ids)


# -- history -----------------------------------------------------------------------------------------
OTHER = "ip:127.0.0.10"


def test_history_is_the_clients_own_messages_newest_first_archived_ones_included(store):
    now = time.time()
    mine = [message(now=now - 30 + i) for i in range(3)]
    theirs = [message(now=now - 20 + i, client=OTHER) for i in range(4)]
    for m in mine + theirs:
        store.add(m)
    [claim] = [c for c in store.claim_due(now, 60) if c.id == mine[0].id] or [None]
    store.finish(claim, {"state": State.DELIVERED}, now)
    store.report(mine[0].id, now)
    assert store.archive(mine[0].id, now) is not None
    shown = store.history(CLIENT, now + 1)
    assert [m.id for m in shown] == [m.id for m in reversed(mine)]
    assert shown[-1].state == State.DELIVERED  # the archived copy, as it was archived
    assert sorted(i for _, i in store.history_index(CLIENT, now + 1)) == sorted(m.id for m in mine)  # the client's own index
    assert [m.id for m in store.history(OTHER, now + 1)] == [m.id for m in reversed(theirs)]
    assert store.get(mine[1].id).reported_at is None  # reading the history reported nothing


def test_history_pages_by_cursor_and_filters_without_repeats(store):
    now = time.time()
    added = [message(now=now - 100 + i, serv="counting" if i % 2 else "other") for i in range(11)]
    for m in added:
        store.add(m)
    seen, before = [], None
    while True:
        page = store.history(CLIENT, now, before=before, limit=4)
        seen += [m.id for m in page]
        if len(page) < 4:
            break
        before = (page[-1].created_at, page[-1].id)
    assert seen == [m.id for m in reversed(added)]
    counting = store.history(CLIENT, now, accept=lambda m: m.serv == "counting", limit=100)
    assert [m.id for m in counting] == [m.id for m in reversed(added) if m.serv == "counting"]
    assert [m.id for m in store.history(CLIENT, now, since=now - 92)] == [m.id for m in reversed(added[8:])]


def test_history_prunes_what_is_older_than_the_window(store):
    now = time.time()
    store.history_window = 3 * 24 * 3600.0
    old, recent = message(now=now - 5 * 24 * 3600.0), message(now=now - 60)
    store.add(old)
    store.add(recent)
    assert [m.id for m in store.history(CLIENT, now)] == [recent.id]
    store.sweep(now, 3600)
    assert [i for _, i in store.history_index(CLIENT, now)] == [recent.id]
    assert store.get(old.id) is not None  # the message itself is the drain's business, not the history's


def test_a_scheduled_message_is_not_the_oldest_queued_while_it_waits(store):
    now = time.time()
    store.add(message(now=now - 7200, scheduled_for=now + 3600, next_attempt_at=now + 3600))  # queued 2 h ago, for in 1 h
    assert (store.counters.snapshot(now)["services"]["counting"]["oldest_queued_age"] or 0.0) == 0.0
    store.add(message(now=now - 600))
    assert 540 <= store.counters.snapshot(now)["services"]["counting"]["oldest_queued_age"] <= 660


# -- content ------------------------------------------------------------------------------------------
def test_content_is_an_object_not_a_path(any_spool):
    spool = any_spool
    info = spool.put(CLIENT, [b"hola ", b"mundo"], "hola.txt")
    assert (info.size, info.filename) == (10, "hola.txt")
    assert spool.get(CLIENT, info.data_id) == info
    content = spool.content(CLIENT, info.data_id)
    assert (content.size, content.head(4), content.read()) == (10, b"hola", b"hola mundo")
    looked_up, its_content = spool.lookup(CLIENT, info.data_id)  # both in one read of the upload's record
    assert (looked_up, its_content.read()) == (info, b"hola mundo")
    with pytest.raises(NotFound):
        spool.lookup(CLIENT, "Z" * 16)
    with content.local_path() as path:
        assert path.read_bytes() == b"hola mundo"
    spool.attach(CLIENT, info.data_id, "M" * 16)
    assert spool.message_content(CLIENT, "M" * 16).read() == b"hola mundo"
    assert spool.usage(CLIENT) == 10
    spool.release(CLIENT, "M" * 16)
    with pytest.raises(FileNotFoundError):
        spool.message_content(CLIENT, "M" * 16).read()


def test_a_sealed_spool_stores_no_plaintext_and_rotation_rewrites_only_the_heads(any_spool):
    import base64
    import os

    from multimsg.queue.sealed import CHUNK, HEADER, SealedSpool, Tampered
    from multimsg.storage_keys import storage_keys

    first, second = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    home = Path("/nonexistent-data-folder")
    sealed = SealedSpool(any_spool, storage_keys(first, Path("/k"), home))
    content = b"confidential payload " * (CHUNK // 10)  # several chunks
    info = sealed.put(CLIENT, [content[:1000], content[1000:]], "informe-secreto.pdf")
    sealed.attach(CLIENT, info.data_id, "m" * 16)
    raw = any_spool.content(CLIENT, info.data_id).read()  # what the backend holds (for S3: the object in the bucket)
    assert b"confidential" not in raw and b"informe" not in any_spool.get(CLIENT, info.data_id).filename.encode()
    assert (sealed.get(CLIENT, info.data_id).filename, sealed.get(CLIENT, info.data_id).size) == ("informe-secreto.pdf", len(content))
    looked_up, opened = sealed.lookup(CLIENT, info.data_id)
    assert (looked_up.filename, looked_up.size, opened.read()) == ("informe-secreto.pdf", len(content), content)
    assert sealed.message_content(CLIENT, "m" * 16).read() == content

    counts = sealed.rewrap(storage_keys(f"{second},{first}", Path("/k"), home).load())
    assert counts["rewrapped"] >= 1 and counts["on_old_keys"] == counts["unreadable"] == 0
    after = any_spool.content(CLIENT, info.data_id).read()
    assert after[HEADER:] == raw[HEADER:] and after[:HEADER] != raw[:HEADER]  # the content itself is not rewritten
    assert SealedSpool(any_spool, storage_keys(second, Path("/k"), home)).message_content(CLIENT, "m" * 16).read() == content
    with pytest.raises(Tampered):
        sealed.content(CLIENT, info.data_id).read()  # the old key alone opens nothing any more


def test_a_sealed_contents_read_answers_what_its_stream_answers_and_refuses_what_it_refuses(any_spool):
    """``SealedContent.read`` opens the chunks it needs from one read; ``open().read`` streams them: same bytes, same refusals."""
    import base64
    import os

    from multimsg.content import BytesContent
    from multimsg.queue.sealed import CHUNK, HEADER, ONE_READ, TAG, SealedContent, SealedSpool, Tampered
    from multimsg.storage_keys import storage_keys

    keys = storage_keys(base64.b64encode(os.urandom(32)).decode(), Path("/k"), Path("/nonexistent-data-folder"))
    sealed = SealedSpool(any_spool, keys)

    def both(content, limit):
        with content.open() as stream:
            streamed = stream.read() if limit is None else stream.read(limit)
        return content.read(limit), streamed

    for size in (0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, ONE_READ + 1):  # the last: a large read streams
        plain = os.urandom(size)
        info = sealed.put(CLIENT, [plain], "f.bin")
        content = sealed.content(CLIENT, info.data_id)
        for limit in (None, -1, 0, 1, 999, CHUNK, CHUNK + 1, 2 * CHUNK, 10 * CHUNK, ONE_READ + 1):
            ours, streamed = both(content, limit)
            assert ours == streamed == (plain if limit is None or limit < 0 else plain[:limit]), (size, limit)

    plain = os.urandom(2 * CHUNK + 7)
    raw = any_spool.content(CLIENT, sealed.put(CLIENT, [plain], "f.bin").data_id).read()
    second = HEADER + CHUNK + TAG
    altered = raw[:second + 3] + bytes([raw[second + 3] ^ 1]) + raw[second + 4:]
    dropped = raw[:second] + raw[second + CHUNK + TAG:]  # the second chunk gone: the third comes second
    for broken, limit in ((altered, None), (altered, CHUNK + 1), (dropped, None), (raw[:second + 100], None), (raw[:HEADER + 10], None)):
        content = SealedContent(BytesContent(broken), keys.load())
        with pytest.raises(Tampered) as ours:
            content.read(limit)
        with pytest.raises(Tampered) as streamed:
            with content.open() as stream:
                stream.read() if limit is None else stream.read(limit)
        assert ours.value.reason == streamed.value.reason
    assert SealedContent(BytesContent(altered), keys.load()).read(CHUNK) == plain[:CHUNK]  # the first chunk is intact


def test_the_sweep_removes_orphan_message_references(any_spool):
    spool = any_spool
    info = spool.put(CLIENT, [b"x"], "x.txt")
    spool.attach(CLIENT, info.data_id, "A" * 16)
    spool.attach(CLIENT, info.data_id, "B" * 16)
    spool.sweep(time.time() + 7200, live=["A" * 16], older_than=3600)
    assert spool.message_content(CLIENT, "A" * 16).read() == b"x"
    with pytest.raises(FileNotFoundError):
        spool.message_content(CLIENT, "B" * 16).read()


def test_a_messages_own_content_is_stored_counted_and_released(any_spool):
    """``put_message`` (POST /send): the message's content with no upload to attach; counted against the quota."""
    spool = any_spool
    info = spool.put_message(CLIENT, [b"hola ", b"send"], "s.txt", "S" * 16)
    assert (info.size, info.filename) == (9, "s.txt")
    assert spool.message_content(CLIENT, "S" * 16).read() == b"hola send"
    assert spool.usage(CLIENT) == 9
    spool.sweep(time.time(), live=["S" * 16], older_than=0)  # a stored message's content is not an orphan
    assert spool.message_content(CLIENT, "S" * 16).read() == b"hola send"
    assert spool.usage(CLIENT) == 9  # the embedded spool's recount agrees with its running count
    spool.release(CLIENT, "S" * 16)
    with pytest.raises(FileNotFoundError):
        spool.message_content(CLIENT, "S" * 16).read()
    if isinstance(spool, FileSpool):  # no upload is left behind, and the space is back at once
        assert spool.usage(CLIENT) == 0
        assert [p.name for p in spool.layout.client_spool(CLIENT).iterdir() if not p.name.startswith(".")] == ["msg"]


def test_the_embedded_spool_counts_a_messages_content_once_its_upload_has_expired(tmp_path):
    layout = Layout(tmp_path / "home")
    spool = FileSpool(layout, ttl=60, fsync=False)
    info = spool.put(CLIENT, [b"x" * 100], "x.txt")
    spool.attach(CLIENT, info.data_id, "A" * 16)
    assert spool.usage(CLIENT) == 100  # the upload and its message's link are one file, counted once
    spool.sweep(time.time(), live=["A" * 16])
    assert spool.usage(CLIENT) == 100  # by the sweep's recount too
    spool.sweep(time.time() + 120, live=["A" * 16])  # the upload expires; the queued message keeps the bytes
    assert spool.usage(CLIENT) == 100
    spool.release(CLIENT, "A" * 16)
    assert spool.usage(CLIENT) == 0


# -- the engine, in-process, over each backend -----------------------------------------------------------
class Counting(ServiceBase):
    """A service that records every send; our own engine's counterpart in these in-process tests."""

    kind = "counting"
    datatypes = frozenset({"text"})
    dest_format = "digits"
    import re as _re

    dest_pattern = _re.compile(r"\d+")
    rate = 0.0  # no service pacing
    sent: list[str]

    def __init__(self, delay: float = 0.0):
        super().__init__(ServiceConfig(values={}, dest_interval=0.0, concurrency=8))
        self.sent = []
        self.delay = delay
        self.lock = threading.Lock()

    def send(self, data: dict) -> Outcome:
        data["pace"]()
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.sent.append(data["id"])
        return Outcome.delivered([f"p{len(self.sent)}"])


def engine(store, spool, service, lock_path=None) -> Drain:
    return Drain(store, spool, lambda serv: service, RetryPolicy(base=0.01), lock_path, tuning=Tuning(horizon=5.0, lease=5.0))


def queue_texts(store, spool, n: int) -> list[str]:
    info = spool.put(CLIENT, [b"hola"], "t.txt")
    ids = []
    for i in range(n):
        m = message(dest=str(i % 50), data_id=info.data_id)
        spool.attach(CLIENT, info.data_id, m.id)
        store.add(m)
        ids.append(m.id)
    return ids


def test_one_pass_delivers_everything_once(store, spool):
    service = Counting()
    ids = queue_texts(store, spool, 120)
    summary = engine(store, spool, service).run_pass()
    assert (summary["claimed"], summary["delivered"]) == (120, 120)
    assert sorted(service.sent) == sorted(ids)
    assert all(store.get(i).state == State.DELIVERED for i in ids)


def test_passes_run_together_without_the_lock_deliver_each_message_exactly_once(store, spool):
    service = Counting(delay=0.002)
    ids = queue_texts(store, spool, 200)
    drains = [engine(store, spool, service) for _ in range(4)]  # no lock file: only leases keep them apart
    start = threading.Barrier(len(drains))

    def run(drain):
        start.wait()
        drain.run_pass()

    threads = [threading.Thread(target=run, args=(d,)) for d in drains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(service.sent) == sorted(ids)  # every message once: none lost, none twice
    assert all(store.get(i).state == State.DELIVERED for i in ids)


def test_drains_with_shares_each_lease_and_send_only_their_own_instances(store, spool):
    """Several drain processes split the instances (``queue.shares``): each leases only its own instances' messages."""
    services = {serv: Counting() for serv in ("uno", "dos", "tres", "gone")}
    owners = deal({"uno": 80.0, "dos": 30.0, "tres": 30.0}, 2)  # by rate, largest first, to the lightest share
    assert owners == {"uno": 0, "dos": 1, "tres": 1}
    info = spool.put(CLIENT, [b"hola"], "t.txt")
    ids: dict[str, list[str]] = {serv: [] for serv in services}
    for n in range(40):
        serv = list(services)[n % 4]  # "gone": an instance no longer configured, dealt by its name's CRC-32
        m = message(serv=serv, dest=str(n), data_id=info.data_id)
        spool.attach(CLIENT, info.data_id, m.id)
        store.add(m)
        ids[serv].append(m.id)
    drains = [Drain(store, spool, services.__getitem__, RetryPolicy(base=0.01), tuning=Tuning(horizon=5.0, lease=5.0),
                    share=Share(index, 2, owners)) for index in (0, 1)]
    gone = Share(0, 2, owners).serves("gone")
    first = drains[0].run_pass()
    mine = ["uno"] + (["gone"] if gone else [])
    assert first["claimed"] == first["delivered"] == 10 * len(mine)
    for serv, service in services.items():
        if serv in mine:
            assert sorted(service.sent) == sorted(ids[serv])
        else:  # not even leased: still queued, with no claim on it
            assert service.sent == [] and all(store.get(i).state == State.QUEUED and store.get(i).claim is None for i in ids[serv])
    second = drains[1].run_pass()
    assert second["delivered"] == 40 - 10 * len(mine)
    assert all(sorted(service.sent) == sorted(ids[serv]) for serv, service in services.items())  # each once, by one share


def test_a_running_pass_takes_back_a_lease_that_lapses_while_it_runs(store, spool):
    """A crashed pass's messages need no new pass: a running one takes them once their lease lapses."""
    orphan = threading.Event()

    class Waiting(Counting):
        def send(self, data: dict) -> Outcome:
            if data["id"] != orphan_id:
                orphan.wait(10)  # keeps the pass running until the orphan is sent (or gives up)
            outcome = super().send(data)
            if data["id"] == orphan_id:
                orphan.set()
            return outcome

    orphan_id, *ids = queue_texts(store, spool, 4)  # each to its own destination
    [dead] = store.claim_due(time.time(), 1.0, accept=lambda m: m.id == orphan_id)  # a pass that crashed right after leasing it
    service = Waiting()
    drain = Drain(store, spool, lambda serv: service, RetryPolicy(base=0.01), tuning=Tuning(horizon=5.0, lease=1.5))
    summary = drain.run_pass()
    assert orphan.is_set(), "the lapsed lease was left to a later pass"
    assert summary["delivered"] == 4 and sorted(service.sent) == sorted(ids + [orphan_id])
    assert store.get(orphan_id).state == State.DELIVERED and store.finish(dead, {}, time.time()) is None


def test_a_forward_clock_jump_does_not_expire_messages_in_bulk(store, spool):
    from multimsg.queue.clock import SteadyClock

    wall = [time.time()]
    clock = SteadyClock(wall=lambda: wall[0])
    service = Counting()
    ids = queue_texts(store, spool, 5)
    drain = Drain(store, spool, lambda serv: service, RetryPolicy(validity=3600.0), clock=clock, tuning=Tuning(horizon=5.0))
    clock.trusted()
    wall[0] += 2 * 86400  # the wall clock jumps two days ahead
    summary = drain.run_pass()
    assert summary["delivered"] == 5 and summary["failed"] == 0
    assert sorted(service.sent) == sorted(ids)


# -- the embedded backend's due index ------------------------------------------------------------------
def test_tiny_due_index_files_a_month_of_scheduled_sends_under_a_few_day_folders(tmp_path):
    store = TinyStore(Layout(tmp_path / "home"), fsync=False)
    now = time.time()
    ids = []
    for n in range(300):  # spread over 30 days: about one minute folder per shard
        at = now + 86400 * (1 + 29 * n / 300)
        m = message(now=now, next_attempt_at=at, scheduled_for=at)
        store.add(m)
        ids.append(m.id)
    store.fold()  # the journal into the shards and their index, as any read does first
    days = [e.name for e in (tmp_path / "home" / "store" / "due" / "at").iterdir()]
    assert len(days) <= 31  # a pass lists these, then only the minutes already due
    assert list(store.claim_due(now + 3600, 60)) == []
    assert sorted(c.id for c in store.claim_due(now + 31 * 86400, 60)) == sorted(ids)


def test_tiny_due_index_still_reads_the_flat_layout_and_the_rebuild_refiles_it(tmp_path):
    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    now = time.time()
    m = message(now=now, next_attempt_at=now - 5)
    store.add(m)
    store.fold()
    at = home / "store" / "due" / "at"
    [(minute_dir, shard)] = [(p.parent, p.name) for p in at.rglob("*") if p.is_file()]
    legacy = at / minute_dir.name / shard  # where the flat layout kept it: at/<minute>/<shard>
    legacy.parent.mkdir(parents=True, exist_ok=True)
    (minute_dir / shard).rename(legacy)
    store._drop_empty(minute_dir)
    assert [c.id for c in store.claim_due(now, 60)] == [m.id]
    store.rebuild()
    assert not legacy.exists() and [p.name for p in at.rglob("*") if p.is_file()] == [shard]


def test_tiny_rebuild_keeps_in_the_index_a_message_queued_into_a_new_shard_meanwhile(tmp_path):
    now = time.time()
    late = message(now=now, next_attempt_at=now - 5)

    class QueuedDuringTheRebuild(TinyStore):
        added = False

        def shards(self) -> list[str]:
            listed = super().shards()  # the rebuild's list of shards is taken...
            if not self.added:
                self.added = True
                self.add(late)  # ...and then a /msg lands in a shard that list does not have
            return listed

    store = QueuedDuringTheRebuild(Layout(tmp_path / "home"), fsync=False)
    store.rebuild()
    assert store.shard_of(late.id) in store.due_shards(now)  # it was dropped from the index until the next sweep
    assert [c.id for c in store.claim_due(now, 60)] == [late.id]


def test_tiny_sweep_goes_only_through_the_shards_a_crash_left_marked(tmp_path, monkeypatch):
    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    stored = [message() for _ in range(40)]
    store.add_many(stored)
    store.update(stored[1].id, lambda m: m.with_changes(state=State.DELIVERED), time.time())

    def lines() -> int:
        return sum(p.read_bytes().count(b"\n") for p in (home / "history").rglob("*.jsonl"))

    before = lines()
    assert not any((home / "store" / "pending").iterdir())  # every write finished: nothing marked
    store.rebuild(changed_only=True)
    assert lines() == before  # a new store's sweep copies nothing again

    class Crash(BaseException):
        pass

    def crash(txn, copies=None):
        raise Crash  # the process dies after the shard write, before the history copy

    # A change whose history copy a crash lost: its shard is written, the copy is not
    monkeypatch.setattr(store, "_history_copies", crash)
    with pytest.raises(Crash):
        store.update(stored[0].id, lambda m: m.with_changes(state=State.FAILED, last_error="gave up"), time.time())
    monkeypatch.undo()
    failed = store.get(stored[0].id)
    assert failed is not None and failed.state == State.FAILED
    assert store.history_load(CLIENT, [failed.id])[failed.id].state == State.QUEUED  # the stale copy
    assert [p.name for p in (home / "store" / "pending").iterdir()] == [store.shard_of(failed.id)]
    before = lines()
    store.rebuild(changed_only=True)
    in_shard = [m for m in stored if store.shard_of(m.id) == store.shard_of(failed.id)]
    assert lines() - before == len(in_shard)  # that shard's records copied again, none of the 39 others
    assert store.history_load(CLIENT, [failed.id])[failed.id].state == State.FAILED
    assert not any((home / "store" / "pending").iterdir())
    before = lines()
    store.rebuild()  # multimsg stats --rebuild: every shard
    assert lines() - before == 40


def test_tiny_scan_for_lapsed_leases_opens_only_the_shards_holding_one(tmp_path, monkeypatch):
    store = TinyStore(Layout(tmp_path / "home"), fsync=False)
    now = time.time()
    backlog = [message(now=now) for _ in range(200)]
    store.add_many(backlog)
    orphan = message(now=now)
    store.add(orphan)
    [dead] = store.claim_due(now, 5, accept=lambda m: m.id == orphan.id)
    opened = []
    txn = store._txn
    monkeypatch.setattr(store, "_txn", lambda shard, durable=True: opened.append(shard) or txn(shard, durable))
    assert [c.id for c in store.claim_due(now + 6, 60, lapsed_only=True)] == [dead.id]
    # Behind the backlog, only the lapsed lease's shard was locked and parsed (each scan went through every due shard)
    assert opened == [store.shard_of(orphan.id)]


def test_tiny_history_copy_refused_leaves_the_mark_and_the_sweep_copies_it(tmp_path, monkeypatch):
    from multimsg.errors import Unavailable

    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    m = message()
    store.add(m)
    store.fold()  # filed from the journal before the history is made to refuse

    def busy(*args, **kwargs):
        raise Unavailable("the history index is busy; try again")

    monkeypatch.setattr(store, "_history_append", busy)
    done = store.update(m.id, lambda x: x.with_changes(state=State.DELIVERED), time.time())
    monkeypatch.undo()
    assert done is not None and store.get(m.id).state == State.DELIVERED  # the change itself is written
    assert [p.name for p in (home / "store" / "pending").iterdir()] == [store.shard_of(m.id)]
    store.rebuild(changed_only=True)
    assert store.history_load(CLIENT, [m.id])[m.id].state == State.DELIVERED
    assert not any((home / "store" / "pending").iterdir())


def test_tiny_marks_are_links_and_plain_files_where_links_are_refused(tmp_path, monkeypatch):
    import errno
    import os

    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    first = message()
    store.add(first)
    store.fold()
    mark = home / "store" / "mark"
    assert mark.stat().st_nlink == 2  # the minute of the due index the message is filed under
    mark.unlink()  # removed by hand: made again by the next mark
    store.add(message())
    store.fold()
    assert mark.stat().st_nlink >= 2

    def refused(*args, **kwargs):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", refused)
    later = message(now=time.time() + 7200)  # due in another minute: a new entry in the due index
    store.add(later)
    store.fold()
    monkeypatch.undo()
    assert [c.id for c in store.claim_due(time.time() + 7300, 60, accept=lambda m: m.id == later.id)] == [later.id]


def test_tiny_store_written_before_the_marks_is_gone_through_whole_once(tmp_path):
    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    store.add_many([message() for _ in range(5)])
    (home / "store" / "pending").rmdir()  # as a data folder of a version without the marks is
    store = TinyStore(Layout(home), fsync=False)

    def lines() -> int:
        return sum(p.read_bytes().count(b"\n") for p in (home / "history").rglob("*.jsonl"))

    before = lines()
    store.rebuild(changed_only=True)
    assert lines() - before == 5  # its first sweep goes through every shard
    before = lines()
    store.rebuild(changed_only=True)
    assert lines() == before  # and only once


# -- the Redis backend's own promises -------------------------------------------------------------------
@pytest.fixture
def redis_backend(redis_url):
    from multimsg.queue.backends.redis import RedisSpool, RedisStore, connect

    client = connect(redis_url)
    yield RedisStore(client, "t"), RedisSpool(client, "t", ttl=1, blob_max=3 * 1024 * 1024), client
    client.close()


def test_redis_unreachable_is_unavailable_not_a_connection_error():
    from multimsg.errors import Unavailable
    from multimsg.queue.backends.redis import UNREACHABLE, RedisSpool, RedisStore, connect
    from tests.gatewayproc import free_port

    client = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    store, spool = RedisStore(client), RedisSpool(client, ttl=60)
    calls = [lambda: store.add(message()), lambda: store.get("x" * 16), lambda: list(store.claim_due(time.time(), 5)),
             lambda: store.finish(message(claim="c"), {}, time.time()), lambda: store.report("x" * 16, time.time()),
             lambda: store.archive("x" * 16, time.time()), lambda: store.counters.snapshot(), lambda: store.rebuild(),
             lambda: spool.put(CLIENT, [b"x"], "x"), lambda: spool.get(CLIENT, "d" * 16), lambda: spool.usage(CLIENT)]
    for call in calls:
        with pytest.raises(Unavailable, match=UNREACHABLE):
            call()


def test_redis_keys_carry_one_hash_tag_and_uploads_over_the_cap_are_too_large(redis_backend):
    from multimsg.errors import TooLarge

    store, spool, client = redis_backend
    store.add(message())
    spool.put(CLIENT, [b"x" * 1000], "x.bin")
    assert all(b"{t}" in key for key in client.keys("*"))
    with pytest.raises(TooLarge):
        spool.put(CLIENT, [b"x" * (1024 * 1024)] * 4, "big.bin")
    assert not client.keys("mm:{t}:blob:*") or len(client.keys("mm:{t}:blob:*")) == 1  # the refused one left nothing


def test_redis_upload_expires_while_its_message_keeps_the_content(redis_backend):
    from multimsg.errors import NotFound

    _, spool, client = redis_backend
    info = spool.put(CLIENT, [b"a" * (1024 * 1024), b"b" * 10], "x.bin")  # two chunks
    spool.attach(CLIENT, info.data_id, "M" * 16)
    time.sleep(1.2)  # the upload's TTL (1 s) as Redis expiry
    with pytest.raises(NotFound):
        spool.get(CLIENT, info.data_id)
    content = spool.message_content(CLIENT, "M" * 16)
    assert content.size == 1024 * 1024 + 10 and content.read()[-10:] == b"b" * 10 and content.head(2) == b"aa"
    spool.release(CLIENT, "M" * 16)
    assert client.keys("mm:{t}:blob:*") == []  # the last reference took the blob with it


def test_redis_malformed_record_is_failed_with_the_reason_not_yielded(redis_backend):
    store, _, client = redis_backend
    m = message()
    store.add(m)
    client.hset(f"mm:{{t}}:m:{m.id}", "r", '{"id": "%s", "state": "queued"}' % m.id)
    assert list(store.claim_due(time.time() + 1, 60)) == []
    import json

    record = json.loads(client.hget(f"mm:{{t}}:m:{m.id}", "r"))
    assert record["state"] == "failed" and record["last_error"].startswith("malformed record")
    assert store.rebuild() == 0 and list(store.claim_due(time.time() + 1, 60)) == []


def test_redis_figures_are_the_memory_backends_figures(redis_backend):
    """The same changes, counted by figures.count (memory) and by the Redis operations, give the same snapshot."""
    redis_store = redis_backend[0]
    memory_store = MemoryStore()
    now = time.time() - 1000  # every change in the past hour (the Redis figures read the last hour's minutes)
    for store in (memory_store, redis_store):
        batch = [message(id=f"F{n:015d}", now=now, serv=serv) for n, serv in enumerate(["counting", "counting", "other", "counting"])]
        for m in batch:
            store.add(m)
        claims = {c.id: c for c in store.claim_due(now + 1, 60)}
        store.finish(claims[batch[0].id], {"state": State.DELIVERED}, now + 3)
        store.finish(claims[batch[1].id], {"attempts": 1, "next_attempt_at": now + 10}, now + 4)
        store.finish(claims[batch[2].id], {"state": State.FAILED, "last_error": "no"}, now + 700)
        store.archive(batch[0].id, now + 5)
    at = now + 1000
    assert redis_store.counters.snapshot(at)["services"] == memory_store.counters.snapshot(at)["services"]
    assert redis_store.rebuild() == 3
    assert redis_store.counters.snapshot(at)["services"] == memory_store.counters.snapshot(at)["services"]


# -- receipts and the outbox -------------------------------------------------------------------
from multimsg.queue.outbox import Event  # noqa: E402
from multimsg.queue.receipts import Receipt  # noqa: E402


def _delivered(store, wamid: str = "wamid.A") -> Message:
    m = message(state=State.DELIVERED, platform_ids=[wamid], attempts=1)
    store.add(m)
    return m


def test_update_is_a_read_modify_write_and_none_leaves_the_message(store):
    m = message()
    store.add(m)
    assert store.update(m.id, lambda cur: cur.with_changes(last_error="x"), time.time()).last_error == "x"
    assert store.update(m.id, lambda cur: None, time.time()) is None
    assert store.get(m.id).last_error == "x"
    assert store.update("f" * 16, lambda cur: cur, time.time()) is None


def test_receipts_only_go_up_and_repeats_change_nothing(store):
    m = _delivered(store)
    now = time.time()
    after, event = store.apply_receipt(m.id, Receipt("wamid.A", "read", 30.0), now)
    assert event == "message.read" and after.receipt == {"read": 30.0}
    assert store.apply_receipt(m.id, Receipt("wamid.A", "read", 31.0), now) == (None, None)  # a repeat
    after, event = store.apply_receipt(m.id, Receipt("wamid.A", "delivered", 20.0), now)  # late, lower
    assert event is None and after.receipt == {"read": 30.0, "delivered": 20.0}
    assert store.get(m.id).state == State.DELIVERED
    assert store.apply_receipt(m.id, Receipt("wamid.OTHER", "read", 1.0), now) == (None, None)  # not its wamid


def test_a_receipt_for_a_leased_message_marks_it_delivered_and_fences_the_pass(store):
    m = message()
    store.add(m)
    now = time.time()
    claim = next(iter(store.claim_due(now, 60)))
    after, event = store.apply_receipt(m.id, Receipt("wamid.Z", "sent", now), now)
    assert event == "message.delivered" and after.state == State.DELIVERED and after.platform_ids == ["wamid.Z"]
    assert store.finish(claim, {"state": State.QUEUED, "attempts": 1}, now) is None  # the pass writes nothing
    assert list(store.claim_due(now + 120, 60)) == []  # never sent again
    assert states(store).get("delivered") == 1


def test_a_failed_receipt_fails_an_unreported_message_only(store):
    now = time.time()
    m = _delivered(store)
    after, event = store.apply_receipt(m.id, Receipt("wamid.A", "failed", now, {"code": 131026, "title": "Message undeliverable"}), now)
    assert event == "message.failed" and after.state == State.FAILED and "131026" in after.last_error
    reported = _delivered(store, "wamid.B")
    store.report(reported.id, now)
    after, event = store.apply_receipt(reported.id, Receipt("wamid.B", "failed", now, {"code": 1}), now)
    assert event == "message.failed" and after.state == State.DELIVERED and after.failure == {"code": 1}


def _event(now: float, **changes) -> Event:
    return Event(id="msg_" + next(_ids), url="http://127.0.0.1:9/cb", body='{"type": "message.read", "data": "ü 🎉"}',
                 message_id="m", created_at=now, next_at=now, **changes)


def test_the_outbox_leases_events_and_fences_a_lapsed_lease(store):
    now = time.time()
    store.enqueue_event(_event(now))
    store.enqueue_event(_event(now + 100))  # not due yet
    assert store.outbox_figures()["pending"] == 2
    first = store.claim_events(now, 10)
    assert len(first) == 1 and first[0].claim and "🎉" in first[0].body
    assert store.claim_events(now + 1, 10) == []  # leased
    second = store.claim_events(now + 11, 10)  # the lease lapsed: taken back
    assert [e.id for e in second] == [first[0].id] and second[0].claim != first[0].claim
    assert store.finish_event(first[0], None, True, now) is False  # fenced
    assert store.finish_event(second[0], now + 50, False, now) is True  # retried later, same id
    assert store.claim_events(now + 20, 10) == []
    again = store.claim_events(now + 51, 10)
    assert [e.id for e in again] == [first[0].id] and again[0].attempts == 1
    assert store.finish_event(again[0], None, True, now) is True
    later = store.claim_events(now + 101, 10)
    assert store.finish_event(later[0], None, False, now) is True
    assert store.outbox_figures() == {"pending": 0, "delivered": 1, "given_up": 1}


def _events(store, now: float) -> list[Event]:
    """Every event due by ``now``, leased (and so taken out of the way of the next look)."""
    return store.claim_events(now, 3600, limit=1000)


def test_a_final_state_is_written_with_its_event_in_one_step_and_once(store):
    now = time.time()
    m, quiet = message(now=now, callback="http://127.0.0.1:9/cb"), message(now=now)
    store.add(m)
    store.add(quiet)
    claims = {c.id: c for c in store.claim_due(now, 60)}
    written = store.finish(claims[m.id], {"state": State.DELIVERED, "attempts": 1, "platform_ids": ["p1"]}, now)
    assert written.state == State.DELIVERED and written.events == []
    assert store.finish(claims[quiet.id], {"state": State.FAILED, "last_error": "x"}, now).events == []  # no callback URL
    assert store.finish(claims[m.id], {"state": State.FAILED}, now) is None  # a second finish is fenced: no second event
    [event] = _events(store, now)
    body = json.loads(event.body)
    assert (body["type"], body["data"]["id"], body["data"]["state"], body["data"]["platform_ids"]) == \
        ("message.delivered", m.id, "delivered", ["p1"])
    assert event.url == m.callback and event.message_id == m.id and event.attempts == 0
    assert store.get(m.id).events == [] and store.outbox_figures()["pending"] == 1


def test_a_retry_writes_no_event(store):
    now = time.time()
    store.add(message(now=now, callback="http://127.0.0.1:9/cb"))
    [claim] = store.claim_due(now, 60)
    assert store.finish(claim, {"state": State.QUEUED, "attempts": 1, "next_attempt_at": now + 5}, now).events == []
    assert _events(store, now) == []


def test_a_receipt_is_written_with_its_event_in_one_step(store):
    now = time.time()
    m = message(state=State.DELIVERED, platform_ids=["wamid.A"], attempts=1, callback="http://127.0.0.1:9/cb")
    store.add(m)
    after, kind = store.apply_receipt(m.id, Receipt("wamid.A", "read", 30.0), now)
    assert kind == "message.read" and after.events == []
    assert store.apply_receipt(m.id, Receipt("wamid.A", "read", 31.0), now) == (None, None)  # a repeat: no event
    [event] = _events(store, now)
    body = json.loads(event.body)
    assert body["type"] == "message.read" and "read" in body["data"]["receipt"]


def test_events_carried_by_a_record_are_stored_once_under_their_own_id(store):
    now = time.time()
    event = _event(now)
    store.add(message().with_changes(events=[event.to_record()]))
    store.enqueue_event(event)  # the same event again (a move done twice): still one
    [got] = _events(store, now)
    assert got.id == event.id and got.body == event.body and store.outbox_figures()["pending"] == 1


def test_tiny_completes_a_move_into_the_outbox_that_a_crash_interrupted(tmp_path):
    """The state a kill -9 leaves between the shard write and the outbox write (tests/test_crash.py kills a real
    process there): the record holds the event, its shard is marked; the next claim_events moves it, once."""
    store = TinyStore(Layout(tmp_path / "home"), fsync=False)
    now = time.time()
    m = message(state=State.DELIVERED, callback="http://127.0.0.1:9/cb")
    store.add(m)
    store.fold()
    event = _event(now).with_changes(message_id=m.id)
    shard = store.shard_of(m.id)
    path = store.layout.shard(shard)
    document = json.loads(path.read_text())
    for record in document["messages"].values():
        record["events"] = [event.to_record()]
    path.write_text(json.dumps(document))
    (store.noted_dir / shard).touch()
    assert store.outbox_figures()["pending"] == 0
    [got] = store.claim_events(now, 60)
    assert got.id == event.id and store.get(m.id).events == [] and not (store.noted_dir / shard).exists()
    assert store.finish_event(got, None, True, now)
    assert store.claim_events(now + 120, 60) == [] and store.outbox_figures()["delivered"] == 1


# -- S3: bytes on a local S3-compatible server (moto), references in Redis ------------------------------------
def _objects(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_s3_big_upload_streams_in_parts_and_the_last_reference_deletes_the_object(request):
    from multimsg.errors import NotFound
    from multimsg.queue.backends.s3_spool import PART

    spool, client, s3, bucket = s3_spool(request, ttl=1)
    blob = bytes(range(256)) * (PART // 256) + b"tail" * 1000  # over one part: a multipart upload
    info = spool.put(CLIENT, (blob[i:i + 65536] for i in range(0, len(blob), 65536)), "big.bin")
    [key] = _objects(s3, bucket)
    assert key.startswith("uploads/t/") and s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(blob)
    spool.attach(CLIENT, info.data_id, "A" * 16)
    spool.attach(CLIENT, info.data_id, "B" * 16)  # a second message: a second reference, no copy
    assert len(_objects(s3, bucket)) == 1
    assert not any(k.startswith(b"mm:{t}:blob:") and client.hget(k, "0") for k in client.keys("mm:{t}:blob:*"))  # no bytes in Redis
    time.sleep(1.2)  # the upload expires; the messages keep their content
    with pytest.raises(NotFound):
        spool.get(CLIENT, info.data_id)
    content = spool.message_content(CLIENT, "A" * 16)
    assert content.head(4) == blob[:4] and content.size == len(blob)
    with content.open() as stream:  # a stream from the server, read piece by piece
        digest = b"".join(iter(lambda: stream.read(1 << 20), b""))
    assert digest == blob
    spool.release(CLIENT, "A" * 16)
    assert len(_objects(s3, bucket)) == 1  # B still refers to it
    spool.release(CLIENT, "B" * 16)
    assert _objects(s3, bucket) == [] and client.keys("mm:{t}:blob:*") == []
    with pytest.raises(FileNotFoundError):
        spool.message_content(CLIENT, "B" * 16)


def test_s3_sweep_deletes_objects_whose_upload_expired_unused_and_keeps_live_ones(request):
    spool, client, s3, bucket = s3_spool(request, ttl=1)
    unused = spool.put(CLIENT, [b"nadie"], "a.txt")
    kept = spool.put(CLIENT, [b"alguien"], "b.txt")
    key_of = {d.data_id: spool.object_key(client.hget(spool.keys.upload(CLIENT, d.data_id), "blob").decode()) for d in (unused, kept)}
    spool.attach(CLIENT, kept.data_id, "K" * 16)
    s3.put_object(Bucket=bucket, Key="uploads/other/XXXXXXXXXXXXXXXX", Body=b"another deployment's")
    time.sleep(1.2)  # both uploads expire; only the unused one's object is an orphan
    assert spool.sweep(time.time() + 10, live=["K" * 16], older_than=5) == 1
    assert sorted(_objects(s3, bucket)) == sorted([key_of[kept.data_id], "uploads/other/XXXXXXXXXXXXXXXX"])
    assert spool.message_content(CLIENT, "K" * 16).read() == b"alguien"


def test_s3_engine_delivers_everything_once_with_content_from_the_object_store(request):
    from multimsg.queue.backends.redis import RedisStore

    spool, client, _, _ = s3_spool(request)
    store = RedisStore(client, "t")
    service = Counting()
    ids = queue_texts(store, spool, 30)
    summary = engine(store, spool, service).run_pass()
    assert summary["delivered"] == 30 and sorted(service.sent) == sorted(ids)
