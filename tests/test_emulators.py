"""Fast tests of the platform emulators themselves (tests/emulators/), which are test infrastructure."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.emulators import TelegramEmulator, WhatsAppEmulator, openapi


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        session.trust_env = False  # loopback only, never through a proxy
        yield session


@pytest.fixture(scope="module")
def tg_server():
    with TelegramEmulator(token="4242:EMU-test_token").start() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def wa_server():
    with WhatsAppEmulator(token="wa-token", phone_id="555000").start() as emulator:
        yield emulator


@pytest.fixture
def tg(tg_server):
    tg_server.reset()
    return tg_server


@pytest.fixture
def wa(wa_server):
    wa_server.reset()
    return wa_server


def tg_call(tg, http, method, token=None, **kwargs):
    return http.post(f"{tg.url}/bot{token or tg.token}/{method}", timeout=5, **kwargs)


def wa_post(wa, http, endpoint="messages", token=None, phone_id=None, **kwargs):
    headers = {"Authorization": f"Bearer {token or wa.token}"}
    return http.post(f"{wa.url}/{phone_id or wa.phone_id}/{endpoint}", headers=headers, timeout=5, **kwargs)


def text_body(to, body="hello", **extra):
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"body": body}, **extra}


def wa_code(response):
    return response.status_code, response.json()["error"]["code"]


# ---- Telegram -----------------------------------------------------------------------------

def test_telegram_send_message_envelope_and_chat_types(tg, http):
    answers = [
        tg_call(tg, http, "sendMessage", json={"chat_id": 11, "text": "json"}),
        tg_call(tg, http, "sendmessage", data={"chat_id": "-12", "text": "form"}),
        tg_call(tg, http, "SendMessage", params={"chat_id": "-10012345", "text": "query"}),
        tg_call(tg, http, "sendMessage", files={"chat_id": (None, "@news_channel"), "text": (None, "multipart")}),
    ]
    assert [a.status_code for a in answers] == [200] * 4
    results = [a.json()["result"] for a in answers]
    assert all(a.json()["ok"] is True for a in answers)
    assert [r["chat"]["type"] for r in results] == ["private", "group", "supergroup", "channel"]
    ids = [r["message_id"] for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 4 and all(isinstance(r["date"], int) for r in results)
    assert tg_call(tg, http, "getMe").json()["result"]["is_bot"] is True  # not recorded
    records = tg.received()
    assert [r["dest"] for r in records] == [11, -12, -10012345, "@news_channel"]
    assert [r["fields"]["text"] for r in records] == ["json", "form", "query", "multipart"]
    assert records[0]["json"] == {"chat_id": 11, "text": "json"} and records[1]["json"] is None


def test_telegram_token_path_and_method_errors(tg, http):
    cases = [
        (tg_call(tg, http, "getMe", token="0123:abc"), 401, "Unauthorized: invalid token specified"),
        (tg_call(tg, http, "getMe", token="no-colon"), 401, "Unauthorized: invalid token specified"),
        (tg_call(tg, http, "getMe", token="4242:wrong"), 401, "Unauthorized"),
        (http.get(f"{tg.url}/api/getMe", timeout=5), 404, "Not Found"),
        (tg_call(tg, http, "sendCarrierPigeon"), 404, "Not Found: method not found"),
    ]
    for answer, status, description in cases:
        assert (answer.status_code, answer.json()) == (status, {"ok": False, "error_code": status,
                                                                "description": description})


def test_telegram_validation_and_limits(tg, http):
    tg.configure(chat_rate=0)
    emoji = "\N{GRINNING FACE}"  # 2 UTF-16 code units
    cases = [
        ("sendMessage", {"json": {"chat_id": 1, "text": emoji * 2048}}, 200, None),
        ("sendMessage", {"json": {"chat_id": 1, "text": emoji * 2048 + "x"}}, 400, "Bad Request: message is too long"),
        ("sendMessage", {"json": {"chat_id": 1, "text": ""}}, 400, "Bad Request: message text is empty"),
        ("sendMessage", {"json": {"text": "no chat"}}, 400, "Bad Request: chat_id is empty"),
        ("sendDocument", {"data": {"chat_id": 1, "caption": "c" * 1025}, "files": {"document": ("a.txt", b"x")}},
         400, "Bad Request: message caption is too long"),
        ("sendPhoto", {"data": {"chat_id": 1}}, 400, "Bad Request: there is no photo in the request"),
        ("sendPhoto", {"data": {"chat_id": 1}, "files": {"photo": ("big.jpg", b"\0" * 10_000_001)}},
         413, "Request Entity Too Large"),
    ]
    for method, kwargs, status, description in cases:
        answer = tg_call(tg, http, method, **kwargs)
        assert answer.status_code == status, (method, answer.text)
        assert answer.json().get("description") == description
    records = tg.received()
    assert [r["status"] for r in records] == [case[2] for case in cases]
    assert records[0]["schema_errors"] == [] and records[1]["schema_errors"] == ["Bad Request: message is too long"]


def test_telegram_uploads_are_described_and_recorded(tg, http):
    pdf = b"%PDF-1.4 test"
    doc = tg_call(tg, http, "sendDocument", data={"chat_id": 21, "caption": "report"},
                  files={"document": ("report.pdf", pdf, "application/pdf")}).json()["result"]
    assert doc["caption"] == "report"
    assert {k: doc["document"][k] for k in ("file_name", "mime_type", "file_size")} == \
        {"file_name": "report.pdf", "mime_type": "application/pdf", "file_size": len(pdf)}
    assert doc["document"]["file_id"] and doc["document"]["file_unique_id"]
    photo = tg_call(tg, http, "sendPhoto", data={"chat_id": 22}, files={"photo": ("p.jpg", b"\xff\xd8\xff")})
    sizes = photo.json()["result"]["photo"]
    assert isinstance(sizes, list) and all({"file_id", "file_unique_id", "width", "height"} <= set(s) for s in sizes)
    record = tg.wait_for(lambda r: r["method"] == "sendDocument")[0]
    assert record["files"]["document"] == {"sha256": hashlib.sha256(pdf).hexdigest(), "size": len(pdf),
                                           "filename": "report.pdf", "content_type": "application/pdf"}
    assert "document" not in record["fields"] and record["fields"]["caption"] == "report"


def test_telegram_rate_limits(tg, http):
    tg.configure(rate=5, chat_rate=0)
    answers = [tg_call(tg, http, "sendMessage", json={"chat_id": 100 + i, "text": "x"}) for i in range(8)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    limited = answers[-1]
    assert limited.headers["Retry-After"] == "1"
    assert limited.json() == {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                              "parameters": {"retry_after": 1}}
    stats = tg.stats()
    assert (stats["requests"], stats["accepted"], stats["rate_limited"], stats["max_in_any_window"]) == (8, 5, 3, 5)

    tg.configure(rate=0, chat_rate=True, group_rate=2)
    private = [tg_call(tg, http, "sendMessage", json={"chat_id": 7, "text": "x"}).status_code for _ in range(2)]
    group = [tg_call(tg, http, "sendMessage", json={"chat_id": -7, "text": "x"}) for _ in range(3)]
    assert private == [200, 429]
    assert [g.status_code for g in group] == [200, 200, 429]
    assert group[-1].json()["parameters"]["retry_after"] == 60


def test_telegram_scripted_answers(tg, http):
    tg.script("retry_after", dest=31, times=2, retry_after=7)
    tg.script("blocked", dest="32")
    tg.script("bad_gateway", dest=33)
    tg.script({"status": 400, "body": {"ok": False, "error_code": 400, "description": "Bad Request: custom"}}, dest=34)
    first, second, third = (tg_call(tg, http, "sendMessage", json={"chat_id": 31, "text": "x"}) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"], first.json()["parameters"]) == (429, "7", {"retry_after": 7})
    assert second.status_code == 429 and third.status_code == 200  # script used up; limiter untouched
    blocked = tg_call(tg, http, "sendMessage", json={"chat_id": 32, "text": "x"})
    assert blocked.json()["description"] == "Forbidden: bot was blocked by the user" and blocked.status_code == 403
    gateway = tg_call(tg, http, "sendMessage", json={"chat_id": 33, "text": "x"})
    assert gateway.status_code == 502 and gateway.text.lstrip().startswith("<html>")
    assert tg_call(tg, http, "sendMessage", json={"chat_id": 34, "text": "x"}).json()["description"] == "Bad Request: custom"

    tg.script("drop", dest=35)
    with pytest.raises(requests.ConnectionError):
        tg_call(tg, http, "sendMessage", json={"chat_id": 35, "text": "x"})
    tg.script("timeout", dest=36, seconds=1)
    with pytest.raises(requests.ReadTimeout):
        http.post(f"{tg.url}/bot{tg.token}/sendMessage", json={"chat_id": 36, "text": "x"}, timeout=0.3)
    dropped, late = tg.wait_for(lambda r: r["dest"] in (35, 36), count=2)
    assert (dropped["status"], dropped["outcome"]) == (0, "dropped")
    assert (late["status"], late["outcome"], late["script"]) == (200, "delivered", "timeout")
    with pytest.raises(ValueError, match="unknown response"):
        tg.script("no_such_answer")


# ---- WhatsApp -----------------------------------------------------------------------------

def test_whatsapp_text_success_and_auth_errors(wa, http):
    assert wa.url.endswith("/v23.0")
    answer = wa_post(wa, http, json=text_body("+49 170 1234567"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+49 170 1234567", "wa_id": "491701234567"}]
    assert body["messages"][0]["id"].startswith("wamid.")
    missing = http.post(f"{wa.url}/{wa.phone_id}/messages", json=text_body("1"), timeout=5)
    wrong = wa_post(wa, http, token="nope", json=text_body("1"))
    for denied in (missing, wrong):
        error = denied.json()["error"]
        assert (denied.status_code, error["code"], error["type"]) == (401, 190, "OAuthException")
        assert error["message"].startswith("Error validating access token") and error["fbtrace_id"]
    assert wa_code(wa_post(wa, http, phone_id="999", json=text_body("1"))) == (400, 100)
    assert [r["status"] for r in wa.received()] == [200, 401, 401, 400]


def test_whatsapp_validation(wa, http):
    image = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "15550001", "type": "image"}
    cases = [
        (text_body("1", "x" * 4096), 200, None),
        (text_body("1", "x" * 4097), 400, 100),
        (text_body("1", bogus=True), 400, 100),  # additionalProperties: false
        ({**text_body("1"), "recipient_type": "robot"}, 400, 100),
        ({**text_body("1"), "messaging_product": "sms"}, 400, 100),
        ({**image, "image": {"id": "1", "link": "https://example.com/a.jpg"}}, 400, 100),
        ({**image, "image": {"link": "https://example.com/a.jpg", "caption": "c" * 1025}}, 400, 100),
        ({**image, "image": {"id": "424242"}}, 400, 131053),  # never uploaded
    ]
    for body, status, code in cases:
        answer = wa_post(wa, http, json=body)
        assert answer.status_code == status, (body, answer.text)
        if code:
            assert answer.json()["error"]["code"] == code
            assert answer.json()["error"]["message"].startswith(f"(#{code}) ")
    records = wa.received()
    assert records[0]["schema_errors"] == []
    assert all(r["schema_errors"] for r in records[1:])
    assert any("bogus" in e for e in records[2]["schema_errors"])
    assert wa_code(wa_post(wa, http, data="not json")) == (400, 100)


def test_whatsapp_media_upload_then_send(wa, http):
    pdf = b"%PDF-1.7 " + bytes(range(256))
    upload = wa_post(wa, http, "media", data={"messaging_product": "whatsapp", "type": "application/pdf"},
                     files={"file": ("invoice.pdf", pdf, "application/pdf")})
    media_id = upload.json()["id"]
    assert upload.status_code == 200 and media_id.isdigit()
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "15550002",
            "type": "document", "document": {"id": media_id, "filename": "invoice.pdf", "caption": "March"}}
    assert wa_post(wa, http, json=body).status_code == 200
    uploaded, sent = wa.wait_for(count=2)
    assert (uploaded["method"], uploaded["type"], sent["method"], sent["type"]) == ("media", "application/pdf",
                                                                                    "messages", "document")
    assert sent["media"]["sha256"] == hashlib.sha256(pdf).hexdigest() == uploaded["files"]["file"]["sha256"]
    assert (sent["media"]["size"], sent["media"]["filename"]) == (len(pdf), "invoice.pdf")
    assert wa.stats()["requests"] == 1  # uploads are not messages


def test_whatsapp_throughput_and_pair_limits(wa, http):
    wa.configure(rate=3)
    answers = [wa_post(wa, http, json=text_body(f"1555000{i}")) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 400]  # Meta answers 130429 with HTTP 400
    error = answers[-1].json()["error"]
    assert (error["code"], error["message"], error["error_data"]["messaging_product"]) == \
        (130429, "(#130429) Rate limit hit", "whatsapp")
    assert wa.stats()["max_in_any_window"] == 3

    wa.reset()
    wa.configure(pair_interval=60)
    assert wa_post(wa, http, json=text_body("+15550003")).status_code == 200
    assert wa_code(wa_post(wa, http, json=text_body("15550003"))) == (400, 131056)  # same number, other spelling
    assert wa_post(wa, http, json=text_body("15550004")).status_code == 200


def test_whatsapp_scripted_answers(wa, http):
    wa.script("131047", dest="+1 555 0005")
    wa.script(190, dest="15550006")
    wa.script({"status": 503, "raw": "upstream down"}, dest="15550007")
    wa.script("server_error", method="media")
    assert wa_code(wa_post(wa, http, json=text_body("15550005"))) == (400, 131047)
    assert wa_code(wa_post(wa, http, json=text_body("15550006"))) == (401, 190)
    custom = wa_post(wa, http, json=text_body("15550007"))
    assert (custom.status_code, custom.text) == (503, "upstream down")
    failed = wa_post(wa, http, "media", data={"messaging_product": "whatsapp", "type": "image/png"},
                     files={"file": ("p.png", b"\x89PNG")})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == 2
    assert wa_post(wa, http, json=text_body("15550005")).status_code == 200
    assert [r["outcome"] for r in wa.received()] == ["scripted"] * 4 + ["delivered"]


def test_openapi_schema_merges_all_of_and_accepts_spec_examples():
    schemas = openapi.message_schemas()
    text = schemas["by_type"]["text"]
    assert "allOf" not in text and text["additionalProperties"] is False
    assert {"messaging_product", "to", "type", "text"} <= set(text["required"]) <= set(text["properties"])
    spec = openapi._load_spec(openapi.SPEC_PATH)
    examples = spec["paths"][openapi.MESSAGES_PATH]["post"]["requestBody"]["content"]["application/json"]["examples"]
    basic = [e["value"] for e in examples.values() if e["value"].get("type") in ("text", "image", "document", "audio", "video")]
    assert len(basic) >= 5 and all(openapi.validate_message(body) == [] for body in basic)


# ---- the handle ---------------------------------------------------------------------------

def test_latency_is_per_request_and_wait_for_reports(tg, http):
    tg.configure(latency=0.15, rate=0, chat_rate=0)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(lambda i: tg_call(tg, http, "sendMessage", json={"chat_id": i + 1, "text": "x"})
                                 .status_code, range(30)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 30 and 0.15 <= elapsed < 1.5  # 30 x 0.15 s would take 4.5 s if serialised
    assert len(tg.wait_for(count=30, timeout=2)) == 30
    with pytest.raises(AssertionError, match="0 of 1 expected.*received 30"):
        tg.wait_for(lambda r: r["dest"] == "nobody", timeout=0.2)


# ---- the server (tests/emulators/server.py) --------------------------------------------------
_FORM, _JSON = "application/x-www-form-urlencoded", "application/json"
REQUESTS = [  # method, target, headers, body
    ("POST", "/bot1:x/sendMessage?a=1&a=2&b=&c=%E2%82%AC+x", [("Content-Type", _FORM)], "chat_id=42&text=hola+%F0%9F%91%8B&text=2&e=".encode()),
    ("POST", "/p%C3%A9/x%2Fy?q=%FF", [("Content-Type", _FORM + "; charset=utf-8")], b"text=%FF%FE&ok=1"),
    ("POST", "/f", [("Content-Type", _FORM)], b"text=\xff\xfe"),  # not UTF-8: werkzeug gives an empty form
    ("POST", "/j", [("Content-Type", _JSON + "; charset=utf-8"), ("X-Hub-Signature-256", "sha256=ab"), ("X-Two", "1"), ("X-Two", "2")],
     '{"to": "5491100000000", "text": {"body": "ü"}}'.encode()),
    ("POST", "/j", [("Content-Type", "application/vnd.api+json")], b'[1, 2'),  # broken JSON
    ("POST", "/j", [("Content-Type", "Application/JSON")], b'{"a": 1}'),
    ("POST", "/raw", [("Content-Type", "application/octet-stream"), ("Authorization", "Bearer t")], b"\x00\x01"),
    ("POST", "/none", [], b'{"a": 1}'),
    ("GET", "//double/slash?access_token=abc", [("Host", "example.org:8080")], b""),
    ("POST", "/multipart", [("Content-Type", "multipart/form-data; boundary=XyZ")],
     b'--XyZ\r\nContent-Disposition: form-data; name="chat_id"\r\n\r\n42\r\n--XyZ\r\nContent-Disposition: form-data; name="photo"; '
     b'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n--XyZ--\r\n'),
]


def _pair(method: str, target: str, headers: list, body: bytes):
    import io

    from werkzeug.wrappers import Request as WerkzeugRequest

    from tests.emulators import server

    headers = [*headers, ("Content-Length", str(len(body)))] if body else headers
    environ = server._environ(method, target, "HTTP/1.1", headers, ("127.0.0.1", 9), ("127.0.0.1", 10))
    reference = WerkzeugRequest({**environ, "wsgi.input": io.BytesIO(body)})
    reference.max_form_memory_size = server.MAX_FORM_MEMORY
    return server.Request(dict(environ), body), reference


def _seen(request, order: str) -> dict:
    seen = {}
    for step in order.split(","):
        if step == "form":
            seen["form"] = [(k, request.form.getlist(k)) for k in request.form]
            seen["form_items"] = list(request.form.items())
        elif step == "files":
            seen["files"] = {name: (f.filename, f.mimetype, f.read()) for name, f in request.files.items()}
        elif step == "data":
            seen["data"] = request.get_data(cache=True)
        elif step == "json":
            seen["json"] = request.get_json(silent=True) if request.is_json else "not json"
            seen["forced"] = request.get_json(silent=True, force=True)
    seen.update(method=request.method, path=request.path, args=list(request.args.items()),
                args_lists=[(k, request.args.getlist(k)) for k in request.args], content_type=request.content_type,
                mimetype=request.mimetype, is_json=request.is_json, headers=sorted(request.headers.items()),
                auth=request.headers.get("Authorization"), ctype=request.headers.get("content-type"), host=request.host)
    return seen


@pytest.mark.parametrize("order", ["form,data,json", "data,form,files", "json,files,data", "files,form"])
@pytest.mark.parametrize("case", range(len(REQUESTS)))
def test_server_requests_read_as_werkzeug_reads_them(case, order):
    """The emulators' light Request gives what werkzeug's Request gives, whatever the order of access."""
    ours, reference = _pair(*REQUESTS[case])
    assert _seen(ours, order) == _seen(reference, order)


def test_server_keeps_connections_alive_and_reads_chunked_bodies(tg):
    import http.client
    import socket

    connection = http.client.HTTPConnection("127.0.0.1", tg.port, timeout=10)
    path = f"/bot{tg.token}/sendMessage"
    connection.request("POST", path, "chat_id=1&text=one", {"Content-Type": _FORM})
    first = connection.getresponse()
    assert first.status == 200 and first.getheader("Connection") is None and first.read()
    local = connection.sock.getsockname()
    connection.request("POST", path, iter([b"chat_id=2&", b"text=two"]), {"Content-Type": _FORM})  # sent chunked
    second = connection.getresponse()
    assert second.status == 200 and second.read()
    assert connection.sock.getsockname() == local  # the same connection
    connection.request("POST", "/_emu/script", '{"response": "drop", "dest": 3}', {"Content-Type": _JSON})
    assert connection.getresponse().read()
    connection.request("POST", path, "chat_id=3&text=three", {"Content-Type": _FORM})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        connection.getresponse()
    connection.close()
    assert [(r["dest"], r["fields"].get("text"), r["status"]) for r in tg.received()] == [(1, "one", 200), (2, "two", 200), (3, "three", 0)]
    with socket.create_connection(("127.0.0.1", tg.port), timeout=10) as raw:  # not HTTP: a 400, then closed
        raw.sendall(b"NONSENSE\r\n\r\n")
        answer = raw.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer


@pytest.mark.parametrize("target", ["/a?b=1#frag", "/a#x?y", "//host/p?q", "/", "/p%20q?x=%41", "http://h:1/p?q", "/a?b?c", "/?", "/#", "///x"])
def test_server_splits_targets_as_werkzeug_does(target):
    from urllib.parse import unquote, urlsplit

    from tests.emulators import server

    environ = server._environ("GET", target, "HTTP/1.1", [], ("127.0.0.1", 9), ("127.0.0.1", 10))
    url = urlsplit(target)  # werkzeug's make_environ
    path = f"/{url.netloc}{url.path}" if not url.scheme and url.netloc else url.path
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == (unquote(path), url.query)
