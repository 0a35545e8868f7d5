"""The message store: sharded TinyDB files, atomic writes, claims and the archive."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from multimsg.ids import new_id
from multimsg.queue import states
from multimsg.queue.layout import Layout
from multimsg.queue.store import MemoryStore, TinyStore


def record(**changes) -> dict:
    now = time.time()
    return {"id": new_id(), "client": "mac:00:00:00:00:00:00", "serv": "telegram", "dest": "1", "type": "text",
            "state": states.QUEUED, "attempts": 0, "created_at": now, "updated_at": now, "next_attempt_at": now,
            "claim": None, **changes}


@pytest.fixture(params=["tiny", "memory"])
def store(request, tmp_path):
    return TinyStore(Layout(tmp_path), fsync=False) if request.param == "tiny" else MemoryStore()


def test_add_get_update_archive(store):
    r = record()
    store.add(r)
    assert store.get(r["id"])["dest"] == "1"
    assert store.update(r["id"], {"state": states.DELIVERED})["state"] == states.DELIVERED
    assert store.update("nope" * 4, {"state": states.FAILED}) is None
    assert store.archive(r["id"])["state"] == states.DELIVERED
    assert store.get(r["id"]) is None


def test_claim_takes_due_messages_once_per_pass_and_reclaims_a_dead_pass(store):
    due, later, done = record(), record(next_attempt_at=time.time() + 3600), record(state=states.DELIVERED)
    for r in (due, later, done):
        store.add(r)
    assert [r["id"] for r in store.claim_due(time.time(), "pass-1")] == [due["id"]]
    assert list(store.claim_due(time.time(), "pass-1")) == []  # already claimed by this pass
    # pass-1 died; the next pass takes its claims back.
    assert [r["id"] for r in store.claim_due(time.time(), "pass-2")] == [due["id"]]


def test_records_are_sharded_and_archived_to_an_append_only_file(tmp_path):
    store = TinyStore(Layout(tmp_path), fsync=False)
    records = [record() for _ in range(200)]
    for r in records:
        store.add(r)
    shards = list((tmp_path / "store").glob("*.json"))
    assert len(shards) > 150  # spread over many small files, not one growing file
    store.archive(records[0]["id"])
    [archive] = (tmp_path / "archive").glob("messages-*.jsonl")
    assert json.loads(archive.read_text().splitlines()[0])["id"] == records[0]["id"]
    assert all("tmp" not in p.name for p in (tmp_path / "store").iterdir())


def _writer(home: str, n: int, out) -> None:
    store = TinyStore(Layout(__import__("pathlib").Path(home)), fsync=False)
    ids = []
    for _ in range(n):
        r = record()
        store.add(r)
        ids.append(r["id"])
    out.put(ids)


def test_several_processes_adding_at_once_lose_nothing(tmp_path):
    # Few shards force the processes to collide on the same files.
    TinyStore.SHARD_HEX_DIGITS, saved = 1, TinyStore.SHARD_HEX_DIGITS
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(str(tmp_path), 60, out)) for _ in range(4)]
        for p in procs:
            p.start()
        ids = [i for _ in procs for i in out.get(timeout=60)]
        for p in procs:
            p.join(60)
        store = TinyStore(Layout(tmp_path), fsync=False)
        assert len(ids) == 240
        assert all(store.get(i) is not None for i in ids)
    finally:
        TinyStore.SHARD_HEX_DIGITS = saved


def test_a_message_gets_a_copy_when_its_upload_cannot_take_another_link(tmp_path, monkeypatch):
    import errno
    import os

    from multimsg.queue.spool import FileSpool

    spool = FileSpool(Layout(tmp_path), ttl=3600, fsync=False)
    info = spool.put("ip:127.0.0.2", [b"shared content"], "f.txt")

    def too_many_links(source, target):
        raise OSError(errno.EMLINK, "Too many links")

    monkeypatch.setattr(os, "link", too_many_links)  # what ext4 says after ~65,000 links
    path = spool.attach("ip:127.0.0.2", info.data_id, "M" * 16)
    assert path.read_bytes() == b"shared content"
    assert path.stat().st_ino != info.path.stat().st_ino


def test_unreported_lists_final_records_older_than_the_cutoff(store):
    old_final = record(state=states.DELIVERED, updated_at=100.0)
    new_final = record(state=states.FAILED, updated_at=time.time())
    old_queued = record(updated_at=100.0)
    for r in (old_final, new_final, old_queued):
        store.add(r)
    assert list(store.unreported(time.time() - 60)) == [old_final["id"]]
