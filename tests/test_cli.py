"""The ``multimsg`` command and ``multimsg.Client``, driven against a real local runner.

Every CLI call is a real process (``python -m multimsg``, the console script's
own entry point). A small recording proxy between the CLI and the runner shows
what went over the wire, so "encrypted by default" is checked on the bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest
import requests
from werkzeug.formparser import parse_form_data
from werkzeug.test import create_environ

from multimsg import Client
from multimsg.client import ConnectionFailed, NotFound, RequestRejected
from tests import media
from tests.conftest import require_tool
from tests.gatewayproc import ROOT, Gateway, free_port

ID_RE = re.compile(r"[A-Za-z0-9]{16}")
CLIENT_VARS = ("MULTIMSG_URL", "MULTIMSG_TOKEN", "MULTIMSG_HOME", "MULTIMSG_CONFIG", "MULTIMSG_KEY_FINGERPRINT")


def multimsg(*args: str, env: dict | None = None, input: bytes | None = None, stderr=subprocess.PIPE,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI; unless ``env`` names XDG_CONFIG_HOME, with a config folder of its own
    (so a key pinned on first use never carries over to another test's server)."""
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    base["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="multimsg-test-config-")
    return subprocess.run(
        [sys.executable, "-m", "multimsg", *args], cwd=ROOT, env={**base, **(env or {})},
        input=input, stdout=subprocess.PIPE, stderr=stderr, timeout=timeout,
    )


def text(result: subprocess.CompletedProcess) -> tuple[str, str]:
    return result.stdout.decode(), (result.stderr or b"").decode()


class RecordingProxy:
    """Forwards every request to ``target`` and keeps (method, path, headers, body)."""

    def __init__(self, target: str):
        self.target = target
        self.requests: list[tuple[str, str, dict, bytes]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                proxy.requests.append((self.command, self.path, headers, body))
                answer = requests.request(self.command, proxy.target + self.path, headers=headers, data=body, timeout=30)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After", "WWW-Authenticate"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def uploads(self) -> list[dict[str, bytes]]:
        """The multipart files of every POST /data or /send, by field name."""
        found = []
        for method, path, headers, body in self.requests:
            if method == "POST" and path in ("/data", "/send"):
                environ = create_environ(method="POST", input_stream=io.BytesIO(body),
                                         content_type=headers["Content-Type"], content_length=len(body))
                _, _, files = parse_form_data(environ)
                found.append({name: files[name].read() for name in files})
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served(telegram_server, whatsapp_server, server_keys, tmp_path_factory):
    """One runner for this module, whose own drain timer runs (so --wait sees messages through).

    Tests that use it also take ``telegram``, which resets the emulator first.
    """
    home = tmp_path_factory.mktemp("cli") / "home"
    shutil.copytree(server_keys, home / "keys")
    env = {
        "MULTIMSG_TELEGRAM_TOKEN": telegram_server.token,
        "MULTIMSG_TELEGRAM_API_URL": telegram_server.url,
        "MULTIMSG_WPP1_TOKEN": whatsapp_server.token,
        "MULTIMSG_WPP1_PHONE_NUMBER_ID": whatsapp_server.phone_id,
        "MULTIMSG_WPP1_API_URL": whatsapp_server.url,
        "MULTIMSG_REPORT_GRACE": "0",
        "MULTIMSG_DRAIN_INTERVAL": "0.1",
        "MULTIMSG_RETRY_BASE": "0.05",
        "MULTIMSG_READ_TIMEOUT": "3",
    }
    with Gateway(home, env) as runner:
        yield runner


@pytest.fixture
def proxy(served):
    recording = RecordingProxy(served.url)
    yield recording
    recording.close()


CONTENTS = [
    ("note.txt", "hola, ¿qué tal? ✓\n".encode(), "sendMessage"),
    ("photo.png", media.png(), "sendPhoto"),
    ("report.pdf", media.pdf(), "sendDocument"),
]


@pytest.mark.parametrize("plain", [False, True], ids=["encrypted", "plain"])
def test_send_each_type_with_and_without_encryption_until_delivered(proxy, telegram, tmp_path, plain):
    for name, content, _ in CONTENTS:
        (tmp_path / name).write_bytes(content)
        args = ["send", str(tmp_path / name), "--serv", "telegram", "--dest", "4242", "--wait", "--server", proxy.url]
        result = multimsg(*args, *(["--plain"] if plain else []))
        out, err = text(result)
        assert result.returncode == 0, err
        assert ID_RE.fullmatch(out.strip()), out
        assert "delivered" in err

    sent = telegram.wait_for(count=3)
    assert [r["method"] for r in sent] == [method for _, _, method in CONTENTS]  # types inferred from content
    assert sent[0]["fields"]["text"] == CONTENTS[0][1].decode()
    for record, (_, content, _) in zip(sent[1:], CONTENTS[1:]):
        [upload] = record["files"].values()
        assert upload["sha256"] == hashlib.sha256(content).hexdigest()

    uploads = proxy.uploads()
    assert len(uploads) == 3
    for upload, (_, content, _) in zip(uploads, CONTENTS):
        if plain:
            assert set(upload) == {"data"} and upload["data"] == content
        else:
            assert set(upload) == {"data", "key"}
            assert len(upload["key"]) == 384  # RSA-3072 OAEP
            assert len(upload["data"]) == 12 + len(content) + 16 and content not in upload["data"]
    assert [p for m, p, _, _ in proxy.requests if m == "POST" and p != "/cons"] == ["/send"] * 3  # one request per send
    asked = ["/openapi.json", "/key"] if not plain else ["/openapi.json"]
    assert [p for m, p, _, _ in proxy.requests if m == "GET"] == asked * 3  # whether it has /send, and one /key, per command


def test_wait_exits_1_with_the_platforms_reason_when_the_message_fails(served, telegram, tmp_path):
    telegram.script("chat_not_found")
    (tmp_path / "note.txt").write_text("to nowhere")
    result = multimsg("send", str(tmp_path / "note.txt"), "--serv", "telegram", "--dest", "777", "--wait", env={"MULTIMSG_URL": served.url})
    out, err = text(result)
    assert result.returncode == 1
    assert ID_RE.fullmatch(out.strip())
    assert "failed" in err and "chat not found" in err


def test_stdin_dash_is_sent_as_text(served, telegram):
    result = multimsg("send", "-", "--serv", "telegram", "--dest", "4243", "--wait", "--json",
                      env={"MULTIMSG_URL": served.url}, input="hola desde stdin".encode())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "delivered" and report["type"] == "text"
    [sent] = telegram.wait_for(count=1)
    assert sent["fields"]["text"] == "hola desde stdin"


def test_status_waits_then_reports_the_id_unknown_once_the_final_state_was_read(served, telegram, tmp_path):
    (tmp_path / "a.txt").write_text("status please")
    result = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "4244", env={"MULTIMSG_URL": served.url})
    assert result.returncode == 0, result.stderr
    message_id = result.stdout.decode().strip()

    waited = multimsg("status", message_id, "--wait", "--json", "--timeout", "30", env={"MULTIMSG_URL": served.url})
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "delivered"

    again = multimsg("status", message_id, env={"MULTIMSG_URL": served.url})
    assert again.returncode == 6
    assert again.stderr.decode().startswith("multimsg: unknown message id")
    assert again.stderr.decode().count("\n") == 1


@pytest.mark.parametrize("url, reason", [
    (None, "Connection refused"),
    ("notaurl", "bad server URL"),
    ("http://[::1", "bad server URL"),
])
def test_unreachable_or_bad_server_url_exits_3_with_one_line(tmp_path, url, reason):
    (tmp_path / "a.txt").write_text("x")
    url = url or f"http://127.0.0.1:{free_port()}"
    result = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "1", "--server", url)
    out, err = text(result)
    assert result.returncode == 3
    assert out == ""
    assert err.startswith("multimsg: ") and reason in err and err.count("\n") == 1


def test_rejections_exit_4_with_the_servers_reason_and_a_wait_can_time_out(gateway, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    env = {"MULTIMSG_URL": gateway.url}
    bad_dest = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "not a chat", env=env)
    assert bad_dest.returncode == 4
    assert bad_dest.stderr.decode() == "multimsg: 'dest' for telegram must be a chat id (an integer, negative for groups) or @channelusername\n"

    bad_serv = multimsg("send", str(tmp_path / "a.txt"), "--serv", "pigeon", "--dest", "1", env=env)
    assert bad_serv.returncode == 4 and "unknown service 'pigeon'" in bad_serv.stderr.decode()

    missing = multimsg("send", str(tmp_path / "nope.txt"), "--serv", "telegram", "--dest", "1", env=env)
    assert missing.returncode == 2 and "No such file" in missing.stderr.decode()

    # This runner has no drain timer: the message stays queued and --wait gives up.
    stuck = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "1", "--wait", "--timeout", "0.5", env=env)
    assert stuck.returncode == 8
    assert "still queued after 0.5 s" in stuck.stderr.decode()


def test_token_mode_right_token_delivers_and_wrong_token_exits_5(make_gateway, telegram, tmp_path):
    gw = make_gateway("tokens", env={"MULTIMSG_IDENTITY": "token", "MULTIMSG_DRAIN_INTERVAL": "0.1"})
    made = multimsg("token", "add", "alice", env={"MULTIMSG_HOME": str(gw.home)})
    assert made.returncode == 0, made.stderr
    token = made.stdout.decode().strip()
    (tmp_path / "a.txt").write_text("from alice")

    ok = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "5", "--wait",
                  env={"MULTIMSG_URL": gw.url, "MULTIMSG_TOKEN": token})
    assert ok.returncode == 0, ok.stderr
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "from alice"

    wrong = multimsg("send", str(tmp_path / "a.txt"), "--serv", "telegram", "--dest", "5",
                     "--token", "not-" + token, env={"MULTIMSG_URL": gw.url})
    assert wrong.returncode == 5
    err = wrong.stderr.decode()
    assert err.startswith("multimsg: ") and err.count("\n") == 1
    assert token not in err


def test_large_upload_shows_a_progress_bar_on_a_terminal(served, telegram, tmp_path):
    content = media.pad(media.pdf(), 5 * 1000 * 1000)
    (tmp_path / "big.pdf").write_bytes(content)
    controller, terminal = pty.openpty()
    try:
        result = multimsg("send", str(tmp_path / "big.pdf"), "--serv", "telegram", "--dest", "4245", "--plain",
                          env={"MULTIMSG_URL": served.url}, stderr=terminal)
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(controller)
    assert result.returncode == 0
    assert b"upload 5.0 MB [" in shown and b"100%" in shown
    [sent] = telegram.wait_for(count=1)
    assert sent["method"] == "sendDocument"
    assert next(iter(sent["files"].values()))["sha256"] == hashlib.sha256(content).hexdigest()


def test_python_client_sends_waits_and_raises_typed_errors_with_the_servers_reason(served, telegram):
    with Client(served.url) as client:
        message_id = client.send("hola desde Python", serv="telegram", dest="4246")
        status = client.wait(message_id, timeout=30)
        assert status.delivered and status.platform_ids
        assert telegram.wait_for(count=1)[0]["fields"]["text"] == "hola desde Python"

        with pytest.raises(NotFound) as unknown:
            client.status(message_id)  # the final state was reported once: archived
        assert unknown.value.status == 404 and "unknown message id" in str(unknown.value)
        with pytest.raises(RequestRejected) as bad:
            client.send(b"x", serv="telegram", dest="nope")
        assert str(bad.value).startswith("'dest' for telegram must be")
    with pytest.raises(ConnectionFailed):
        Client(f"http://127.0.0.1:{free_port()}").public_key()


def test_console_script_is_installed():
    script = require_tool("multimsg", "the package's console script: pip install -e .")
    result = subprocess.run([script, "--help"], capture_output=True, timeout=60)
    assert result.returncode == 0
    assert b"exit codes:" in result.stdout and b"send" in result.stdout


# -- key pinning ----------------------------------------------------------------------------
def _fingerprint_shown(runner: Gateway) -> str:
    shown = multimsg("keys", "show", env={"MULTIMSG_HOME": str(runner.home)})
    assert shown.returncode == 0, shown.stderr
    match = re.search(r"current key (SHA256:[A-Za-z0-9+/]{43})\b", shown.stdout.decode())
    assert match, shown.stdout
    return match[1]


def _contents(runner: Gateway) -> int:
    """The messages whose content the spool holds (``multimsg send`` uses POST /send: one file each, in ``msg/``)."""
    return len(list((runner.home / "spool").glob("*/msg/*")))


def test_send_refuses_a_server_key_that_is_not_the_pinned_fingerprint(gateway, telegram, tmp_path):
    fp = _fingerprint_shown(gateway)
    remote = multimsg("keys", "show", "--server", gateway.url)
    assert remote.returncode == 0 and remote.stdout.decode().startswith(fp), remote.stdout
    note = tmp_path / "note.txt"
    note.write_text("pinned")
    send = ("send", str(note), "--serv", "telegram", "--dest", "4300", "--server", gateway.url)

    assert multimsg(*send, "--key-fingerprint", fp).returncode == 0
    digest = __import__("base64").b64decode(fp[7:] + "=")
    assert multimsg(*send, "--key-fingerprint", digest.hex()).returncode == 0  # hex works too
    assert multimsg(*send, env={"MULTIMSG_KEY_FINGERPRINT": fp}).returncode == 0
    assert _contents(gateway) == 3

    other = "SHA256:" + "A" * 43
    for refused in (multimsg(*send, "--key-fingerprint", other), multimsg(*send, env={"MULTIMSG_KEY_FINGERPRINT": other})):
        out, err = text(refused)
        assert refused.returncode == 9, err
        assert fp in err and "not the pinned one" in err and err.count("\n") == 1
    assert _contents(gateway) == 3  # nothing was sent to a server with another key
    bad = multimsg(*send, "--key-fingerprint", "nonsense")
    assert bad.returncode == 10 and "not a key fingerprint" in bad.stderr.decode()


def test_the_first_key_seen_is_pinned_per_server_and_a_change_is_refused(make_gateway, telegram, tmp_path):
    config = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(config)}
    runner, other = make_gateway("tofu"), make_gateway("tofu-other")
    note = tmp_path / "note.txt"
    note.write_text("trust on first use")
    send = ("send", str(note), "--serv", "telegram", "--dest", "4301")

    assert multimsg(*send, "--server", runner.url, env=env).returncode == 0
    known = config / "multimsg" / "known_keys"
    assert known.read_text() == f"{runner.url} {_fingerprint_shown(runner)}\n"
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    assert multimsg(*send, "--server", runner.url, env=env).returncode == 0  # same key: fine
    assert multimsg(*send, "--server", other.url, env=env).returncode == 0  # another server: its own line
    assert len(known.read_text().splitlines()) == 2

    rotated = multimsg("keys", "rotate", env={"MULTIMSG_HOME": str(runner.home)})
    assert rotated.returncode == 0, rotated.stderr
    before = _contents(runner)
    changed = multimsg(*send, "--server", runner.url, env=env)
    out, err = text(changed)
    assert changed.returncode == 9, err
    assert "key changed" in err and str(known) in err and _fingerprint_shown(runner) in err
    assert _contents(runner) == before
    # The operator confirmed the rotation: forget the line, and the new key is pinned.
    known.write_text("".join(line + "\n" for line in known.read_text().splitlines() if not line.startswith(runner.url + " ")))
    assert multimsg(*send, "--server", runner.url, env=env).returncode == 0
