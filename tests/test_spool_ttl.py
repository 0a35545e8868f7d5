"""Uploads expire (MULTIMSG_DATA_TTL) and are swept by the drain; messages keep their own content.

A data file older than its time-to-live is deleted by the drain's sweep (at
most every MULTIMSG_SWEEP_INTERVAL), and its id is refused from then on; a
message queued from it still goes out, from its own hard link. A reported
final state moves the record to the append-only archive file, out of TinyDB,
and the message's content goes with it.
"""

from __future__ import annotations

import json
import time


def spool_files(home, name: str) -> list:
    return list((home / "spool").glob(f"*/{name}")) + list((home / "spool").glob(f"*/{name}.json"))


def in_store(home, message_id: str) -> bool:
    shards = (json.loads(shard.read_text()).get("messages", {}) for shard in (home / "store").glob("*.json"))
    return any(record.get("id") == message_id for records in shards for record in records.values())


def test_an_expired_upload_is_swept_while_its_queued_message_still_goes_out_and_is_archived(make_gateway, telegram):
    # The retry comes 1.5-3 s after the first try; the upload expires after 1 s.
    env = {"MULTIMSG_DATA_TTL": "1", "MULTIMSG_SWEEP_INTERVAL": "0", "MULTIMSG_RETRY_BASE": "3", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"}
    gateway = make_gateway(env=env)
    data_id = gateway.upload_id(b"queued before the upload expired")
    message_id = gateway.msg(id=data_id, serv="telegram", dest="830000001", type="text").text
    telegram.script("server_error", dest="830000001")  # the first try fails: the message stays queued
    assert len(spool_files(gateway.home, data_id)) == 2

    deadline = time.monotonic() + 10
    while spool_files(gateway.home, data_id):  # older than 1 s: the next pass sweeps it
        assert time.monotonic() < deadline, "the expired upload was not swept"
        gateway.drain()
        time.sleep(0.1)
    fresh = gateway.upload_id(b"young enough to stay")
    gateway.drain()
    assert len(spool_files(gateway.home, fresh)) == 2  # younger than the TTL: kept
    refused = gateway.msg(id=data_id, serv="telegram", dest="830000002", type="text")
    assert refused.status_code == 404
    assert gateway.state(message_id)["state"] == "queued"  # its upload is gone, it is not

    report = gateway.wait_state(message_id)
    assert report["state"] == "delivered" and report["attempts"] == 1
    assert [r["fields"]["text"] for r in telegram.received(ok_only=True)] == ["queued before the upload expired"]

    # Reported once, then archived: in the append-only archive, no longer in TinyDB, its content released.
    assert gateway.cons(message_id).status_code == 404
    [archive] = (gateway.home / "archive").glob("messages-*.jsonl")
    archived = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [(r["id"], r["state"]) for r in archived] == [(message_id, "delivered")]
    assert not in_store(gateway.home, message_id)
    assert not spool_files(gateway.home, f"msg/{message_id}")


def test_the_sweep_runs_at_most_once_per_sweep_interval_not_per_pass(make_gateway):
    gateway = make_gateway(env={"MULTIMSG_DATA_TTL": "0.5", "MULTIMSG_SWEEP_INTERVAL": "600"})
    gateway.drain()  # the process's first pass sweeps (nothing is old yet)
    data_id = gateway.upload_id(b"expires in half a second")
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        gateway.drain()
    assert gateway.msg(id=data_id, serv="telegram", dest="830000003", type="text").status_code == 404  # expired...
    assert len(spool_files(gateway.home, data_id)) == 2  # ...but only swept by the pass due in 10 minutes


def test_a_result_nobody_asks_for_is_archived_after_the_result_ttl(make_gateway, telegram):
    env = {"MULTIMSG_RESULT_TTL": "1", "MULTIMSG_SWEEP_INTERVAL": "0", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"}
    gateway = make_gateway(env=env)
    unread = gateway.send(b"nobody will ask about me", "telegram", "830000010")
    gateway.drain()
    telegram.wait_for(count=1)
    assert in_store(gateway.home, unread)  # delivered, waiting for /cons

    deadline = time.monotonic() + 10
    while in_store(gateway.home, unread):  # older than 1 s: a later pass archives it
        assert time.monotonic() < deadline, "the unreported result stayed in the store"
        gateway.drain()
        time.sleep(0.1)
    [archive] = (gateway.home / "archive").glob("messages-*.jsonl")
    assert [json.loads(line)["id"] for line in archive.read_text().splitlines()] == [unread]
    assert not spool_files(gateway.home, f"msg/{unread}")
    assert gateway.cons(unread).status_code == 404
