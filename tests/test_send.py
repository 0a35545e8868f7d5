"""POST /send: one request uploads the file and queues its message, through a real runner.

On the embedded backend and on a real redis-server: plain and encrypted sends
are delivered once; the fields may come before or after the file part; every
refusal of ``/data`` and ``/msg`` is a 4xx with nothing left in the spool (the
client's quota proves it on both backends, the spool folder on the embedded
one); identity and rate limiting are the same as for the two-request way.
``multimsg.Client`` uses ``/send`` when the server describes it, and the two
requests with a server that has no ``/send`` (an older one: the same handlers
without it, tests/older_server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from multimsg import Client
from multimsg.crypto import encrypt_upload
from multimsg.tokens import add_token
from tests.gatewayproc import ROOT, free_port, session_from
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

TEXT = "hola por /send: treinta bytes!".encode()  # 30 bytes: the quota test counts on it


@pytest.fixture(params=["embedded", "redis"])
def backend_env(request) -> dict[str, str]:
    if request.param == "embedded":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"MULTIMSG_BACKEND": url}


@pytest.fixture
def sender(make_gateway, backend_env):
    def make(**env: str):
        return make_gateway("send", env={**backend_env, **env})

    return make


def form(**fields: str) -> dict:
    return {name: (None, value) for name, value in fields.items()}


def post_send(gw, content: bytes = TEXT, key: bytes | None = None, source: str | None = None, headers: dict | None = None, **fields):
    files = {**form(**fields), "data": ("hola.txt", content)}
    if key is not None:
        files["key"] = ("key.bin", key)
    return gw._session(source).post(gw.url + "/send", files=files, headers=headers or {}, timeout=30)


def spooled_files(gw) -> list[str]:
    """Uploads and message links in the embedded spool folder (bookkeeping files aside)."""
    spool = gw.home / "spool"
    if not spool.exists():
        return []
    return sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file() and not p.name.startswith("."))


# -- delivered ---------------------------------------------------------------------------------
def test_a_plain_send_is_one_request_and_is_delivered_once(sender, telegram):
    gw = sender()
    answer = post_send(gw, serv="telegram", dest="4242", type="text")
    assert answer.status_code == 200, answer.text
    message_id = answer.text
    assert len(message_id) == 16 and message_id.isalnum()
    assert gw.wait_state(message_id)["state"] == "delivered"
    [sent] = telegram.wait_for(count=1)
    assert (str(sent["dest"]), sent["fields"]["text"]) == ("4242", TEXT.decode())
    assert gw.drain()["claimed"] == 0


def test_an_encrypted_send_is_decrypted_and_its_key_used_once(sender, telegram):
    gw = sender()
    blob, wrapped = encrypt_upload(gw.http.get(gw.url + "/key").text, "cifrado por /send".encode())
    answer = post_send(gw, blob, key=wrapped, serv="telegram", dest="77", type="text", headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    message_id = answer.json()["id"]
    assert gw.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "cifrado por /send"
    again = post_send(gw, blob, key=wrapped, serv="telegram", dest="77", type="text")
    assert again.status_code == 409, again.text  # the replay record is the same as /data's


def test_the_fields_may_come_after_the_file_part(sender, telegram):
    gw = sender()
    boundary = "b0undary"
    parts = [("data", "hola.txt", TEXT), ("serv", None, b"telegram"), ("dest", None, b"5"), ("type", None, b"document"),
             ("filename", None, b"informe.txt"), ("caption", None, "el informe".encode())]
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    answer = gw.http.post(gw.url + "/send", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert gw.wait_state(answer.text)["state"] == "delivered"
    [sent] = telegram.wait_for(count=1)
    assert sent["method"] == "sendDocument" and sent["fields"]["caption"] == "el informe"
    assert sent["files"]["document"]["filename"] == "informe.txt"


# -- refused, and nothing left behind -------------------------------------------------------------
BAD = [
    ({"dest": "1", "type": "text"}, 400, "missing field: serv"),
    ({"serv": "telegram", "type": "text"}, 400, "missing field: dest"),
    ({"serv": "nope", "dest": "1", "type": "text"}, 400, "nope"),
    ({"serv": "telegram", "dest": "1", "type": "sticker"}, 400, "does not send type"),
    ({"serv": "telegram", "dest": "not a chat", "type": "text"}, 400, "chat"),
    ({"serv": "telegram", "dest": "1", "type": "text", "caption": "no captions on text"}, 400, "caption"),
    ({"serv": "telegram", "dest": "1", "type": "text", "callback": "ftp://example.com/x"}, 400, "callback"),
    ({"serv": "telegram", "dest": "1", "type": "image"}, 400, "image"),  # the content is checked too: text is no image
    ({"serv": "telegram", "dest": "1", "type": "text", "id": "A" * 16}, 400, "/msg"),
]


def test_bad_fields_are_refused_with_a_reason_and_nothing_is_stored(sender, telegram):
    gw = sender(MULTIMSG_CLIENT_QUOTA=str(len(TEXT) + 20))  # room for one upload (or the encrypted one below): a refused send must not take it
    for fields, status, reason in BAD:
        answer = post_send(gw, **fields)
        assert answer.status_code == status and reason in answer.text.lower(), (fields, answer.status_code, answer.text)
    blob, wrapped = encrypt_upload(gw.http.get(gw.url + "/key").text, b"\xff\xfe not utf-8")
    refused = post_send(gw, blob, key=wrapped, serv="telegram", dest="1", type="text")
    assert refused.status_code == 400 and "utf-8" in refused.text.lower(), refused.text
    assert spooled_files(gw) == []  # empty on the Redis backend too, where the spool is in Redis
    assert post_send(gw, serv="telegram", dest="1", type="text").status_code == 200  # the quota is whole
    over = post_send(gw, serv="telegram", dest="1", type="text")
    assert over.status_code == 413 and "quota" in over.text, over.text  # the quota is /data's
    assert telegram.received() == []


def test_send_is_multipart_with_one_data_file(sender):
    gw = sender()
    as_json = gw.http.post(gw.url + "/send", json={"serv": "telegram", "dest": "1", "type": "text"}, timeout=30)
    assert as_json.status_code == 415, as_json.text
    no_file = gw.http.post(gw.url + "/send", files=form(serv="telegram", dest="1", type="text", data="inline"), timeout=30)
    assert no_file.status_code == 400 and "'data' must be a file" in no_file.text
    assert gw.http.get(gw.url + "/send").status_code == 405


# -- identity and rate limit ------------------------------------------------------------------------
def test_in_token_mode_send_needs_a_token_and_the_message_is_the_tokens(sender, tmp_path):
    tokens = tmp_path / "tokens"  # a token file on both backends (with Redis they could live there too: tests/test_tokens.py)
    alice, bob = (add_token(name, tokens) for name in ("alice", "bob"))
    gw = sender(MULTIMSG_IDENTITY="token", MULTIMSG_TOKENS_FILE=str(tokens))
    anonymous = post_send(gw, serv="telegram", dest="1", type="text")
    assert anonymous.status_code == 401, anonymous.text
    answer = post_send(gw, headers={"Authorization": f"Bearer {alice}"}, serv="telegram", dest="1", type="text")
    assert answer.status_code == 200, answer.text
    cons = "/cons"
    assert gw.http.post(gw.url + cons, data={"id": answer.text}, headers={"Authorization": f"Bearer {bob}"}).status_code == 404
    assert gw.http.post(gw.url + cons, data={"id": answer.text}, headers={"Authorization": f"Bearer {alice}"}).text == "queued"


def test_in_address_mode_the_message_belongs_to_the_sending_address(sender):
    gw = sender()
    answer = post_send(gw, source="127.0.0.2", serv="telegram", dest="1", type="text")
    assert answer.status_code == 200, answer.text
    assert gw.cons(answer.text).status_code == 404  # 127.0.0.1 is another client
    assert gw.cons(answer.text, source="127.0.0.2").text == "queued"


def test_send_is_rate_limited_as_one_request(sender):
    gw = sender(MULTIMSG_RATE_LIMIT="0.01", MULTIMSG_RATE_BURST="2")
    codes = [post_send(gw, serv="telegram", dest="1", type="text").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# -- the client -------------------------------------------------------------------------------------
def test_the_client_sends_in_one_request_when_the_server_has_send(gateway, telegram):
    with Client(gateway.url) as client:
        message_id = client.send("por el cliente", "telegram", "9")
        assert client.has_send()
    assert gateway.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "por el cliente"
    assert requests_to(gateway) == {"send": 1}


class OlderServer:
    """The current handlers without /send, in their own process (tests/older_server.py)."""

    def __init__(self, home, env: dict, describe_send: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, **env, "MULTIMSG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "tests.older_server", str(self.port)] + (["--describe-send"] if describe_send else [])
        self.proc = subprocess.Popen(args, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        http = session_from(None)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.proc.stdout.read().decode() if self.proc.stdout else ""
            try:
                if http.get(self.url + "/key", timeout=1).status_code == 200:
                    break
            except Exception:
                assert time.monotonic() < deadline, "the older server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.parametrize("describe_send", [False, True], ids=["not-described", "described-but-404"])
def test_the_client_falls_back_to_data_and_msg_on_an_older_server(tmp_path, gateway_env, server_keys, telegram, describe_send):
    home = tmp_path / "older"
    server = OlderServer(home, gateway_env, describe_send)
    try:
        with Client(server.url) as client:
            first = client.send("uno", "telegram", "3", encrypt=False)
            second = client.send("dos", "telegram", "3")
            assert client.has_send() is False
        expected = {"data": 2, "msg": 2}
        if describe_send:
            expected["unknown"] = 1  # tried once, then remembered
        assert requests_to(server) == expected
        for message_id in (first, second):
            assert client.status(message_id).state == "queued"
    finally:
        server.stop()


def requests_to(server) -> dict[str, int]:
    """Requests the server answered with 200 (or 404 for unknown paths), per handler, from its /metrics."""
    text = session_from(None).get(server.url + "/metrics", timeout=10).text
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("multimsg_http_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            endpoint, status = json.loads(labels["endpoint"]), json.loads(labels["status"])
            if endpoint in ("send", "data", "msg") and status == "200" or endpoint == "unknown" and status == "404":
                counts[endpoint] = counts.get(endpoint, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts
