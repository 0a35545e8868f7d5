"""Idempotency keys on POST /data and POST /msg, through real gateways on the embedded store and on Redis.

A repeat of a request with the same ``Idempotency-Key`` gets the first answer
(same id, same status, ``Idempotent-Replayed: true``) and creates nothing; a
repeat with another body is 422; a key whose first request is still in
progress is 409. The e2e retries: a raw socket that sends ``/msg`` and closes
without reading the answer, then a retry with the key; and ``multimsg send``
through a proxy that drops the gateway's answer to the first ``/msg``: each
ends with exactly one message delivered.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from multimsg.idempotency import FileKeyRecords, Fingerprint, once, pending_value, record_name
from tests.backend_gateways import backend_gateway  # noqa: F401  (fixture)
from tests.gatewayproc import ROOT, free_port
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)


# -- the records' contract, over both peers ---------------------------------------------------------
@pytest.fixture(params=["file", "redis"])
def records(request, tmp_path):
    if request.param == "file":
        return FileKeyRecords(tmp_path / "idempotency", fsync=False)
    from multimsg.queue.backends.redis import connect
    from multimsg.queue.backends.redis_idempotency import RedisKeyRecords

    client = connect(request.getfixturevalue("redis_url"))
    request.addfinalizer(client.close)
    return RedisKeyRecords(client, "t")


def _answer(n: int):
    from multimsg.idempotency import Answer

    return Answer(200, f"id{n}", {"id": f"id{n}"})


def test_records_a_first_request_runs_once_and_a_repeat_gets_its_answer(records):
    name, calls = record_name("ip:1", "msg", "k1"), []

    def run():
        calls.append(1)
        return _answer(len(calls))

    assert once(records, name, run, lambda: "fp", ttl=60) == (_answer(1), False)
    assert once(records, name, run, lambda: "fp", ttl=60) == (_answer(1), True)
    assert len(calls) == 1
    from multimsg.errors import Conflict, Unprocessable

    with pytest.raises(Unprocessable):
        once(records, name, run, lambda: "other", ttl=60)
    other = record_name("ip:2", "msg", "k1")  # another client's key of the same name is another record
    assert once(records, other, run, lambda: "fp", ttl=60) == (_answer(2), False)
    held = record_name("ip:1", "msg", "k2")
    assert records.begin(held, pending_value("t", time.time(), 60), 60, time.time()) is None
    with pytest.raises(Conflict):
        once(records, held, run, lambda: "fp", ttl=60)


def test_records_a_failed_first_request_frees_the_key_and_a_lapsed_hold_is_taken(records):
    name = record_name("ip:1", "data", "k")

    def fail():
        raise ValueError("refused")

    with pytest.raises(ValueError):
        once(records, name, fail, lambda: "fp", ttl=60)
    assert once(records, name, lambda: _answer(1), lambda: "fp", ttl=60) == (_answer(1), False)
    lapsed = record_name("ip:1", "data", "lapsed")
    assert records.begin(lapsed, pending_value("t", time.time(), 0.2), 0.2, time.time()) is None
    deadline = time.monotonic() + 10
    while records.begin(lapsed, pending_value("u", time.time(), 60), 60, time.time()) is not None:
        assert time.monotonic() < deadline, "a lapsed hold was never given up"
        time.sleep(0.05)


class _Crash(BaseException):
    """The process dies here: no ``except`` of ours runs."""


class _DiesBeforeRecording:
    """``records`` whose first ``complete`` never happens: the request's process dies after storing, before its answer is recorded."""

    def __init__(self, records):
        self.records, self.died = records, False

    def __getattr__(self, name):
        return getattr(self.records, name)

    def complete(self, *args, **kwargs):
        if not self.died:
            self.died = True
            raise _Crash
        return self.records.complete(*args, **kwargs)


def test_records_a_message_stored_by_a_request_that_died_is_found_not_made_again(records):
    name, stored = record_name("ip:1", "msg", "k"), {}

    def run(reserved):
        stored[reserved] = len(stored) + 1
        return _answer(stored[reserved])

    def find(message_id):
        return _answer(stored[message_id]) if message_id in stored else None

    dying = _DiesBeforeRecording(records)
    with pytest.raises(_Crash):
        once(dying, name, run, lambda: "fp", ttl=60, lease=0.5, find=find)
    [reserved] = stored
    # Its hold is still live: a retry gets the stored message's answer, not a 409 for the rest of the lease
    assert once(dying, name, run, lambda: "fp", ttl=60, find=find) == (_answer(1), True)
    from multimsg.errors import Unprocessable

    with pytest.raises(Unprocessable):
        once(dying, name, run, lambda: "another request", ttl=60, find=find)
    time.sleep(0.6)  # the dead request's hold lapses: a retry takes it over and keeps the reserved id
    assert once(dying, name, run, lambda: "fp", ttl=60, find=find) == (_answer(1), True)
    assert once(records, name, run, lambda: "fp", ttl=60, find=find) == (_answer(1), True)  # recorded now: a plain replay
    assert list(stored) == [reserved]


def test_records_a_request_that_died_before_storing_leaves_its_id_to_the_retry(records):
    name, made = record_name("ip:1", "send", "k"), []

    def dies(reserved):
        made.append(reserved)
        raise _Crash  # before the message is stored: nothing under the id

    from multimsg.errors import Conflict

    with pytest.raises(_Crash):
        once(_NoRelease(records), name, dies, lambda: "fp", ttl=60, lease=0.3, find=lambda message_id: None)
    with pytest.raises(Conflict):  # held, and nothing stored yet: still being processed, as far as anyone can tell
        once(records, name, made.append, lambda: "fp", ttl=60, find=lambda message_id: None)
    time.sleep(0.4)
    answer, replayed = once(records, name, lambda reserved: _answer(len(made.append(reserved) or made)), lambda: "fp",
                            ttl=60, find=lambda message_id: None)
    assert not replayed and made[0] == made[1]  # the retry creates it under the id the dead request reserved


class _NoRelease(_DiesBeforeRecording):
    """A request that dies mid-way releases nothing either."""

    def release(self, *args, **kwargs):
        pass


def test_file_records_expire_and_are_swept(tmp_path):
    records = FileKeyRecords(tmp_path / "idempotency", fsync=False)
    name = record_name("ip:1", "msg", "k")
    once(records, name, lambda: _answer(1), lambda: "fp", ttl=60)
    assert records.sweep(time.time()) == 0  # live: kept
    assert records.sweep(time.time() + 61) == 1  # expired: removed
    assert not any(p.name == name for p in (tmp_path / "idempotency").rglob("*"))
    assert once(records, name, lambda: _answer(2), lambda: "fp", ttl=60) == (_answer(2), False)  # expired: a new request


def test_the_data_fingerprint_is_hashed_while_streaming_even_when_the_reader_seeks():
    import io

    content = bytes(range(256)) * 5000
    whole = Fingerprint("data").add("filename", b"f")
    reader = whole.reader(io.BytesIO(content))
    reader.seek(0, io.SEEK_END)
    reader.seek(len(content) - 16)
    reader.read(16)  # the GCM tag first, as the decryption does
    reader.seek(0)
    while reader.read(4096):
        pass
    again = Fingerprint("data").add("filename", b"f")
    again.reader(io.BytesIO(content))  # never read: hexdigest reads it all
    assert whole.hexdigest() == again.hexdigest()
    other = Fingerprint("data").add("filename", b"f")
    other.reader(io.BytesIO(content[:-1] + b"x"))
    assert other.hexdigest() != whole.hexdigest()


# -- through the gateway ---------------------------------------------------------------------------
def _queued(gw) -> float:
    metrics = gw.http.get(gw.url + "/metrics", timeout=30).text
    found = re.search(r'multimsg_queue_messages\{service="telegram",state="queued"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def _msg(gw, key: str, **fields) -> requests.Response:
    return gw.http.post(gw.url + "/msg", data=fields, headers={"Idempotency-Key": key}, timeout=30)


def test_the_same_key_gets_the_first_answer_and_creates_nothing(backend_gateway, telegram):
    gw = backend_gateway()
    files = {"data": ("t.txt", b"hola una vez")}
    first = gw.http.post(gw.url + "/data", files=files, headers={"Idempotency-Key": "up-1"}, timeout=30)
    again = gw.http.post(gw.url + "/data", files=files, headers={"Idempotency-Key": '"up-1"'}, timeout=30)  # sf-string form
    assert first.status_code == again.status_code == 200 and first.text == again.text
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    changed = gw.http.post(gw.url + "/data", files={"data": ("t.txt", b"otra cosa")}, headers={"Idempotency-Key": "up-1"}, timeout=30)
    assert changed.status_code == 422 and "different request" in changed.text

    fields = {"id": first.text, "serv": "telegram", "dest": "61", "type": "text"}
    sent = _msg(gw, "msg-1", **fields)
    repeat = gw.http.post(gw.url + "/msg", json=fields, headers={"Idempotency-Key": "msg-1", "Accept": "application/json"}, timeout=30)
    assert sent.status_code == repeat.status_code == 200 and repeat.json() == {"id": sent.text}  # a JSON body means the same
    assert _msg(gw, "msg-1", **{**fields, "dest": "62"}).status_code == 422
    assert _msg(gw, "msg-2", **fields).text != sent.text  # another key: another message
    assert _queued(gw) == 2
    assert gw.drain()["delivered"] == 2
    assert sorted(str(r["dest"]) for r in telegram.wait_for(count=2)) == ["61", "61"]


def test_a_bad_key_is_400_and_a_key_in_progress_is_409(backend_gateway, telegram, redis_url):
    gw = backend_gateway()
    data_id = gw.upload_id(b"x", filename="t.txt")
    fields = {"id": data_id, "serv": "telegram", "dest": "63", "type": "text"}
    for bad in ("", "x" * 256, "ñandú"):
        answer = gw.http.post(gw.url + "/msg", data=fields, headers={"Idempotency-Key": bad.encode("utf-8")}, timeout=30)
        assert answer.status_code == 400 and "Idempotency-Key" in answer.text, (bad, answer.text)
    # Another process's first request holds "busy" now (as a request in flight would):
    if backend_gateway.backend == "redis":
        from multimsg.queue.backends.redis import connect
        from multimsg.queue.backends.redis_idempotency import RedisKeyRecords

        records = RedisKeyRecords(connect(redis_url), "mm")
    else:
        records = FileKeyRecords(gw.home / "idempotency")
    name = record_name(_client_of(gw), "msg", "busy")
    assert records.begin(name, pending_value("other", time.time(), 60), 60, time.time()) is None
    busy = _msg(gw, "busy", **fields)
    assert busy.status_code == 409 and "still being processed" in busy.text
    assert _queued(gw) == 0


def test_a_message_stored_by_a_request_that_died_before_its_answer_was_recorded_is_answered_not_sent_twice(
        backend_gateway, telegram, redis_url):
    from multimsg.ids import new_id
    from multimsg.model import Message

    gw = backend_gateway()
    data_id = gw.upload_id(b"a crash mid-request", filename="t.txt")
    given = {"id": data_id, "serv": "telegram", "dest": "65", "type": "text"}
    first = _msg(gw, "lost-1", **{**given, "dest": "66"})  # an ordinary message beside it
    client, now, reserved = _client_of(gw), time.time(), new_id()
    # What a first request that died after storing its message leaves: its durable hold reserving the id, the message under it
    name = record_name(client, "msg", "crashed")
    if backend_gateway.backend == "redis":
        from multimsg.queue.backends.redis import RedisStore, connect
        from multimsg.queue.backends.redis_idempotency import RedisKeyRecords
        from multimsg.queue.backends.redis_spool import RedisSpool

        records, store = RedisKeyRecords(connect(redis_url), "mm"), RedisStore(connect(redis_url), "mm")
        spool = RedisSpool(connect(redis_url), "mm", ttl=3600, blob_max=1 << 20)
    else:
        from multimsg.layout import Layout
        from multimsg.queue.backends.files import FileSpool
        from multimsg.queue.backends.tiny import TinyStore

        records, store = FileKeyRecords(gw.home / "idempotency"), TinyStore(Layout(gw.home))
        spool = FileSpool(Layout(gw.home), ttl=3600)
    hold = pending_value(new_id(), now, 60, reserved, Fingerprint.of_fields("msg", given), 3600)
    assert records.begin(name, hold, 60, now) is None
    spool.attach(client, data_id, reserved)
    store.add(Message(id=reserved, client=client, data_id=data_id, serv="telegram", dest="65", type="text", filename="t.txt",
                      created_at=now, updated_at=now, next_attempt_at=now))
    retry = _msg(gw, "crashed", **given)
    assert retry.status_code == 200 and retry.text == reserved and retry.headers.get("Idempotent-Replayed") == "true"
    assert _msg(gw, "crashed", **given).text == reserved  # recorded now
    assert _msg(gw, "crashed", **{**given, "dest": "67"}).status_code == 422
    assert _queued(gw) == 2 and first.status_code == 200
    assert gw.drain()["delivered"] == 2
    assert sorted(str(r["dest"]) for r in telegram.wait_for(count=2)) == ["65", "66"]


def _client_of(gw) -> str:
    """This test's client key as the gateway sees it (MULTIMSG_IDENTITY=mac on loopback)."""
    from multimsg.identity import identify

    return identify("mac", "127.0.0.1", [], None)


def _raw_post_and_close(gw, path: str, body: bytes, headers: dict[str, str]) -> None:
    """Send a whole request and close the socket without reading a byte of the answer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)


def test_a_retry_after_a_dropped_connection_makes_exactly_one_message(backend_gateway, telegram):
    gw = backend_gateway()
    data_id = gw.upload_id(b"exactly once", filename="t.txt")
    body = f"id={data_id}&serv=telegram&dest=64&type=text".encode()
    _raw_post_and_close(gw, "/msg", body, {"Content-Type": "application/x-www-form-urlencoded", "Idempotency-Key": "drop-1"})
    deadline = time.monotonic() + 20
    while _queued(gw) < 1:  # the gateway answered a client that never read it
        assert time.monotonic() < deadline, "the first request was never processed"
        time.sleep(0.05)
    retry = _msg(gw, "drop-1", id=data_id, serv="telegram", dest="64", type="text")
    assert retry.status_code == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    assert _queued(gw) == 1
    assert gw.wait_state(retry.text)["state"] == "delivered"
    assert len(telegram.wait_for(count=1)) == 1
    assert gw.drain()["claimed"] == 0 and len(telegram.received()) == 1


class DroppingProxy:
    """A TCP proxy to the gateway that swallows the answer to the first ``POST /msg`` and closes that connection."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.dropped = 0
        self.msgs = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            doomed = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, doomed), daemon=True).start()

    def _up(self, client, upstream, doomed) -> None:
        try:
            while chunk := client.recv(65536):
                if b"POST /msg " in chunk or b"POST /send " in chunk:  # the request that queues the message
                    with self._lock:
                        self.msgs += 1
                        if self.dropped == 0:
                            self.dropped = 1
                            doomed.set()
                upstream.sendall(chunk)
        except OSError:
            pass

    def _down(self, upstream, client, doomed) -> None:
        try:
            while chunk := upstream.recv(65536):
                if doomed.is_set():  # the gateway's answer to that request: never delivered
                    break
                client.sendall(chunk)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._server.close()


def test_cli_send_retries_with_the_same_key_after_a_lost_answer(backend_gateway, telegram, tmp_path):
    gw = backend_gateway()
    proxy = DroppingProxy(gw.port)
    try:
        path = tmp_path / "note.txt"
        path.write_text("una sola vez")
        run = subprocess.run([sys.executable, "-m", "multimsg", "send", str(path), "--serv", "telegram", "--dest", "65",
                              "--server", f"http://127.0.0.1:{proxy.port}", "--plain", "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
    finally:
        proxy.close()
    assert run.returncode == 0, run.stderr
    assert proxy.dropped == 1 and proxy.msgs == 2  # the first answer was lost, the CLI sent it again (/send, or /msg on the two-request path)
    message_id = json.loads(run.stdout)["id"]
    assert _queued(gw) == 1
    assert gw.wait_state(message_id)["state"] == "delivered"
    assert [r["fields"]["text"] for r in telegram.wait_for(count=1)] == ["una sola vez"]
    assert gw.drain()["claimed"] == 0 and len(telegram.received()) == 1
