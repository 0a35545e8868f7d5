"""Telegram end to end: every datatype arrives byte-identical, every answer ends in the right state.

A real runner (``service_gateway``) sends to the Telegram emulator; the outcome
rows of the table in ``multimsg/services/telegram.py`` are driven by the
emulator's scripted answers, one test per row.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from multimsg.queue.backends.files import FileContent
from multimsg.services.telegram import Telegram
from multimsg.services.text import utf16_units
from tests import media
from tests.native_support import arrivals, send_every
from tests.services_support import emulator_env, new_chat, queue, service_gateway, sha256  # noqa: F401  (fixture)

FILES = [
    # datatype, content builder, method, file field, upload name, MIME type sent
    ("image", media.png, "sendPhoto", "photo", "shot.png", "image/png"),
    ("image", media.jpeg, "sendPhoto", "photo", "shot.jpg", "image/jpeg"),
    ("document", media.pdf, "sendDocument", "document", "upload.bin", "application/pdf"),
    ("audio", media.mp3, "sendAudio", "audio", "song.mp3", "audio/mpeg"),
    ("audio", lambda: media.mp4(b"M4A "), "sendAudio", "audio", "song.m4a", "audio/mp4"),
    ("video", media.mp4, "sendVideo", "video", "clip.mp4", "video/mp4"),
    ("voice", media.ogg_opus, "sendVoice", "voice", "note.ogg", "audio/ogg"),
]


@pytest.mark.parametrize("datatype, build, method, field, upload_name, mime", FILES)
def test_each_file_datatype_arrives_byte_identical_with_its_caption(service_gateway, telegram, datatype, build, method, field, upload_name, mime):
    content, chat = build(), new_chat()
    extra = {"filename": "Informe anual.pdf"} if datatype == "document" else {}
    message_id = queue(service_gateway, content, "telegram", chat, datatype, upload_name, caption=f"{datatype} ✓ caption", **extra)

    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    [sent] = telegram.wait_for(lambda r: str(r["dest"]) == chat)
    assert sent["method"] == method and sent["status"] == 200
    upload = sent["files"][field]
    assert upload["sha256"] == sha256(content) and upload["size"] == len(content)
    assert upload["filename"] == extra.get("filename", upload_name)
    assert upload["content_type"] == mime
    assert sent["fields"]["caption"] == f"{datatype} ✓ caption"
    assert report["platform_ids"] == [str(sent["response"]["result"]["message_id"])]


METHODS = {"text": ("sendMessage", None), "image": ("sendPhoto", "photo"), "document": ("sendDocument", "document"),
           "audio": ("sendAudio", "audio"), "video": ("sendVideo", "video"), "voice": ("sendVoice", "voice")}


def test_the_cli_sends_every_datatype(service_gateway, telegram, tmp_path):
    sent = send_every(service_gateway, tmp_path, "cli", "telegram", {datatype: new_chat() for datatype in METHODS})
    for item, record in arrivals(sent, telegram, lambda item, r: str(r["dest"]) == item.dest):
        method, field = METHODS[item.datatype]
        assert record["method"] == method and item.report["platform_ids"] == [str(record["response"]["result"]["message_id"])]
        if field is None:
            assert record["fields"]["text"] == item.content.decode()
            continue
        upload = record["files"][field]
        assert (upload["sha256"], upload["filename"], upload["content_type"]) == (sha256(item.content), item.upload_name, item.mime)
        assert record["fields"]["caption"] == item.caption


def test_document_filename_defaults_to_the_uploaded_name(service_gateway, telegram):
    chat = new_chat()
    message_id = queue(service_gateway, media.docx(), "telegram", chat, "document", "minutes 2026-05.docx")
    assert service_gateway.wait_state(message_id)["state"] == "delivered"
    [sent] = telegram.wait_for(lambda r: str(r["dest"]) == chat)
    assert sent["files"]["document"]["filename"] == "minutes 2026-05.docx"
    assert "caption" not in sent["fields"]


def test_any_file_goes_as_a_document(service_gateway, telegram):
    chat, content = new_chat(), bytes(range(256)) * 8
    message_id = queue(service_gateway, content, "telegram", chat, "document", "blob.bin")
    assert service_gateway.wait_state(message_id)["state"] == "delivered"
    [sent] = telegram.wait_for(lambda r: str(r["dest"]) == chat)
    assert sent["files"]["document"]["sha256"] == sha256(content)


def test_long_text_goes_as_ordered_parts_within_the_utf16_limit(service_gateway, telegram):
    telegram.configure(chat_rate=0)  # this test is about splitting, not about the per-chat flood limit
    chat = new_chat()
    # A paragraph of words, then one "word" of 1500 thumbs-up with a skin tone (👍🏽: 2 characters,
    # 4 UTF-16 code units). By characters it would fit in 2 parts, by UTF-16 units it takes 3;
    # the leading "a" puts the 4096th unit between 👍 and 🏽, where the cut must not go.
    words = " ".join(["palabra"] * 300)
    text = words + "\n" + "a" + "👍🏽" * 1500
    message_id = queue(service_gateway, text.encode(), "telegram", chat, "text")

    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered"
    sent = telegram.wait_for(lambda r: str(r["dest"]) == chat and r["status"] == 200, count=3)
    parts = [record["fields"]["text"] for record in sent]
    assert len(parts) == 3 and "".join(parts) == text
    assert parts[0] == words + "\n"  # cut at the line break
    assert all(utf16_units(part) <= 4096 for part in parts)
    assert not any(part.startswith("🏽") for part in parts)  # never between a character and its modifier
    assert report["platform_ids"] == [str(record["response"]["result"]["message_id"]) for record in sent]


def test_a_retry_after_a_partial_text_resumes_without_duplicates(monkeypatch, telegram, whatsapp, tmp_path):
    """``send`` skips the parts in ``platform_ids``, and a failing part returns the ids delivered before it."""
    for name, value in emulator_env(telegram, whatsapp).items():
        monkeypatch.setenv(name, value)
    telegram.configure(chat_rate=0)
    service, chat = Telegram(), new_chat()
    path = tmp_path / "long.txt"
    path.write_text(("palabra " * 600 + "\n") * 3, encoding="utf-8")  # about 14400 characters: 4 parts
    parts = service.text_parts(FileContent(path))
    assert len(parts) == 4

    calls = []

    def pace():  # the engine's hook runs right before each part is sent: fail the third one
        calls.append(len(calls))
        if len(calls) == 3:
            telegram.script("server_error", dest=chat)

    data = {"id": "M" * 16, "content": FileContent(path), "dest": chat, "type": "text", "options": {}, "platform_ids": [], "pace": pace}
    first = service.send(data)
    assert first.kind == "retry" and len(first.platform_ids) == 2 and "Internal Server Error" in first.reason

    second = service.send({**data, "platform_ids": first.platform_ids, "pace": None})
    assert second.kind == "delivered" and len(second.platform_ids) == 2
    delivered = [r["fields"]["text"] for r in telegram.received(ok_only=True) if str(r["dest"]) == chat]
    assert delivered == parts  # each part once, in order
    assert len(set(first.platform_ids + second.platform_ids)) == 4


# -- outcome table (multimsg/services/telegram.py) -------------------------------------------

# answer, script options, reason recorded, attempts used (a "too fast" answer uses none)
RETRY_ROWS = [
    ("retry_after", {"retry_after": 1}, "Too Many Requests: retry after 1", 0),
    ({"status": 429, "body": {"ok": False, "error_code": 429, "description": "Too Many Requests"}, "headers": {"Retry-After": "1"}}, {}, "Too Many Requests", 0),
    ("server_error", {}, "Internal Server Error", 1),
    ("bad_gateway", {}, "HTTP 502", 1),
    ("timeout", {"seconds": 3}, "did not answer in time", 1),
    ("drop", {}, "could not reach the platform", 1),
]


@pytest.mark.parametrize("answer, extra, reason, attempts", RETRY_ROWS, ids=["429-retry_after", "429-header", "500", "502-html", "timeout", "connection-dropped"])
def test_transient_answers_are_retried_then_delivered(service_gateway, telegram, answer, extra, reason, attempts):
    chat = new_chat()
    telegram.script(answer, dest=chat, **extra)
    message_id = queue(service_gateway, b"try again later", "telegram", chat, "text")
    service_gateway.drain()
    report = service_gateway.state(message_id)
    assert report["state"] == "queued" and report["attempts"] == attempts, report
    assert reason in report["last_error"]
    assert telegram.token not in report["last_error"]

    report = service_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    assert report["platform_ids"]


def test_429_waits_at_least_retry_after(service_gateway, telegram):
    chat = new_chat()
    telegram.script("retry_after", dest=chat, retry_after=2)
    message_id = queue(service_gateway, b"flood", "telegram", chat, "text")
    service_gateway.drain()
    report = service_gateway.state(message_id)
    waited = datetime.fromisoformat(report["next_attempt_at"].replace("Z", "+00:00")) - datetime.fromisoformat(report["updated_at"].replace("Z", "+00:00"))
    assert waited.total_seconds() >= 2 - 0.01


FAILED_ROWS = [
    ("chat_not_found", "telegram: Bad Request: chat not found"),
    ("blocked", "telegram: Forbidden: bot was blocked by the user"),
    ("too_long", "telegram: Bad Request: message is too long"),
    ("deactivated", "telegram: Forbidden: user is deactivated"),
    ("migrated", "telegram: Bad Request: group chat was upgraded to a supergroup chat"),
    ("html_413", "telegram: HTTP 413"),
]


@pytest.mark.parametrize("answer, reason", FAILED_ROWS, ids=[row[0] for row in FAILED_ROWS])
def test_refusals_fail_with_the_platform_description(service_gateway, telegram, answer, reason):
    chat = new_chat()
    telegram.script(answer, dest=chat)
    message_id = queue(service_gateway, b"no luck", "telegram", chat, "text")
    report = service_gateway.wait_state(message_id)
    assert report["state"] == "failed" and report["attempts"] == 1
    assert report["last_error"].startswith(reason), report["last_error"]
    assert len([r for r in telegram.received() if str(r["dest"]) == chat]) == 1  # never tried again


@pytest.mark.parametrize("answer", ["unauthorized", {"status": 404, "body": {"ok": False, "error_code": 404, "description": "Not Found"}}], ids=["401", "404"])
def test_a_refused_token_keeps_the_message_queued_as_misconfigured(make_gateway, telegram, answer):
    gateway = make_gateway()  # its own runner: the drain puts a misconfigured service on hold
    chat = new_chat()
    telegram.script(answer, dest=chat)
    message_id = queue(gateway, b"wait for the operator", "telegram", chat, "text")
    summary = gateway.drain()
    assert "telegram" in summary["misconfigured"]
    assert telegram.token not in summary["misconfigured"]["telegram"]
    report = gateway.state(message_id)
    assert report["state"] == "queued" and report["attempts"] == 0
    assert "token" in report["last_error"]


def test_a_200_that_is_not_a_sent_message_is_retried(monkeypatch, telegram, whatsapp, tmp_path):
    for name, value in emulator_env(telegram, whatsapp).items():
        monkeypatch.setenv(name, value)
    chat, path = new_chat(), tmp_path / "t.txt"
    path.write_text("hola")
    telegram.script({"status": 200, "raw": "<html>captive portal</html>"}, dest=chat)
    outcome = Telegram().send({"id": "T" * 16, "content": FileContent(path), "dest": chat, "type": "text", "options": {}, "platform_ids": []})
    assert outcome.kind == "retry" and "not a sent message" in outcome.reason
