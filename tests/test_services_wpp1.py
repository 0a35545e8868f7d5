"""WhatsApp (wpp1) end to end: every datatype arrives byte-identical, every answer ends in the right state.

A real runner (``service_gateway``) sends to the WhatsApp emulator: files are
uploaded to ``/media`` and then sent by media id. The outcome rows of the table
in ``multimsg/services/wpp1.py`` are driven by the emulator's scripted answers
(``whatsapp.script("131047", dest=...)``), one test per row; Meta answers rate
limits with HTTP 400, so classification goes by ``error.code``.
"""

from __future__ import annotations

import json

import pytest

from multimsg.queue.backends.files import FileContent
from multimsg.services.wpp1 import WhatsApp
from tests import media
from tests.native_support import arrivals, send_every
from tests.services_support import emulator_env, new_number, queue, service_gateway, sha256  # noqa: F401  (fixture)

FILES = [
    # datatype, content builder, upload name, MIME type uploaded, message type, caption?
    ("image", media.jpeg, "foto.jpg", "image/jpeg", "image", True),
    ("image", media.png, "foto.png", "image/png", "image", True),
    ("document", media.pdf, "upload.bin", "application/pdf", "document", True),
    ("document", media.docx, "acta.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "document", True),
    ("audio", media.mp3, "tema.mp3", "audio/mpeg", "audio", False),
    ("audio", media.ogg_opus, "tema.ogg", "audio/ogg", "audio", False),
    ("video", media.mp4, "clip.mp4", "video/mp4", "video", True),
    ("voice", media.ogg_opus, "nota.ogg", "audio/ogg", "audio", False),
]


@pytest.mark.parametrize("datatype, build, upload_name, mime, kind, captioned", FILES)
def test_each_file_datatype_arrives_byte_identical(service_gateway, whatsapp, datatype, build, upload_name, mime, kind, captioned):
    content, number = build(), new_number()
    extra = {"caption": f"{datatype} ✓ pie"} if captioned else {}
    if datatype == "document":
        extra["filename"] = "Informe final.pdf" if mime == "application/pdf" else "acta.docx"
    message_id = queue(service_gateway, content, "wpp1", number, datatype, upload_name, **extra)

    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    [sent] = whatsapp.wait_for(lambda r: r["method"] == "messages" and r["dest"] == number)
    body = sent["json"]
    assert body["type"] == kind and body["messaging_product"] == "whatsapp" and body["to"] == number
    assert body["biz_opaque_callback_data"] == message_id  # our id, echoed in WhatsApp's status webhooks
    # The media the message names is the upload, byte for byte, with the sniffed MIME type.
    assert sent["media"]["sha256"] == sha256(content) and sent["media"]["size"] == len(content)
    assert sent["media"]["content_type"] == mime
    assert body[kind]["id"] == sent["media"]["id"]
    assert body[kind].get("caption") == extra.get("caption")
    assert body[kind].get("filename") == extra.get("filename")
    assert body[kind].get("voice") is (True if datatype == "voice" else None)
    assert report["platform_ids"] == [sent["response"]["messages"][0]["id"]]
    assert report["platform_ids"][0].startswith("wamid.")


def test_the_cli_sends_every_datatype(service_gateway, whatsapp, tmp_path):
    kinds = {"text": "text", "image": "image", "document": "document", "audio": "audio", "video": "video", "voice": "audio"}
    sent = send_every(service_gateway, tmp_path, "cli", "wpp1", {datatype: new_number() for datatype in kinds},
                      captioned=WhatsApp.caption_types)
    for item, record in arrivals(sent, whatsapp, lambda item, r: r["method"] == "messages" and r["dest"] == item.dest):
        body, kind = record["json"], kinds[item.datatype]
        assert body["type"] == kind and item.report["platform_ids"] == [record["response"]["messages"][0]["id"]]
        if kind == "text":
            assert body["text"]["body"] == item.content.decode()
            continue
        assert (record["media"]["sha256"], record["media"]["content_type"]) == (sha256(item.content), item.mime)
        assert body[kind]["id"] == record["media"]["id"] and body[kind].get("caption") == item.caption
        assert body[kind].get("filename") == (item.upload_name if kind == "document" else None)
        assert body[kind].get("voice") is (True if item.datatype == "voice" else None)


def test_document_filename_defaults_to_the_uploaded_name(service_gateway, whatsapp):
    number = new_number()
    message_id = queue(service_gateway, media.pdf(), "wpp1", number, "document", "factura-0042.pdf")
    assert service_gateway.wait_state(message_id)["state"] == "delivered"
    [sent] = whatsapp.wait_for(lambda r: r["method"] == "messages" and r["dest"] == number)
    assert sent["json"]["document"]["filename"] == "factura-0042.pdf"
    assert sent["media"]["filename"] == "factura-0042.pdf"


def test_a_template_goes_as_type_template_with_its_language_code(service_gateway, whatsapp):
    number = new_number()
    components = [{"type": "body", "parameters": [{"type": "text", "text": "A-1234"}, {"type": "text", "text": "mañana"}]}]
    document = {"name": "order_update", "language": "es_AR", "components": components}
    message_id = queue(service_gateway, json.dumps(document).encode(), "wpp1", number, "template", "order.json")
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered"
    [sent] = whatsapp.wait_for(lambda r: r["dest"] == number)
    assert sent["json"]["type"] == "template"
    assert sent["json"]["template"] == {"name": "order_update", "language": {"code": "es_AR", "policy": "deterministic"}, "components": components}
    assert not sent["schema_errors"]


def test_long_text_goes_as_ordered_parts_of_4096_characters(service_gateway, whatsapp):
    number = new_number()
    text = "\n".join(f"línea {n}: " + "ü" * 90 for n in range(100))  # 10 000 characters, 2-byte UTF-8
    message_id = queue(service_gateway, text.encode(), "wpp1", number, "text")
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered"
    sent = whatsapp.wait_for(lambda r: r["dest"] == number and r["status"] == 200, count=3)
    parts = [r["json"]["text"]["body"] for r in sent]
    assert len(parts) == 3 and "".join(parts) == text
    assert all(len(part) <= 4096 and part.endswith(("\n", text[-5:])) for part in parts)  # cut at line breaks
    assert report["platform_ids"] == [r["response"]["messages"][0]["id"] for r in sent]


def test_a_retry_after_a_partial_text_resumes_without_duplicates(monkeypatch, telegram, whatsapp, tmp_path):
    """``send`` skips the parts in ``platform_ids``; a refused part returns the ids delivered before it."""
    for name, value in emulator_env(telegram, whatsapp).items():
        monkeypatch.setenv(name, value)
    service, number = WhatsApp(), new_number()
    path = tmp_path / "long.txt"
    path.write_text("palabra " * 1500, encoding="utf-8")  # 12 000 characters: 3 parts
    parts = service.text_parts(FileContent(path))
    assert len(parts) == 3

    calls = []

    def pace():  # the engine's hook runs right before each part is sent: throttle the second one
        calls.append(len(calls))
        if len(calls) == 2:
            whatsapp.script("131056", dest=number)

    data = {"id": "W" * 16, "content": FileContent(path), "dest": number, "type": "text", "options": {}, "platform_ids": [], "pace": pace}
    first = service.send(data)
    assert first.kind == "retry" and first.throttle == "dest" and len(first.platform_ids) == 1

    second = service.send({**data, "platform_ids": first.platform_ids, "pace": None})
    assert second.kind == "delivered" and len(second.platform_ids) == 2
    delivered = [r["json"]["text"]["body"] for r in whatsapp.received(ok_only=True) if r["dest"] == number]
    assert delivered == parts
    assert len(set(first.platform_ids + second.platform_ids)) == 3


def test_a_media_retry_does_not_upload_the_file_again(service_gateway, whatsapp):
    number = new_number()
    whatsapp.script("131000", dest=number)  # the message fails after its upload succeeded
    message_id = queue(service_gateway, media.jpeg(), "wpp1", number, "image", "a.jpg")
    assert service_gateway.wait_state(message_id)["state"] == "delivered"
    records = whatsapp.received()
    messages = [r for r in records if r["method"] == "messages" and r["dest"] == number]
    uploads = [r for r in records if r["method"] == "media" and r["files"]["file"]["sha256"] == sha256(media.jpeg())]
    assert [r["status"] for r in messages] == [500, 200]
    assert len(uploads) == 1 and messages[0]["json"]["image"]["id"] == messages[1]["json"]["image"]["id"]


# -- outcome table (multimsg/services/wpp1.py) -----------------------------------------------

# code (or named answer), script options, text of the reason, attempts used (rate limits use none)
RETRY_ROWS = [
    ("130429", {}, "(#130429) Rate limit hit", 0),
    ("131056", {}, "(#131056) (Business Account, Consumer Account) pair rate limit hit", 0),
    ("80007", {}, "(#80007) Rate limit issues", 0),
    ("4", {}, "(#4) API Too Many Calls", 0),
    ("4", {"status": 429}, "(#4) API Too Many Calls", 0),
    ("131000", {}, "(#131000) Something went wrong", 1),
    ("server_error", {}, "An unexpected error has occurred", 1),
    ({"status": 503, "raw": "<html>Service Unavailable</html>"}, {}, "HTTP 503", 1),
    ("timeout", {"seconds": 3}, "did not answer in time", 1),
    ("drop", {}, "could not reach the platform", 1),
]


@pytest.mark.parametrize("answer, extra, reason, attempts", RETRY_ROWS,
                         ids=["130429", "131056", "80007", "4", "4-http429", "131000", "500", "503-html", "timeout", "dropped"])
def test_rate_limits_and_transient_errors_are_retried_then_delivered(service_gateway, whatsapp, answer, extra, reason, attempts):
    number = new_number()
    whatsapp.script(answer, dest=number, **extra)
    message_id = queue(service_gateway, b"hola otra vez", "wpp1", number, "text")
    service_gateway.drain()
    report = service_gateway.state(message_id)
    assert report["state"] == "queued" and report["attempts"] == attempts, report
    assert reason in report["last_error"]
    assert whatsapp.token not in report["last_error"]
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    assert report["platform_ids"][0].startswith("wamid.")


FAILED_ROWS = [
    ("131026", "wpp1: (#131026) Message undeliverable"),
    ("131047", "wpp1: (#131047) Re-engagement message"),
    ("100", "wpp1: (#100) Invalid Parameter"),
    ("131053", "wpp1: (#131053) Media upload error"),
]


@pytest.mark.parametrize("code, reason", FAILED_ROWS, ids=[row[0] for row in FAILED_ROWS])
def test_refusals_fail_with_the_platform_message(service_gateway, whatsapp, code, reason):
    number = new_number()
    whatsapp.script(code, dest=number)  # HTTP 400, like Meta
    message_id = queue(service_gateway, b"no va a llegar", "wpp1", number, "text")
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "failed" and report["attempts"] == 1
    assert report["last_error"].startswith(reason) and f"(code {code})" in report["last_error"]
    assert len([r for r in whatsapp.received() if r["dest"] == number]) == 1


def test_a_refused_media_upload_fails_the_message(service_gateway, whatsapp):
    number = new_number()
    whatsapp.script("131053", method="media", details="the file is corrupt")
    message_id = queue(service_gateway, media.pdf(), "wpp1", number, "document", "x.pdf")
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "failed" and "the file is corrupt" in report["last_error"]
    assert not [r for r in whatsapp.received() if r["method"] == "messages" and r["dest"] == number]


@pytest.mark.parametrize("method", ["messages", "media"])
def test_an_expired_token_keeps_the_message_queued_as_misconfigured(make_gateway, whatsapp, method):
    gateway = make_gateway()  # its own runner: the drain puts a misconfigured service on hold
    number = new_number()
    whatsapp.script("190", method=method)
    content, datatype = (b"espera al operador", "text") if method == "messages" else (media.png(), "image")
    message_id = queue(gateway, content, "wpp1", number, datatype)
    summary = gateway.drain()
    assert "(code 190)" in summary["misconfigured"]["wpp1"]
    assert whatsapp.token not in summary["misconfigured"]["wpp1"]
    report = gateway.state(message_id)
    assert report["state"] == "queued" and report["attempts"] == 0
    assert "access token" in report["last_error"]


# The remaining rows, in-process: the real service sends to the emulator and we look at the
# Outcome (the rows above show what the drain makes of each kind).
IN_PROCESS_ROWS = [
    # answer, outcome kind, reason fragment, throttle
    ({"status": 400, "body": {"error": {"message": "(#131057) Business account is in maintenance mode", "code": 131057}}},
     "retry", "(#131057)", None),
    ({"status": 400, "body": {"error": {"message": "(#1) An unknown error occurred", "code": 1}}}, "retry", "(#1)", None),
    ({"status": 400, "body": {"error": {"message": "(#131051) Unsupported message type", "code": 131051}}},
     "failed", "wpp1: (#131051) Unsupported message type (code 131051)", None),
    ({"status": 403, "body": {"error": {"message": "(#10) Application does not have permission for this action", "code": 10}}},
     "misconfigured", "(#10)", None),
    ({"status": 401, "body": {"error": {"message": "Authentication Error", "code": 0}}}, "misconfigured", "(code 0)", None),
    ({"status": 404, "raw": "<html><body>Not Found</body></html>"}, "misconfigured", "HTTP 404", None),
    ({"status": 413, "raw": "<html><body>Request Entity Too Large</body></html>"}, "failed", "HTTP 413", None),
    ({"status": 200, "body": {"messaging_product": "whatsapp"}}, "retry", "without a message id", None),
    ("130429", "retry", "(#130429)", "service"),
    ("131056", "retry", "(#131056)", "dest"),
]


@pytest.mark.parametrize("answer, kind, reason, throttle", IN_PROCESS_ROWS,
                         ids=["131057", "1", "131051", "10", "0", "404-html", "413-html", "200-no-id", "130429", "131056"])
def test_every_answer_maps_to_its_outcome(monkeypatch, telegram, whatsapp, tmp_path, answer, kind, reason, throttle):
    for name, value in emulator_env(telegram, whatsapp).items():
        monkeypatch.setenv(name, value)
    number, path = new_number(), tmp_path / "t.txt"
    path.write_text("hola")
    whatsapp.script(answer, dest=number)
    outcome = WhatsApp().send({"id": "X" * 16, "content": FileContent(path), "dest": number, "type": "text", "options": {}, "platform_ids": []})
    assert (outcome.kind, outcome.throttle) == (kind, throttle)
    assert reason in outcome.reason and whatsapp.token not in outcome.reason


def test_a_wrong_phone_number_id_is_a_misconfiguration_not_a_bad_message(monkeypatch, telegram, whatsapp, tmp_path):
    for name, value in emulator_env(telegram, whatsapp).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MULTIMSG_WPP1_PHONE_NUMBER_ID", "999999999999999")
    path = tmp_path / "t.txt"
    path.write_text("hola")
    outcome = WhatsApp().send({"id": "P" * 16, "content": FileContent(path), "dest": new_number(), "type": "text", "options": {}, "platform_ids": []})
    assert outcome.kind == "misconfigured" and "Unsupported post request" in outcome.reason
