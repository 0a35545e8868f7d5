"""The services' platform requests (``PlatformSession`` in ``multimsg/services/base.py``): proxies, redirects.

A real forward proxy on loopback (``proxy_server``: it records each request and
relays it to its target) stands between the services and the emulators. The
environment's HTTP_PROXY / NO_PROXY are read at a session's first request to a
host, and kept by that service instance. A redirecting server
(``redirect_server``) checks that redirects are followed as requests follows them.
What ``PlatformSession`` prepares and merges is compared with what a plain
``requests.Session`` makes of the same request and environment.
"""

from __future__ import annotations

import socketserver
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from multimsg.config import ServiceConfig
from multimsg.queue.backends.files import FileContent
from multimsg.services.base import PlatformSession
from multimsg.services.telegram import Telegram
from tests.gatewayproc import free_port
from tests.services_support import new_chat, new_number

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding", "te", "upgrade"}


class Loopback:
    """An HTTP server on loopback whose every request goes to ``answer(handler)``; records (method, path)."""

    def __init__(self, answer) -> None:
        self.seen: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                server.seen.append((self.command, self.path))
                answer(self)

            do_GET = do_POST = do_PUT = handle_one

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, headers, content: bytes) -> None:
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in _HOP_BY_HOP | {"content-length", "date", "server"}:
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(content)))
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(content)


def relay(handler: BaseHTTPRequestHandler) -> None:
    """A forward proxy's answer: the request (its path is the absolute URL) sent on directly."""
    body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
    request = urllib.request.Request(handler.path, data=body or None, headers=headers, method=handler.command)
    try:
        with _DIRECT.open(request, timeout=10) as answer:
            reply(handler, answer.status, answer.headers.items(), answer.read())
    except urllib.error.HTTPError as error:
        reply(handler, error.code, error.headers.items(), error.read())


def proxy_server() -> Loopback:
    """A plain-HTTP forward proxy on loopback."""
    return Loopback(relay)


def redirect_server(target: str, status: int) -> Loopback:
    """Answers every request with ``status`` and a Location on ``target`` with the same path."""
    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        reply(handler, status, [("Location", target + handler.path)], b"")
    return Loopback(redirect)


@pytest.fixture
def forward_proxy():
    proxy = proxy_server()
    yield proxy
    proxy.close()


@pytest.fixture
def proxy_env(monkeypatch):
    """Sets the proxy variables (both spellings, as requests reads either) after clearing whatever the machine has."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name.lower(), value)
            monkeypatch.setenv(name.upper(), value)
    return set_


def telegram_service(emulator) -> Telegram:
    return Telegram(ServiceConfig(name="telegram", values={"token": emulator.token, "api_url": emulator.url}))


def text_message(tmp_path, chat: str) -> dict:
    path = tmp_path / f"{chat}.txt"
    path.write_text("hola por el proxy")
    return {"id": "P" * 16, "content": FileContent(path), "dest": chat, "type": "text", "options": {}, "platform_ids": []}


def test_the_drain_sends_through_the_environments_proxy(make_gateway, telegram, whatsapp, forward_proxy):
    clear = {name: "" for variable in PROXY_VARIABLES for name in (variable, variable.upper())}
    runner = make_gateway(env={**clear, "HTTP_PROXY": forward_proxy.url, "http_proxy": forward_proxy.url})
    chat, number = new_chat(), new_number()
    sent = [runner.send(b"por el proxy", "telegram", chat), runner.send(b"por el proxy", "wpp1", number)]
    for message_id in sent:
        assert runner.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(lambda r: str(r["dest"]) == chat) and whatsapp.wait_for(lambda r: str(r["dest"]) == number)
    urls = [url for method, url in forward_proxy.seen if method == "POST"]
    assert any(url.startswith(telegram.url) and url.endswith("/sendMessage") for url in urls), urls  # Telegram's form POST
    assert any(url.startswith(whatsapp.url) and url.endswith("/messages") for url in urls), urls  # WhatsApp's JSON POST


def test_no_proxy_names_the_hosts_sent_to_directly(proxy_env, telegram, tmp_path, forward_proxy):
    proxy_env(http_proxy=forward_proxy.url, no_proxy="127.0.0.1")
    chat = new_chat()
    outcome = telegram_service(telegram).send(text_message(tmp_path, chat))
    assert outcome.kind == "delivered", outcome
    assert forward_proxy.seen == []
    assert telegram.wait_for(lambda r: str(r["dest"]) == chat)


def test_an_unreachable_proxy_is_a_retry_whose_reason_holds_no_url(proxy_env, telegram, tmp_path):
    proxy_env(http_proxy=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    chat = new_chat()
    outcome = telegram_service(telegram).send(text_message(tmp_path, chat))
    assert outcome.kind == "retry", outcome
    assert outcome.reason == "telegram: could not reach the platform (ProxyError)"
    assert not [r for r in telegram.received() if str(r["dest"]) == chat]


def test_the_proxy_is_read_at_an_instances_first_request_to_a_host(proxy_env, telegram, tmp_path, forward_proxy):
    proxy_env()
    direct = telegram_service(telegram)
    assert direct.send(text_message(tmp_path, new_chat())).kind == "delivered"
    proxy_env(http_proxy=forward_proxy.url)
    assert direct.send(text_message(tmp_path, new_chat())).kind == "delivered"
    assert forward_proxy.seen == []  # this instance read the environment at its first request
    assert telegram_service(telegram).send(text_message(tmp_path, new_chat())).kind == "delivered"
    assert [method for method, url in forward_proxy.seen] == ["POST"]  # a new instance reads it again


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_that_keeps_the_method_is_followed_with_the_message(proxy_env, telegram, tmp_path, status):
    proxy_env()
    redirector, chat = redirect_server(telegram.url, status), new_chat()
    try:
        service = Telegram(ServiceConfig(name="telegram", values={"token": telegram.token, "api_url": redirector.url}))
        outcome = service.send(text_message(tmp_path, chat))
    finally:
        redirector.close()
    assert outcome.kind == "delivered", outcome
    assert [method for method, path in redirector.seen] == ["POST"] and redirector.seen[0][1].endswith("/sendMessage")
    [sent] = telegram.wait_for(lambda r: str(r["dest"]) == chat)
    assert sent["fields"]["text"] == "hola por el proxy"  # the form body went on to the new location


# The services' shapes of request (Session.request's defaults: data and params {} when not given).
SHAPES = {
    "telegram-form": {"data": {"chat_id": "42", "text": "hola ✓ & más"}},
    "form-list-none-bytes": {"data": {"to": ["a", "b"], "skip": None, "raw": b"\xff", "n": 3}},
    "whatsapp-json": {"json": {"to": "42", "text": {"body": "hola ✓"}}, "headers": {"Authorization": "Bearer t"}},
    "bytes-and-removed-header": {"data": b"{}", "headers": {"Content-Type": "application/json", "User-Agent": None}},
    "form-with-own-type": {"data": {"f": "v"}, "headers": {"content-type": "text/plain"}},
    "empty-form-and-json": {"data": {}, "json": {"a": 1}},
    "params-and-bytes": {"params": {"filename": "a b.png"}, "data": b"bytes"},
    "twilio-basic-auth": {"data": {"To": "+34600000000", "Body": "hola"}, "auth": ("AC1", "secret")},
    "multipart-files": {"files": {"file": ("a.txt", b"abc", "text/plain")}, "data": {"chat_id": "42"}},
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_request_is_prepared_as_requests_prepares_it(shape):
    def prepared(session: requests.Session) -> tuple:
        shape_ = {"data": {}, "params": {}, **shape}
        request = session.prepare_request(requests.Request("POST", "https://api.example.org/bot1:T/sendMessage", **shape_))
        body, headers = request.body, dict(request.headers)
        if "boundary=" in headers.get("Content-Type", ""):  # a random boundary per body
            boundary = headers["Content-Type"].split("boundary=")[1]
            body, headers["Content-Type"] = body.replace(boundary.encode(), b"B"), "multipart/form-data; boundary=B"
        return request.method, request.url, headers, body

    assert prepared(PlatformSession()) == prepared(requests.Session())


ENVIRONMENTS = {
    "none": {},
    "http-proxy": {"HTTP_PROXY": "http://proxy.lan:3128"},
    "lower-case-wins": {"http_proxy": "http://lower.lan:3128", "HTTP_PROXY": "http://upper.lan:3128", "https_proxy": "http://s.lan:3128"},
    "no-proxy-names-the-host": {"HTTPS_PROXY": "http://proxy.lan:3128", "NO_PROXY": "example.org"},
    "no-proxy-other-host": {"HTTPS_PROXY": "http://proxy.lan:3128", "NO_PROXY": "graph.facebook.com,10.0.0.0/8"},
    "all-proxy": {"ALL_PROXY": "socks5://proxy.lan:1080"},
    "ca-bundle": {"REQUESTS_CA_BUNDLE": "/etc/ssl/lan.pem", "CURL_CA_BUNDLE": "/etc/ssl/curl.pem"},
}


@pytest.mark.parametrize("environment", ENVIRONMENTS.values(), ids=ENVIRONMENTS.keys())
@pytest.mark.parametrize("url", ["https://api.example.org/bot1:T/sendMessage", "http://127.0.0.1:8081/v23.0/1/messages"])
def test_the_environment_is_merged_as_requests_merges_it(proxy_env, monkeypatch, environment, url):
    proxy_env()
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    ours = PlatformSession().merge_environment_settings(url, {}, None, None, None)
    theirs = requests.Session().merge_environment_settings(url, {}, None, None, None)
    assert {**ours, "proxies": dict(ours["proxies"])} == {**theirs, "proxies": dict(theirs["proxies"])}


class RawRecorder:
    """A loopback HTTP server that keeps each request's bytes as they arrived and answers ``answer`` (raw bytes)."""

    def __init__(self, answer: bytes) -> None:
        self.requests: list[bytes] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    recorder.requests.append(head + self.rfile.read(length))
                    self.wfile.write(answer)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# The shapes PlatformSession prepares itself (``_direct``), and shapes beside them that take requests' general path.
DIRECT_SHAPES = {
    **{name: SHAPES[name] for name in ("telegram-form", "form-list-none-bytes", "whatsapp-json", "bytes-and-removed-header",
                                       "form-with-own-type", "empty-form-and-json")},
    "no-body": {},
    "json-and-form": {"data": {"a": "1"}, "json": {"b": 2}},
    "nan-json": {"json": {"a": 1.5}},
}
ANSWER = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\nX-Thing: 1\r\n"
          b"Content-Length: 11\r\n\r\n{\"ok\":true}")


@pytest.fixture(scope="module")
def recorder():
    server = RawRecorder(ANSWER)
    yield server
    server.close()


@pytest.mark.parametrize("path", ["/bot1:T-x_y/sendMessage", "/v23.0/1/messages?a=1&b=/c", "/a%20b", "/x/../y", "/.well-known"])
@pytest.mark.parametrize("shape", DIRECT_SHAPES.values(), ids=DIRECT_SHAPES.keys())
def test_a_request_goes_out_byte_for_byte_as_requests_sends_it(proxy_env, recorder, shape, path):
    proxy_env()
    recorder.requests.clear()
    answers = []
    for session in (PlatformSession(), requests.Session()):
        response = session.post(recorder.url + path, timeout=5, **shape)
        answers.append((response.status_code, response.reason, dict(response.headers), response.content,
                        response.encoding, response.url, response.json(), response.history, dict(response.cookies)))
    ours, theirs = recorder.requests
    assert ours == theirs
    assert answers[0] == answers[1]


def test_cookies_a_platform_sets_are_kept_and_sent_back_as_requests_does(proxy_env):
    proxy_env()
    server = RawRecorder(b"HTTP/1.1 200 OK\r\nSet-Cookie: __cf_bm=abc; Path=/\r\nContent-Length: 2\r\n\r\n{}")
    jars = []
    try:
        for session in (PlatformSession(), requests.Session()):
            session.post(server.url + "/api/chat.postMessage", json={"text": "1"}, timeout=5)
            session.post(server.url + "/api/chat.postMessage", json={"text": "2"}, timeout=5)
            jars.append(session.cookies.get_dict())
    finally:
        server.close()
    assert jars == [{"__cf_bm": "abc"}, {"__cf_bm": "abc"}]
    assert server.requests[0:2] == server.requests[2:4] and b"Cookie: __cf_bm=abc" in server.requests[1]


def test_an_unreachable_platform_raises_requests_own_error():
    port = free_port()
    with pytest.raises(requests.ConnectionError):
        PlatformSession().post(f"http://127.0.0.1:{port}/x", json={}, timeout=2)
