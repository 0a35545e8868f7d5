"""No input breaks the API: adversarial requests, body limits, file modes, secrets, rate limits.

Every request here goes to a real runner. Each hostile request must get a 4xx
with a one-line reason (except those the WSGI server itself refuses, such as
oversized headers, which carry waitress's own 431 page), no request may reach
a file outside the data folder, and a message queued before the barrage must
still be there afterwards and be delivered.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from multimsg.crypto import OAEP
from multimsg.queue.sealed import plain_size
from tests.gatewayproc import ROOT, Gateway, session_from

MAX_UPLOAD = 200_000


# -- helpers ---------------------------------------------------------------------
def raw_request(runner: Gateway, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library fixing them up); (status, body)."""
    with socket.create_connection(("127.0.0.1", runner.port), timeout=20) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def post_raw(runner: Gateway, path: str, content_type: str, body: bytes, **headers) -> tuple[int, bytes]:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return raw_request(runner, ("\r\n".join(lines) + "\r\n\r\n").encode(), body)


def post_chunked(runner: Gateway, path: str, content_type: str, body: bytes, chunk: int = 16384) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", runner.port, timeout=30)
    try:
        pieces = (body[i:i + chunk] for i in range(0, len(body), chunk))
        connection.request("POST", path, body=pieces, headers={"Content-Type": content_type}, encode_chunked=True)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (ConnectionResetError, BrokenPipeError):
        return 0, "connection reset"
    finally:
        connection.close()


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> tuple[str, bytes]:
    """(content type, body) for parts ``(name, filename or None, content)``."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def spooled_uploads(runner: Gateway) -> list[Path]:
    return sorted(p for p in (runner.home / "spool").glob("*/*.json"))


def one_line_reason(body: str | bytes) -> bool:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        text = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        pass
    return bool(text.strip()) and "\n" not in text.strip()


@pytest.fixture
def hard(make_gateway) -> Gateway:
    return make_gateway("hard", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_MAX_UPLOAD": str(MAX_UPLOAD), "MULTIMSG_FSYNC": "0"})


@pytest.fixture
def witness(hard, telegram) -> str:
    """A message queued before the barrage: it must survive it and be delivered."""
    return hard.send("the witness".encode(), "telegram", "424242")


def _wrap(runner: Gateway, aes_key: bytes) -> bytes:
    public = serialization.load_pem_public_key(runner.http.get(runner.url + "/key").content)
    return public.encrypt(aes_key, OAEP)


# -- the adversarial list --------------------------------------------------------------
def test_adversarial_requests_get_a_4xx_with_a_reason_and_leave_the_store_intact(hard, witness, telegram):
    r = hard
    aes_key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    blob = nonce + AESGCM(aes_key).encrypt(nonce, b"secret text", None)
    wrapped = _wrap(r, aes_key)
    msg = {"serv": "telegram", "dest": "12345", "type": "text"}
    good_data = r.upload_id(b"a good upload")
    bad_utf8 = r.upload_id(b"caf\xe9 \xff\xfe")  # stored as bytes; refused as text by /msg
    uploads_before = len(spooled_uploads(r))
    outside = Path(f"/tmp/mm-hardening-{os.getpid()}-evil")
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()

    ids = {
        "traversal": "../../../../etc/passwd",
        "absolute path": "/etc/passwd",
        "dot-dot": "..",
        "NUL byte": "AAAAAAAA\x00AAAAAAA",
        "slash inside": "AAAAAAAA/AAAAAAA",
        "too long": "A" * 17,
        "far too long": "A" * 5000,
        "too short": "A" * 15,
        "fullwidth letters": "Ａ" * 16,
        "trailing newline": "A" * 16 + "\n",
        "percent-encoded traversal": "%2e%2e%2f%2e%2e%2fetc",
        "spool path": "spool/mac_00_00_00_00_00_00/" + good_data,
    }
    cases: list[tuple[str, callable, tuple[int, ...]]] = []
    for what, bad in ids.items():
        cases.append((f"/cons id: {what}", lambda bad=bad: r.http.post(r.url + "/cons", data={"id": bad}), (404,)))
        cases.append((f"/cons JSON id: {what}", lambda bad=bad: r.http.post(r.url + "/cons", json={"id": bad}), (404,)))
        cases.append((f"/msg id: {what}", lambda bad=bad: r.http.post(r.url + "/msg", data={"id": bad, **msg}), (404,)))
    cases += [
        # malformed multipart
        ("multipart without a boundary", lambda: post_raw(r, "/data", "multipart/form-data", b"--x\r\njunk\r\n--x--\r\n"), (400,)),
        ("multipart body that is not multipart", lambda: post_raw(r, "/data", "multipart/form-data; boundary=zz", b"hello there"), (400,)),
        ("multipart binary junk", lambda: post_raw(r, "/data", "multipart/form-data; boundary=zz", os.urandom(4000)), (400,)),
        ("multipart truncated", lambda: post_raw(r, "/data", "multipart/form-data; boundary=zz",
                                                 b'--zz\r\nContent-Disposition: form-data; name="data"; filename="a"\r\n\r\nhalf a fi'), (400,)),
        ("multipart part without a name", lambda: post_raw(r, "/data", *multipart(("", "a.txt", b"x"))), (400,)),
        ("multipart part without headers", lambda: post_raw(r, "/data", "multipart/form-data; boundary=zz", b"--zz\r\n\r\nx\r\n--zz--\r\n"), (400,)),
        ("data as a text field", lambda: r.http.post(r.url + "/data", files={"data": (None, "text")}), (400,)),
        ("no data field", lambda: r.http.post(r.url + "/data", files={"other": ("a", b"x")}), (400,)),
        ("not multipart", lambda: r.http.post(r.url + "/data", data={"data": "x"}), (415,)),
        ("JSON to /data", lambda: r.http.post(r.url + "/data", json={"data": "x"}), (415,)),
        ("too many parts", lambda: post_raw(r, "/data", *multipart(*[(f"f{i}", None, b"") for i in range(1200)], ("data", "a", b"x"))), (413,)),
        # repeated fields
        ("two data files", lambda: r.http.post(r.url + "/data", files=[("data", ("a", b"1")), ("data", ("b", b"2"))]), (400,)),
        ("two key files", lambda: r.http.post(r.url + "/data", files=[("data", ("a", blob)), ("key", ("k", wrapped)), ("key", ("k", wrapped))]), (400,)),
        ("key as a text field", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob), "key": (None, "abc")}), (400,)),
        ("/msg id twice", lambda: r.http.post(r.url + "/msg", data=[("id", good_data), ("id", good_data), *msg.items()]), (400,)),
        ("/msg serv twice", lambda: r.http.post(r.url + "/msg", data=[("id", good_data), ("serv", "telegram"), ("serv", "wpp1"), ("dest", "1"), ("type", "text")]), (400,)),
        ("/cons id twice", lambda: r.http.post(r.url + "/cons", data=[("id", witness), ("id", witness)]), (400,)),
        ("/msg JSON duplicate key", lambda: post_raw(r, "/msg", "application/json", ('{"id": "%s", "id": "%s", "serv": "telegram", "dest": "1", "type": "text"}' % (good_data, good_data)).encode()), (400,)),
        ("/msg id as a file", lambda: r.http.post(r.url + "/msg", files={"id": ("a", good_data.encode())}, data=msg), (400,)),
        # keys and ciphertexts
        ("key of the wrong size", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob), "key": ("k", b"0123456789")}), (400,)),
        ("key far too big", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob), "key": ("k", os.urandom(6000))}), (400,)),
        ("key not RSA-decryptable", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob), "key": ("k", os.urandom(384))}), (400,)),
        ("key wrapping a 20-byte AES key", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob), "key": ("k", _wrap(r, os.urandom(20)))}), (400,)),
        ("GCM blob truncated below nonce+tag", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob[:20]), "key": ("k", wrapped)}), (400,)),
        ("GCM blob missing its last byte", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob[:-1]), "key": ("k", wrapped)}), (400,)),
        ("GCM blob with a flipped bit", lambda: r.http.post(r.url + "/data", files={"data": ("a", blob[:15] + bytes([blob[15] ^ 1]) + blob[16:]), "key": ("k", wrapped)}), (400,)),
        ("empty data with a key", lambda: r.http.post(r.url + "/data", files={"data": ("a", b""), "key": ("k", wrapped)}), (400,)),
        # text content
        ("text that is not UTF-8", lambda: r.http.post(r.url + "/msg", data={"id": bad_utf8, **msg}), (400,)),
        # JSON bodies of the wrong shape
        ("/msg JSON array", lambda: r.http.post(r.url + "/msg", json=[good_data, "telegram"]), (400,)),
        ("/msg JSON string", lambda: r.http.post(r.url + "/msg", json="hello"), (400,)),
        ("/msg JSON number", lambda: r.http.post(r.url + "/msg", json=42), (400,)),
        ("/msg JSON null", lambda: post_raw(r, "/msg", "application/json", b"null"), (400,)),
        ("/msg JSON empty body", lambda: post_raw(r, "/msg", "application/json", b""), (400,)),
        ("/msg JSON not JSON", lambda: post_raw(r, "/msg", "application/json", b"{id: 1,"), (400,)),
        ("/msg JSON invalid UTF-8", lambda: post_raw(r, "/msg", "application/json", b'{"id": "\xff\xfe"}'), (400,)),
        ("/msg JSON nested too deep", lambda: post_raw(r, "/msg", "application/json", b"[" * 60000), (400,)),
        ("/msg JSON id as object", lambda: r.http.post(r.url + "/msg", json={"id": {"$ne": None}, **msg}), (400,)),
        ("/msg JSON id as list", lambda: r.http.post(r.url + "/msg", json={"id": [good_data], **msg}), (400,)),
        ("/msg JSON id as bool", lambda: r.http.post(r.url + "/msg", json={"id": True, **msg}), (400,)),
        ("/msg JSON id as float", lambda: r.http.post(r.url + "/msg", json={"id": 1.5, **msg}), (400,)),
        ("/msg JSON serv as number", lambda: r.http.post(r.url + "/msg", json={"id": good_data, "serv": 7, "dest": "1", "type": "text"}), (400,)),
        ("/cons JSON array", lambda: r.http.post(r.url + "/cons", json=[witness]), (400,)),
        ("/cons JSON id as object", lambda: r.http.post(r.url + "/cons", json={"id": {"id": witness}}), (400,)),
        ("/cons body over the small-body limit", lambda: r.http.post(r.url + "/cons", json={"id": "A" * 100_000}), (413,)),
        ("/msg form over the small-body limit", lambda: r.http.post(r.url + "/msg", data={"id": good_data, "caption": "x" * 100_000, **msg}), (413,)),
        # fields and values
        ("unknown service", lambda: r.http.post(r.url + "/msg", data={**msg, "id": good_data, "serv": "../../etc"}), (400,)),
        ("unknown type", lambda: r.http.post(r.url + "/msg", data={**msg, "id": good_data, "type": "exe"}), (400,)),
        ("dest with a NUL byte", lambda: r.http.post(r.url + "/msg", data={**msg, "id": good_data, "dest": "123\x00456"}), (400,)),
        ("filename option with a path", lambda: r.http.post(r.url + "/msg", data={"id": good_data, "serv": "telegram", "dest": "1", "type": "document", "filename": "../../etc/passwd"}), (400,)),
        ("missing id", lambda: r.http.post(r.url + "/cons", data={}), (400,)),
        ("wrong method", lambda: r.http.get(r.url + "/msg"), (405,)),
        ("unknown path", lambda: raw_request(r, b"GET /..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), (404,)),
        ("dot-dot path", lambda: raw_request(r, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), (404,)),
        ("NUL in path", lambda: raw_request(r, b"GET /cons%00/../key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), (404,)),
        ("operator endpoint via an unknown proxy", lambda: r.http.post(r.url + "/drain", headers={"X-Forwarded-For": "203.0.113.9"}), (401,)),
    ]
    server_refused = [
        # Refused by the server before any of our code runs: its own page. The runner bounds
        # the request line and headers together (16 KB), not the number of header lines.
        ("a 100 KB header", lambda: raw_request(r, b"GET /key HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\nConnection: close\r\n\r\n"), (400, 431)),
        ("3000 headers", lambda: raw_request(r, b"GET /key HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"Connection: close\r\n\r\n"), (400, 431)),
        ("a 20 KB request line", lambda: raw_request(r, b"GET /key?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), (400, 414, 431)),
        ("a huge Authorization header", lambda: raw_request(r, b"POST /cons HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"A" * 50_000 + b"\r\nConnection: close\r\n\r\n"), (400, 431)),
    ]

    wrong = []
    for ours, (name, send, expected) in [(True, case) for case in cases] + [(False, case) for case in server_refused]:
        answer = send()
        status, body = answer if isinstance(answer, tuple) else (answer.status_code, answer.content)
        if status not in expected:
            wrong.append(f"{name}: {status} {body[:200]!r} (expected {expected})")
        elif ours and not one_line_reason(body):
            wrong.append(f"{name}: {status} without a one-line reason: {body[:200]!r}")
    assert not wrong, "\n".join(wrong)
    assert len(spooled_uploads(r)) == uploads_before  # nothing refused was stored

    # Upload file names are metadata, never paths: each is accepted, and nothing lands
    # where a naive join of the name onto a folder of the server's would have put it.
    shallow = "../../../../" + outside.name
    deep = "../" * 40 + str(outside).lstrip("/")  # from any folder, a naive join lands on `outside`
    bases = [r.home / "spool" / "mac_00_00_00_00_00_00", r.home / "spool", r.home, r.home / "store"]
    landings = [outside] + [Path(os.path.normpath(base / shallow)) for base in bases]
    for filename in (shallow, deep, "/etc/passwd", "a\x00b", "x" * 2000):
        response = r.http.post(r.url + "/data", files={"data": (filename, b"named content")})
        assert response.status_code == 200, (filename[:40], response.status_code, response.text)
    assert not [path for path in landings if path.exists()]
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd

    # Nothing went wrong inside the server, nothing was written outside the spool.
    for path in (r.home / "spool").rglob("*"):
        assert path.resolve().is_relative_to(r.home.resolve())
    assert "Traceback" not in r.log() and "internal error" not in r.log()

    # The message queued before the barrage is still there and goes out.
    assert r.cons(witness).text == "queued"
    assert r.wait_state(witness)["state"] == "delivered"
    assert [record["dest"] for record in telegram.received(ok_only=True)] == [424242]


# -- body size -----------------------------------------------------------------------
def test_uploads_over_the_limit_get_413_and_are_not_stored(hard):
    r = hard
    content_type, body = multipart(("data", "big.bin", os.urandom(MAX_UPLOAD + 10_000)))
    status, reason = post_raw(r, "/data", content_type, body)
    assert status == 413 and one_line_reason(reason), reason

    # Chunked: no Content-Length to refuse up front; the limit stops the stream.
    status, reason = post_chunked(r, "/data", content_type, body)
    assert status == 413, reason
    assert spooled_uploads(r) == []

    # Under the limit, chunked uploads work.
    content_type, body = multipart(("data", "small.bin", b"y" * (MAX_UPLOAD // 2)))
    status, data_id = post_chunked(r, "/data", content_type, body)
    assert status == 200, data_id
    assert r.stored(r.home / "spool" / "mac_00_00_00_00_00_00" / data_id) == b"y" * (MAX_UPLOAD // 2)
    assert len(spooled_uploads(r)) == 1


def _worker_pid(runner: Gateway) -> int:
    """The process that serves requests: the runner itself (waitress, one process).

    A child may live briefly at start: the ffmpeg probe (multimsg/convert.py) runs in the background.
    """
    deadline = time.monotonic() + 20
    while children := subprocess.run(["pgrep", "-P", str(runner.proc.pid)], capture_output=True, text=True).stdout.split():
        assert time.monotonic() < deadline, f"the runner keeps child processes {children}: it should serve alone"
        time.sleep(0.1)
    return runner.proc.pid


def _peak_rss_kb(pid: int) -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())[1])


def test_a_plain_upload_streams_to_disk_instead_of_memory(make_gateway):
    runner = make_gateway("stream", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_FSYNC": "0"})
    worker = _worker_pid(runner)
    runner.upload_id(b"warm-up")  # imports, first-request caches
    before = _peak_rss_kb(worker)
    size = 32 * 1000 * 1000
    data_id = runner.upload_id(os.urandom(size))
    assert plain_size((runner.home / "spool" / "mac_00_00_00_00_00_00" / data_id).stat().st_size) == size  # sealed at rest
    grown_mb = (_peak_rss_kb(worker) - before) / 1024
    # werkzeug spools file parts over 500 KB to a temporary file and the spool
    # copies it in 1 MB chunks: the worker's peak grows by a few MB, not 32.
    assert grown_mb < 12, f"the worker's peak memory grew by {grown_mb:.1f} MB for a {size / 1e6:.0f} MB upload"


# -- files on disk --------------------------------------------------------------------
def test_files_the_service_creates_are_private_to_its_user(tmp_path, gateway_env, telegram):
    home = tmp_path / "private" / "home"  # created by the service itself, keys included
    env = {**os.environ, "MULTIMSG_HOME": str(home)}
    assert subprocess.run([sys.executable, "-m", "multimsg", "token", "add", "someone"], env=env, cwd=ROOT,
                          capture_output=True).returncode == 0
    with Gateway(home, {**gateway_env, "MULTIMSG_RATE_LIMIT": "0"}) as runner:
        message_id = runner.send(b"private", "telegram", "777")
        runner.upload_id(b"an upload that stays")
        assert runner.wait_state(message_id)["state"] == "delivered"  # reported once: archived now
    seen = {"dirs": 0, "files": 0}
    loose = []
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            seen["dirs"] += 1
            if mode & 0o077:
                loose.append(f"{path.relative_to(home)}/ {oct(mode)}")
        elif path.suffix == ".lock" and path.stat().st_size == 0:
            continue  # empty lock files, inside the 0700 locks/ folder
        else:
            seen["files"] += 1
            if mode & 0o077:
                loose.append(f"{path.relative_to(home)} {oct(mode)}")
    assert not loose, loose
    names = {p.name for p in home.rglob("*")}
    assert {"private.pem", "tokens", "keys", "store", "spool", "archive"} <= names
    assert any(p.name.endswith(".jsonl") for p in (home / "archive").iterdir())
    assert stat.S_IMODE((home / "locks").stat().st_mode) == 0o700


# -- secrets ---------------------------------------------------------------------------
def test_platform_tokens_never_reach_logs_answers_or_cons(make_gateway, telegram, whatsapp, gateway_env):
    runner = make_gateway("secrets", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_RETRY_MAX_ATTEMPTS": "2"})
    secrets = [telegram.token, whatsapp.token]
    answers: list[str] = []

    def drain_until_final(ids, timeout=20.0):
        """Drain and consult until every message has been reported in a final state."""
        pending, deadline = list(ids), time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, f"still not final: {pending}"
            answers.append(runner.http.post(runner.url + "/drain", timeout=60).text)
            for message_id in list(pending):
                report = runner.cons(message_id, as_json=True)
                answers.append(report.text)
                if report.json()["state"] != "queued":
                    pending.remove(message_id)
            time.sleep(0.05)

    # Platforms that echo the credential back in their error text.
    telegram.script({"status": 400, "body": {"ok": False, "error_code": 400,
                                             "description": f"Bad Request: bot{telegram.token} cannot do that"}}, dest=1001)
    telegram.script({"status": 500, "raw": f"<html>upstream /bot{telegram.token}/sendMessage failed</html>",
                     "headers": {"Content-Type": "text/html"}}, dest=1003, times=5)
    whatsapp.script({"status": 400, "body": {"error": {"message": f"Invalid parameter (token {whatsapp.token})",
                                                       "type": "OAuthException", "code": 100}}}, dest="5491100001001")
    drain_until_final([runner.send(b"leak test", "telegram", "1001"), runner.send(b"leak test", "telegram", "1003"),
                       runner.send(b"leak test", "wpp1", "5491100001001")])
    # Credentials refused: the services count as misconfigured and their messages wait (logged as errors).
    telegram.script("unauthorized", dest=1002)
    whatsapp.script("190", dest="5491100001002")
    waiting = [runner.send(b"leak test", "telegram", "1002"), runner.send(b"leak test", "wpp1", "5491100001002")]
    answers.append(runner.http.post(runner.url + "/drain", timeout=60).text)
    answers += [runner.cons(message_id, as_json=True).text for message_id in waiting]
    assert all(json.loads(answer)["last_error"] for answer in answers[-2:]), answers[-2:]

    # A platform that cannot be reached: requests puts the URL (with the bot token) in its errors.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    unreachable = make_gateway("unreachable", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_TELEGRAM_API_URL": f"http://127.0.0.1:{port}"})
    lost = unreachable.send(b"nobody home", "telegram", "1")
    answers.append(unreachable.http.post(unreachable.url + "/drain", timeout=60).text)
    answers.append(unreachable.cons(lost, as_json=True).text)

    # Errors a client can provoke on purpose.
    answers.append(runner.msg(id="A" * 16, serv="telegram", dest="1", type="text").text)
    answers.append(runner.msg(id="A" * 16, serv="wpp1", dest="1", type="text").text)

    assert any("Bad Request" in answer for answer in answers)  # the platforms' reasons did come through
    logs = runner.log() + unreachable.log()
    # The lines that carry the platforms' reasons (where a token would show) are logged, redacted.
    for line in (r"message \w{16} serv=telegram outcome=failed state=failed attempts=1 reason=telegram: Bad Request: bot\S* cannot do that",
                 r"message \w{16} serv=wpp1 outcome=failed state=failed attempts=1 reason=wpp1: Invalid parameter \(token \S+\)",
                 r"message \w{16} serv=telegram outcome=retry state=queued attempts=1 reason=telegram: could not reach the platform"):
        assert re.search(line, logs), f"no log line matching {line!r}"
    for secret in secrets:
        assert secret not in logs, "a platform token is in the runner's log"
        leaked = [answer for answer in answers if secret in answer]
        assert not leaked, f"a platform token is in an answer: {leaked[0][:300]}"


# -- rate limiting -----------------------------------------------------------------------
def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not(make_gateway):
    runner = make_gateway("rate", env={"MULTIMSG_RATE_LIMIT": "0.01", "MULTIMSG_RATE_BURST": "3"})
    statuses = [runner.upload(b"x").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = runner.upload(b"one too many")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert one_line_reason(limited.text) and "per second" in limited.text
    assert runner.msg(id="A" * 16, serv="telegram", dest="1", type="text").status_code == 429  # /msg shares the bucket
    consulted = runner.cons("A" * 16)  # /cons too: it reads the store on every call
    assert consulted.status_code == 429 and int(consulted.headers["Retry-After"]) >= 1
    assert runner.http.get(runner.url + "/health").status_code == 200  # open and cheap (cached), not limited
    assert len(spooled_uploads(runner)) == 3  # the refused upload was not stored
    assert runner.upload(b"another client", source="127.0.0.2").status_code == 200


def test_the_rate_limit_holds_across_the_runners_threads(make_gateway):
    runner = make_gateway("rate-threads", env={"MULTIMSG_RATE_LIMIT": "0.01", "MULTIMSG_RATE_BURST": "5"})
    barrier = threading.Barrier(12)

    def upload(_):
        session = session_from(None)  # a connection of its own: 12 requests in flight at once
        barrier.wait(10)
        return session.post(runner.url + "/data", files={"data": ("c", b"concurrent")}, timeout=30).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = sorted(pool.map(upload, range(12)))
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses


# -- text splitting cost ------------------------------------------------------------------
def test_texts_of_combining_marks_are_judged_quickly_with_the_right_answer(make_gateway, telegram):
    r = make_gateway("marks", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_FSYNC": "0"})
    msg = {"serv": "telegram", "dest": "5150", "type": "text"}
    marks = "a" + "\u0301" * 24000  # 48 KB: six full parts, not 24,001 one-character parts
    data_id = r.upload_id(marks.encode())
    answer = r.http.post(r.url + "/msg", data={"id": data_id, **msg}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert r.wait_state(answer.text)["state"] == "delivered"
    sent = [record["fields"]["text"] for record in telegram.received(ok_only=True)]
    assert "".join(sent) == marks and len(sent) == 6

    for hostile in ("a" + "\u0301" * 262000, "\u200d" * 174000, "x" * 524000):  # at the 512 KB text limit
        data_id = r.upload_id(hostile.encode())
        answer = r.http.post(r.url + "/msg", data={"id": data_id, **msg}, timeout=5)
        assert answer.status_code == 413, answer.text
        assert one_line_reason(answer.text) and "more than 32 messages" in answer.text


# -- templates ------------------------------------------------------------------------------
def test_a_deeply_nested_template_gets_400_with_a_reason_not_a_traceback(hard, whatsapp):
    r = hard
    msg = {"serv": "wpp1", "dest": "5491155551234", "type": "template"}
    deep_components = '{"name": "order_update", "language": "es_AR", "components": ' + "[" * 5000 + "]" * 5000 + "}"
    for document in ("[" * 60000, "{\"a\": " * 8000 + "1" + "}" * 8000, deep_components):
        data_id = r.upload_id(document.encode())
        answer = r.http.post(r.url + "/msg", data={"id": data_id, **msg}, timeout=10)
        assert answer.status_code == 400, answer.text
        assert one_line_reason(answer.text) and "nested too deeply" in answer.text
    # Brackets inside strings are text, and a real template is a few levels deep.
    fine = {"name": "order_update", "language": "es_AR",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "[[[[" * 100 + "{{{{" * 100}]}]}
    answer = r.http.post(r.url + "/msg", data={"id": r.upload_id(json.dumps(fine).encode()), **msg}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "Traceback" not in r.log() and "internal error" not in r.log()


# -- upload file names ---------------------------------------------------------------------
def test_an_upload_name_is_stored_as_a_plain_file_name(make_gateway, telegram):
    r = make_gateway("names", env={"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_FSYNC": "0"})
    hostile = "evil\x00\x1b[31m" + "n" * 400_000 + "\x1b]0;title\x07.txt"
    stored = {}
    for name in (hostile, "../../etc/passwd", "C:\\Users\\ana\\report.pdf", "\x00\x1b\x7f", "informe.pdf"):
        data_id = r.upload_id(b"%PDF-1.4 named content", filename=name)
        kept = r.stored_name("mac:00:00:00:00:00:00", data_id)  # sealed at rest: opened with the runner's key
        stored[name[:20]] = kept
        assert len(kept) <= 255 and not re.search(r"[\x00-\x1f\x7f/\\]", kept), kept[:80]
    assert stored["../../etc/passwd"] == "passwd"
    assert stored["C:\\Users\\ana\\report.pdf"[:20]] == "report.pdf"
    assert stored["\x00\x1b\x7f"] == "data"
    assert stored["informe.pdf"] == "informe.pdf"
    assert stored[hostile[:20]] == ("evil[31m" + "n" * 400_000)[:255]
    # /msg's filename option follows the same rule, and refuses what breaks it.
    data_id = r.upload_id(b"%PDF-1.4 doc")
    for bad in ("a\x1bb.pdf", "x" * 256, "a/b.pdf"):
        answer = r.msg(id=data_id, serv="telegram", dest="1", type="document", filename=bad)
        assert answer.status_code == 400 and "plain file name" in answer.text, answer.text


def test_an_existing_data_folder_open_to_others_is_made_private_at_start(tmp_path, make_gateway):
    home = tmp_path / "loose"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "spool").mkdir(mode=0o755)
    os.chmod(home / "spool", 0o755)
    runner = make_gateway(home=home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "spool").stat().st_mode) == 0o700
    assert "WARNING" in runner.log() and "changed it to 0700" in runner.log()
