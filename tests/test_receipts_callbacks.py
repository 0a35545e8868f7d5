"""Delivery receipts in (WhatsApp status webhooks) and signed status callbacks out, end to end.

A real runner, the WhatsApp emulator sending signed status webhooks as Meta
does (retries, duplicates, out-of-order statuses, an emoji in the body), and a
callback receiver in its own process that verifies every signature with the
key served at GET /callback-key. Every test is bounded (SIGALRM, 60 s).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests

from multimsg.callbacks import CallbackKeys, Dispatcher, check_url, post
from multimsg.errors import InvalidInput
from multimsg.layout import Layout
from multimsg.model import Message, State
from multimsg.queue.backends.memory import MemoryStore
from tests.gatewayproc import ROOT, Gateway, free_port
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)
from tests.services_support import new_chat, new_number
from tests.strace_support import traced

SECRET = "app-secret-for-tests"
VERIFY = "verify-token-for-tests"
FAST = "0.2 0.2 0.2 0.2 0.2 0.2 0.2"  # 8 attempts, 0.2 s apart


@pytest.fixture(autouse=True)
def bounded():
    def expired(*_):
        raise TimeoutError("test took more than 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["embedded", "redis"])
def backend(request) -> str:
    """Every gateway of a test runs on this backend: the embedded store, or a real redis-server (a database of its own)."""
    return request.param


@pytest.fixture
def make_gateway(make_gateway, backend, request):
    shared = {} if backend == "embedded" else {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url")}

    def make(name: str = "home", env: dict[str, str] | None = None, home: Path | None = None) -> Gateway:
        return make_gateway(name, {**shared, **(env or {})}, home)

    return make


def env(**extra: str) -> dict[str, str]:
    return {"MULTIMSG_WPP1_APP_SECRET": SECRET, "MULTIMSG_WPP1_VERIFY_TOKEN": VERIFY, "MULTIMSG_CALLBACK_ALLOW_PRIVATE": "1",
            "MULTIMSG_CALLBACK_BACKOFF": FAST, "MULTIMSG_REPORT_GRACE": "3600", "MULTIMSG_WPP1_DEST_INTERVAL": "0", **extra}


class Receiver:
    """tests/callback_receiver.py as its own process, on a fixed port so that it can go down and come back."""

    def __init__(self, folder: Path, pem: str, status: int = 200):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/multimsg?x=1"
        self.key = folder / "callback-public.pem"
        self.key.write_text(pem)
        self.out = folder / "received.jsonl"
        self.status = status
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Receiver":
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.callback_receiver", "--port", str(self.port), "--key", str(self.key),
                                      "--out", str(self.out), "--status", str(self.status)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            assert selector.select(15), "receiver did not start"
        assert self.proc.stdout.readline().startswith(b"LISTENING")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def received(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def wait(self, runner: Gateway, predicate, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            runner.drain()
            got = self.received()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver got {got}")
            time.sleep(0.1)


@pytest.fixture
def receiver(tmp_path):
    made: list[Receiver] = []

    def make(runner: Gateway, status: int = 200, start: bool = True) -> Receiver:
        pem = runner.http.get(runner.url + "/callback-key", timeout=10).text
        r = Receiver(tmp_path, pem, status)
        made.append(r)
        return r.start() if start else r

    yield make
    for r in made:
        r.stop()


def webhook(runner: Gateway) -> str:
    return runner.url + "/webhook/wpp1"


def send_wpp(runner: Gateway, callback: str | None = None) -> str:
    fields = {"callback": callback} if callback else {}
    return runner.send("hola 👋".encode(), "wpp1", new_number(), **fields)


def state_once(runner: Gateway, message_id: str) -> dict:
    return runner.state(message_id)


# -- the handshake and the signature -----------------------------------------------------------
@pytest.mark.parametrize("backend", ["embedded"])  # nothing stored: the same on every backend
def test_the_verification_handshake_answers_the_challenge_only_for_the_right_token(make_gateway):
    runner = make_gateway(env=env())
    ok = runner.http.get(webhook(runner), params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"}, {}):
        assert runner.http.get(webhook(runner), params=params).status_code == 403
    assert runner.http.get(runner.url + "/webhook/telegramx").status_code == 404


def test_missing_and_wrong_signatures_are_refused_and_store_nothing(make_gateway, whatsapp):
    runner = make_gateway(env=env())
    message_id = send_wpp(runner)
    assert runner.wait_state(message_id)["state"] == "delivered"
    missing = whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["read"], signature="none", retries=0)
    wrong = whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["read"], signature="bad", retries=0)
    assert missing["attempts"] == [[401]] and wrong["attempts"] == [[403]]
    assert runner.state(message_id)["receipt"] == {}
    raw = b'{"entry": [}'
    assert runner.http.post(webhook(runner), data=raw, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}).status_code == 403


def test_well_signed_nonsense_and_unknown_wamids_get_200(make_gateway, whatsapp):
    import hashlib
    import hmac

    runner = make_gateway(env=env())
    for raw in (b"not json", b"[]", b'{"entry": [{"changes": [{"value": {"statuses": [{"id": 5}, "x", {"status": "read"}]}}]}]}',
                json.dumps({"entry": "x"}).encode(), b'{"entry": [{"changes": "\xff"}]}'):
        signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        answer = runner.http.post(webhook(runner), data=raw, headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
    unknown = whatsapp.statuses(webhook(runner), SECRET, None, wamid="wamid.UNKNOWN", statuses=["delivered"])
    assert unknown["attempts"] == [[200]]
    stray = whatsapp.statuses(webhook(runner), SECRET, None, wamid="wamid.X", statuses=["read"], biz="A" * 16)
    assert stray["attempts"] == [[200]]
    assert "Traceback" not in runner.log()


# -- receipts ----------------------------------------------------------------------------------
def test_receipts_out_of_order_and_repeated_only_go_up_and_every_callback_verifies(make_gateway, whatsapp, receiver):
    runner = make_gateway(env=env())
    hooks = receiver(runner)
    message_id = send_wpp(runner, hooks.url)
    hooks.wait(runner, lambda got: any(r["event"] and r["event"]["type"] == "message.delivered" for r in got))
    # read first, then the lower levels, each notification twice, in both JSON escapings Meta may use
    whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["read"], duplicates=1)
    whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["sent", "delivered"], duplicates=1, ascii=False, batch=True)
    report = runner.state(message_id)
    assert report["state"] == "delivered" and set(report["receipt"]) == {"read", "sent", "delivered"}
    got = hooks.wait(runner, lambda got: any(r["event"] and r["event"]["type"] == "message.read" for r in got))
    time.sleep(0.3)
    got = hooks.wait(runner, lambda got: True)
    assert all(r["verified"] for r in got) and got
    types = [r["event"]["type"] for r in got]
    assert types.count("message.delivered") == 1 and types.count("message.read") == 1, types  # repeats and late lower levels: no event
    read = next(r["event"] for r in got if r["event"]["type"] == "message.read")
    assert read["data"]["id"] == message_id and "read" in read["data"]["receipt"]
    assert got[0]["path"] == "/hooks/multimsg?x=1" and got[0]["host"] == f"127.0.0.1:{hooks.port}"
    metrics = runner.http.get(runner.url + "/metrics").text
    assert 'multimsg_receipts_total{service="wpp1",status="read"} 2.0' in metrics
    assert "multimsg_callbacks_pending 0.0" in metrics and 'multimsg_callbacks_total{outcome="delivered"}' in metrics
    stats = subprocess.run([sys.executable, "-m", "multimsg", "stats", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, **runner.env, "MULTIMSG_HOME": str(runner.home)})
    figures = json.loads(stats.stdout)
    assert figures["callbacks"] == {"pending": 0, "delivered": 2, "given_up": 0}, figures["callbacks"]
    assert figures["receipts"]["wpp1"] == {"read": 2, "sent": 2, "delivered": 2}, figures["receipts"]
    table = subprocess.run([sys.executable, "-m", "multimsg", "stats"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, **runner.env, "MULTIMSG_HOME": str(runner.home)}).stdout
    assert "callbacks: 0 pending, 2 delivered, 0 given up" in table and "receipts wpp1: 2 delivered, 2 read, 2 sent" in table


def test_a_failed_receipt_fails_an_unreported_message_with_the_platforms_reason(make_gateway, whatsapp, receiver):
    runner = make_gateway(env=env())
    hooks = receiver(runner)
    message_id = send_wpp(runner, hooks.url)
    runner.drain()
    whatsapp.wait_for(lambda r: (r.get("json") or {}).get("biz_opaque_callback_data") == message_id)
    whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["sent", "failed"])
    report = runner.state(message_id)
    assert report["state"] == "failed" and "131026" in report["last_error"] and report["failure"]["code"] == 131026
    assert runner.cons(message_id).text == "failed"  # the plain text answer is the state alone
    got = hooks.wait(runner, lambda got: any(r["event"]["type"] == "message.failed" for r in got if r["event"]))
    failed = next(r["event"] for r in got if r["event"]["type"] == "message.failed")
    assert failed["data"]["failure"]["title"] == "Message undeliverable"


def test_a_receipt_after_a_crash_marks_the_message_delivered_and_it_is_not_sent_again(make_gateway, whatsapp, tmp_path):
    home = tmp_path / "crash"
    runner = make_gateway(home=home, env=env(MULTIMSG_LEASE="2"))
    message_id = send_wpp(runner)
    whatsapp.configure(latency=5)  # the platform accepts it, but the answer never reaches the gateway
    def drain_and_die():
        try:
            requests.post(runner.url + "/drain", timeout=30)
        except requests.ConnectionError:
            pass  # killed while it waits for the platform: that is the point

    threading.Thread(target=drain_and_die, daemon=True).start()
    whatsapp.wait_for(lambda r: (r.get("json") or {}).get("biz_opaque_callback_data") == message_id, timeout=10)
    runner.kill9()
    whatsapp.configure(latency=0)
    again = make_gateway(home=home, env=env(MULTIMSG_LEASE="2"))
    assert again.state(message_id)["state"] == "queued"
    answer = whatsapp.statuses(webhook(again), SECRET, message_id, statuses=["sent"])
    assert answer["attempts"] == [[200]]
    report = again.state(message_id)
    assert report["state"] == "delivered" and report["platform_ids"] == [answer["wamid"]]
    time.sleep(2.5)  # the dead pass's lease has lapsed
    again.drain()
    sent = [r for r in whatsapp.received() if (r.get("json") or {}).get("biz_opaque_callback_data") == message_id]
    assert len(sent) == 1


# -- callbacks ---------------------------------------------------------------------------------
def test_a_receiver_down_for_a_while_gets_every_event_once_under_one_id(make_gateway, whatsapp, receiver):
    runner = make_gateway(env=env())
    hooks = receiver(runner, start=False)
    ids = [send_wpp(runner, hooks.url) for _ in range(3)]
    runner.drain()
    for message_id in ids:
        whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["delivered", "read"])
    for _ in range(3):  # down: every attempt fails, nothing is lost
        runner.drain()
        time.sleep(0.25)
    assert runner.http.get(runner.url + "/metrics").text.count("multimsg_callbacks_pending 9.0") == 1
    hooks.start()
    got = hooks.wait(runner, lambda got: len({r["id"] for r in got}) >= 9)
    time.sleep(0.5)
    got = hooks.wait(runner, lambda got: True)
    assert all(r["verified"] for r in got)
    ids_by_event = defaultdict(set)
    for r in got:
        ids_by_event[(r["event"]["data"]["id"], r["event"]["type"])].add(r["id"])
    assert len(ids_by_event) == 9 and all(len(v) == 1 for v in ids_by_event.values()), ids_by_event
    assert len(got) == 9  # nothing delivered twice once the receiver answered 2xx


def test_events_in_the_outbox_survive_a_kill_9(make_gateway, whatsapp, receiver, tmp_path):
    home = tmp_path / "outbox"
    runner = make_gateway(home=home, env=env())
    hooks = receiver(runner, start=False)
    message_id = send_wpp(runner, hooks.url)
    runner.drain()
    whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["read"])
    runner.kill9()
    again = make_gateway(home=home, env=env())
    hooks.start()
    got = hooks.wait(again, lambda got: {r["event"]["type"] for r in got if r["event"]} >= {"message.delivered", "message.read"})
    assert all(r["verified"] for r in got)


def kill_at_the_outbox(runner: Gateway, tmp_path: Path, action) -> None:
    """Run ``action`` while strace kills the runner (SIGKILL) as it first opens the outbox's lock: after the
    write of the change, before its event is in the outbox (on the code before events were written with
    their change, that was the gap in which a crash lost the event)."""
    lock = runner.home / "locks" / "outbox.lock"
    options = ["-P", str(lock), "-e", "trace=openat", "-e", "inject=openat:signal=KILL:when=1"]
    with traced(runner.proc.pid, options, tmp_path, "killing the gateway between the write of a change and of its event") as out:
        action()
        runner.proc.wait(20)  # killed by the injected signal, not by us
    assert runner.proc.returncode == -signal.SIGKILL, runner.proc.returncode
    assert "+++ killed by SIGKILL +++" in out.read_text()


def quietly(call):
    def run():
        try:
            call()
        except requests.ConnectionError:
            pass  # the runner died under it: that is the point
    return run


@pytest.mark.parametrize("backend", ["embedded"])  # the one backend whose change and event are two files; Redis: one script
@pytest.mark.parametrize("change", ["final state", "receipt"])
def test_a_kill_9_between_a_change_and_its_event_loses_neither(make_gateway, whatsapp, receiver, tmp_path, change):
    home = tmp_path / "gap"
    runner = make_gateway(home=home, env=env())
    hooks = receiver(runner)
    message_id = send_wpp(runner, hooks.url)
    if change == "final state":
        kill_at_the_outbox(runner, tmp_path, quietly(lambda: requests.post(runner.url + "/drain", timeout=30)))
    else:
        hooks.wait(runner, lambda got: any(r["event"]["type"] == "message.delivered" for r in got if r["event"]))
        kill_at_the_outbox(runner, tmp_path, quietly(
            lambda: whatsapp.statuses(webhook(runner), SECRET, message_id, statuses=["read"], retries=0)))
    again = make_gateway(home=home, env=env())
    report = again.state(message_id)
    assert report["state"] == "delivered", report  # the change was written before the kill
    wanted = "message.delivered" if change == "final state" else "message.read"
    assert change == "final state" or "read" in report["receipt"]
    got = hooks.wait(again, lambda got: any(r["event"]["type"] == wanted for r in got if r["event"]))
    time.sleep(0.3)
    got = hooks.wait(again, lambda got: True)
    assert all(r["verified"] for r in got)
    ids_by_type = defaultdict(set)
    for r in got:
        ids_by_type[r["event"]["type"]].add(r["id"])
    assert len(ids_by_type[wanted]) == 1 and len([r for r in got if r["event"]["type"] == wanted]) == 1, got
    sent = [r for r in whatsapp.received() if (r.get("json") or {}).get("biz_opaque_callback_data") == message_id]
    assert len(sent) == 1  # and the message itself was not sent again


def test_a_receiver_that_never_answers_2xx_is_given_up_after_the_last_attempt(make_gateway, receiver):
    runner = make_gateway(env=env(MULTIMSG_CALLBACK_BACKOFF="0.1 0.1"))
    hooks = receiver(runner, status=500)
    send_wpp(runner, hooks.url)
    got = hooks.wait(runner, lambda got: len(got) >= 3)
    time.sleep(0.3)
    runner.drain()
    assert len(hooks.received()) == 3 and len({r["id"] for r in got}) == 1  # three attempts, one webhook-id
    assert 'multimsg_callbacks_total{outcome="given_up"} 1.0' in runner.http.get(runner.url + "/metrics").text


def test_a_tokens_default_callback_tells_a_telegram_client_delivered_and_failed_from_any_process(
        make_gateway, telegram, receiver, backend, request, tmp_path):
    identity = env(MULTIMSG_IDENTITY="token", MULTIMSG_RATE_LIMIT="0")
    a = make_gateway("a", env=identity)
    hooks = receiver(a)
    # `multimsg token add`: on another host with its own data folder (Redis), or on the gateway's own (embedded)
    shared = {"MULTIMSG_HOME": str(a.home)} if backend == "embedded" else \
        {"MULTIMSG_HOME": str(tmp_path / "operator"), "MULTIMSG_BACKEND": request.getfixturevalue("redis_url")}
    made = subprocess.run([sys.executable, "-m", "multimsg", "token", "add", "shop", "--callback", hooks.url], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **shared}, timeout=60)
    assert made.returncode == 0, made.stderr
    b = a if backend == "embedded" else make_gateway("b", env=identity)  # Redis: a second gateway, its own data folder
    shop = {"Authorization": f"Bearer {made.stdout.strip()}"}
    blocked, fine = new_chat(), new_chat()
    telegram.script("blocked", dest=blocked)
    ids = {}
    for chat in (fine, blocked):
        data_id = b.http.post(b.url + "/data", files={"data": ("t.txt", b"hola")}, headers=shop, timeout=30).text
        queued = b.http.post(b.url + "/msg", data={"id": data_id, "serv": "telegram", "dest": chat, "type": "text"}, headers=shop, timeout=30)
        assert queued.status_code == 200, queued.text
        ids[chat] = queued.text  # no callback field: the token's default
    got = hooks.wait(b, lambda got: len(got) >= 2)
    assert all(r["verified"] for r in got)
    events = {r["event"]["data"]["id"]: r["event"] for r in got}
    assert events[ids[fine]]["type"] == "message.delivered" and events[ids[fine]]["data"]["state"] == "delivered"
    failed = events[ids[blocked]]
    assert failed["type"] == "message.failed" and "bot was blocked by the user" in failed["data"]["last_error"]


def test_the_servers_default_callback_url_is_used_without_a_callback_field(make_gateway, whatsapp, receiver, tmp_path):
    home = tmp_path / "default"
    first = make_gateway(home=home, env=env())
    hooks = receiver(first, start=False)  # its key is the gateway's; its URL goes into the settings
    first.stop()
    runner = make_gateway(home=home, env=env(MULTIMSG_CALLBACK_URL=hooks.url))
    hooks.start()
    message_id = send_wpp(runner)  # no callback field
    got = hooks.wait(runner, lambda got: any(r["event"] for r in got))
    assert got[0]["verified"] and got[0]["event"]["type"] == "message.delivered" and got[0]["event"]["data"]["id"] == message_id


@pytest.mark.parametrize("backend", ["embedded"])  # nothing stored: the same on every backend
def test_private_and_non_http_callback_urls_are_refused_at_msg(make_gateway):
    runner = make_gateway(env={"MULTIMSG_WPP1_APP_SECRET": SECRET})
    data_id = runner.upload_id(b"hola")
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/", "http://169.254.169.254/latest", "ftp://example.com/",
                "http://224.0.0.1/", "http://localhost/", "http://user:pw@example.com/", "http://0.0.0.0/"):
        answer = runner.msg(id=data_id, serv="wpp1", dest=new_number(), type="text", callback=url)
        assert answer.status_code == 400, (url, answer.text)


def test_the_callback_key_is_served_as_pem_and_whpk(make_gateway):
    runner = make_gateway(env=env())
    pem = runner.http.get(runner.url + "/callback-key").text
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    data = runner.http.get(runner.url + "/callback-key", headers={"Accept": "application/json"}).json()
    assert data["key"] == pem and data["whpk"].startswith("whpk_")


# -- in process ------------------------------------------------------------------------------
def test_the_address_is_checked_again_at_connect_time(monkeypatch):
    answers = iter([[(2, 1, 6, "", ("93.184.216.34", 80))], [(2, 1, 6, "", ("127.0.0.1", 80))]])
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: next(answers))
    assert check_url("http://rebinding.example/x", allow_private=False)
    with pytest.raises(InvalidInput):  # the name now resolves to loopback: refused before connecting
        post("http://rebinding.example/x", b"{}", {}, allow_private=False)


def test_a_redirect_is_not_followed_and_a_receiver_that_never_answers_is_retried(tmp_path):
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from multimsg import callbacks
    from multimsg.queue.outbox import make_event

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(302 if self.path == "/moved" else 200)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/target")
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"moved")

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts (the kernel does), never answers
    try:
        assert post(f"http://127.0.0.1:{server.server_port}/moved", b"{}", {}, allow_private=True) == 302
        assert hits == ["/moved"]  # the Location was not followed
        with pytest.raises(TimeoutError):
            post(f"http://127.0.0.1:{silent.getsockname()[1]}/cb", b"{}", {}, allow_private=True, timeout=0.3)
        assert callbacks.TIMEOUT == 5.0  # what the README promises a receiver

        store = MemoryStore()
        m = Message(id="R" * 16, client="ip:1", data_id="d" * 16, serv="wpp1", dest="1", type="text", state=State.DELIVERED)
        for url in (f"http://127.0.0.1:{server.server_port}/moved", f"http://127.0.0.1:{silent.getsockname()[1]}/cb"):
            store.enqueue_event(make_event(m.with_changes(callback=url), "message.delivered", time.time()))
        d = Dispatcher(store, CallbackKeys(Layout(tmp_path / "h")), (60.0,), allow_private=True,
                       sender=lambda *a: post(*a, timeout=0.3))
        assert d.run() == {"delivered": 0, "retried": 2, "given_up": 0}
        assert store.outbox_figures()["pending"] == 2 and hits == ["/moved", "/moved"]
    finally:
        server.shutdown()
        silent.close()


def test_the_dispatcher_retries_with_the_same_id_and_gives_up_after_the_backoff(tmp_path):
    store = MemoryStore()
    clock = [1000.0]
    sent: list[tuple[str, dict]] = []
    answers = iter([500, 0, 204])

    def sender(url, body, headers, allow_private):
        sent.append((url, headers))
        status = next(answers)
        if status == 0:
            raise ConnectionRefusedError("down")
        return status

    d = Dispatcher(store, CallbackKeys(Layout(tmp_path / "h")), (10.0, 20.0), clock=lambda: clock[0], sender=sender)
    m = Message(id="M" * 16, client="ip:1", data_id="d" * 16, serv="wpp1", dest="1", type="text",
                state=State.DELIVERED, callback="http://example.com/cb")
    from multimsg.queue.outbox import make_event

    store.enqueue_event(make_event(m, "message.delivered", clock[0]))
    assert d.run() == {"delivered": 0, "retried": 1, "given_up": 0}
    assert d.run()["retried"] == 0  # not due yet
    clock[0] += 10
    assert d.run()["retried"] == 1
    clock[0] += 20
    assert d.run()["delivered"] == 1
    assert len({h["webhook-id"] for _, h in sent}) == 1 and all(h["webhook-signature"].startswith("v1a,") for _, h in sent)
    assert store.outbox_figures() == {"pending": 0, "delivered": 1, "given_up": 0}


def test_a_token_can_carry_a_default_callback_url(tmp_path, capsys):
    from multimsg.tokens import main as token_main
    from multimsg.tokens import token_callback

    path = tmp_path / "tokens"
    assert token_main(["--file", str(path), "add", "shop", "--callback", "https://hooks.example.com/mm"]) == 0
    assert token_callback("token:shop", path) == "https://hooks.example.com/mm"
    assert token_callback("token:other", path) is None and token_callback("ip:127.0.0.1", path) is None
    assert token_main(["--file", str(path), "add", "bad", "--callback", "ftp://x/"]) == 2
    assert token_main(["--file", str(path), "remove", "shop"]) == 0
    assert token_callback("token:shop", path) is None
