"""Uploads encrypted at rest, through a real gateway on both backends (embedded and a real redis-server).

What a stolen data folder (or a Redis dump) shows of an upload: neither its
content nor its file name; the drain still delivers it byte-identical; a
storage key file is made outside the data folder with a WARNING saying where;
``multimsg keys rotate-storage`` re-wraps the data keys without rewriting the
content; a tampered chunk fails the message with the reason (no 5xx); an
upload stored in the clear before encryption still drains.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from multimsg.layout import Layout
from multimsg.queue.backends.files import FileSpool
from multimsg.queue.sealed import CHUNK, HEADER
from tests import media
from tests.gatewayproc import ROOT
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

SEAL = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
LOOPBACK = "mac:00:00:00:00:00:00"  # who a loopback client is
SECRET = b"the launch code is 0000 - do not tell anyone. " * 40
NAME = "plan-secreto-2026.pdf"


@pytest.fixture(params=["embedded", "redis"])
def backend(request):
    return request.param


@pytest.fixture
def runner(request, backend, make_gateway, tmp_path):
    env = {"MULTIMSG_STORAGE_KEY_FILE": str(tmp_path / "keys-elsewhere" / "storage-keys")}
    if backend == "redis":
        env |= {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url"), "MULTIMSG_KEY_SEAL": SEAL}
    gateway = make_gateway("home", env=env)
    gateway.key_file = tmp_path / "keys-elsewhere" / "storage-keys"
    gateway.redis_url = env.get("MULTIMSG_BACKEND")
    return gateway


def stored_bytes(runner) -> list[bytes]:
    """Everything the gateway keeps: every file of the data folder, and every value in Redis."""
    found = [p.read_bytes() for p in runner.home.rglob("*") if p.is_file()]
    if runner.redis_url:
        import redis

        client = redis.Redis.from_url(runner.redis_url)
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                found.append(client.get(key))
            elif kind == b"hash":
                found += [b"%s=%s" % pair for pair in client.hgetall(key).items()]
            elif kind == b"list":
                found += client.lrange(key, 0, -1)
            elif kind in (b"set", b"zset"):
                found += list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
            found.append(key)
        client.close()
    return found


def leaks(runner, *needles: bytes) -> list[bytes]:
    return [n for n in needles if any(n in blob for blob in stored_bytes(runner))]


def test_a_copy_of_the_store_shows_no_content_and_no_file_name_and_the_drain_delivers_it_whole(runner, telegram):
    document = media.pad(media.pdf("the launch code is 0000"), 3 * CHUNK + 123)  # several chunks
    data_id = runner.upload_id(document, filename=NAME)
    text_id = runner.upload_id(SECRET, filename="nota-secreta.txt")
    assert runner.msg(id=data_id, serv="telegram", dest="42", type="document").status_code == 200
    assert runner.msg(id=text_id, serv="telegram", dest="43", type="text").status_code == 200
    assert leaks(runner, SECRET[:40], b"launch code is 0000", NAME.encode(), b"nota-secreta") == []  # spool and store records

    summary = runner.drain()
    assert summary["delivered"] == 2, summary
    sent = {str(r["dest"]): r for r in telegram.wait_for(count=2)}
    upload = sent["42"]["files"]["document"]
    assert (upload["sha256"], upload["size"], upload["filename"]) == (hashlib.sha256(document).hexdigest(), len(document), NAME)
    assert sent["43"]["fields"]["text"] == SECRET.decode()


def test_the_storage_key_is_made_outside_the_data_folder_with_a_warning_saying_where(runner):
    runner.upload_id(b"first upload")
    assert runner.key_file.exists() and runner.home not in runner.key_file.parents
    assert stat.S_IMODE(runner.key_file.stat().st_mode) == 0o600
    assert f"made a new storage key in {runner.key_file}" in runner.log()
    assert not any(runner.key_file.read_bytes().strip() in blob for blob in stored_bytes(runner))


def test_rotation_rewraps_data_keys_without_rewriting_content(runner, telegram, backend):
    data_id = runner.upload_id(SECRET, filename="t.txt")
    message_id = runner.msg(id=data_id, serv="telegram", dest="44", type="text").text
    before = stored_bytes(runner)
    old_key = runner.key_file.read_bytes()
    env = {**os.environ, **runner.env, "MULTIMSG_HOME": str(runner.home), "PYTHONPATH": str(ROOT)}
    rotated = subprocess.run([sys.executable, "-m", "multimsg", "keys", "rotate-storage"], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=120)
    assert rotated.returncode == 0, rotated.stderr + rotated.stdout
    assert "re-wrapped 1 data keys" in rotated.stdout, rotated.stdout
    new_key = runner.key_file.read_bytes()
    assert new_key != old_key and len(new_key.split()) == 1  # the old key is gone: nothing needs it any more
    after = stored_bytes(runner)
    bodies = [b for b in after if len(b) > HEADER + 500 and b not in before]  # the sealed object, changed
    assert bodies and all(any(b[HEADER:] == o[HEADER:] for o in before if len(o) == len(b)) for b in bodies)  # only its head
    assert runner.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == SECRET.decode()


def test_a_tampered_chunk_fails_the_message_with_a_reason_not_a_5xx(make_gateway, tmp_path, telegram):
    runner = make_gateway("home", env={"MULTIMSG_STORAGE_KEY_FILE": str(tmp_path / "k" / "storage-keys")})
    content = media.pad(media.pdf(), 2 * CHUNK + 10)
    data_id = runner.upload_id(content, filename="doc.pdf")
    message_id = runner.msg(id=data_id, serv="telegram", dest="45", type="document").text
    path = runner.home / "spool" / "mac_00_00_00_00_00_00" / data_id  # the message's link is the same file
    with open(path, "r+b") as stored:
        stored.seek(HEADER + CHUNK + 16 + 100)  # inside the second chunk
        byte = stored.read(1)
        stored.seek(-1, os.SEEK_CUR)
        stored.write(bytes([byte[0] ^ 1]))
    report = runner.wait_state(message_id)
    assert report["state"] == "failed", report
    assert "failed authentication" in report["last_error"], report
    assert not [r for r in telegram.received() if r.get("status") == 200 and str(r.get("dest")) == "45"]


def test_an_upload_stored_in_the_clear_before_encryption_still_drains(make_gateway, tmp_path, telegram):
    home = tmp_path / "home"
    legacy = FileSpool(Layout(home), ttl=3600, fsync=False).put(LOOPBACK, [b"stored before encryption was on"], "old.txt")
    runner = make_gateway("home", env={"MULTIMSG_STORAGE_KEY_FILE": str(tmp_path / "k" / "storage-keys")}, home=home)
    message_id = runner.msg(id=legacy.data_id, serv="telegram", dest="46", type="text").text
    assert runner.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "stored before encryption was on"


def test_a_key_file_inside_the_data_folder_is_refused_at_start(tmp_path):
    env = {**os.environ, "MULTIMSG_HOME": str(tmp_path / "home"), "MULTIMSG_STORAGE_KEY_FILE": str(tmp_path / "home" / "k"),
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "multimsg", "keys", "rotate-storage"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert run.returncode != 0 and "inside the data folder" in run.stderr
