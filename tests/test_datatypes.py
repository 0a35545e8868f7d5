"""Datatypes: content sniffing, size limits, text splitting, templates and the /msg validation errors.

The first tests call the real modules in-process (sniffing, splitting,
limits on sparse files of exactly the limit's size); the last ones go through
a real runner: every bad message gets a 4xx with a one-line reason, and
nothing of it is ever sent.
"""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.formparser import parse_form_data

from multimsg.errors import InvalidInput, TooLarge
from multimsg.multipart import MultipartBody
from multimsg.queue.backends.files import FileContent
from multimsg.services import Datatypes
from multimsg.services.sniff import OGG_OPUS, sniff_bytes
from multimsg.services.telegram import Telegram
from multimsg.services.template import load_template
from multimsg.services.text import split_text, utf16_units
from multimsg.services.wpp1 import WhatsApp
from tests import media
from tests.services_support import new_chat, new_number, service_gateway  # noqa: F401  (fixture)

MB = 1000 * 1000

# -- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize("content, mime", [
    (media.jpeg(), "image/jpeg"),
    (media.png(), "image/png"),
    (media.pdf(), "application/pdf"),
    (media.mp3(), "audio/mpeg"),
    (media.mp3()[10:], "audio/mpeg"),  # no ID3 tag: MPEG frame sync
    (media.mp4(), "video/mp4"),
    (media.mp4(b"M4A "), "audio/mp4"),
    (media.ogg_opus(), OGG_OPUS),
    (media.ogg_vorbis(), "audio/ogg"),  # Ogg, but not Opus
    (media.docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("día 1: ✓\n".encode() * 2000, "text/plain"),
    ("ñ".encode() * 5000, "text/plain"),  # the 8 KB head ends inside a character
    (bytes(range(256)), None),
], ids=["jpeg", "png", "pdf", "mp3", "mp3-no-id3", "mp4", "m4a", "ogg-opus", "ogg-vorbis", "docx", "text", "text-cut", "binary"])
def test_content_is_identified_by_its_bytes(content, mime):
    assert sniff_bytes(content[:8192]) == mime


# -- limits, per service and datatype, at the exact byte -----------------------------------

LIMITS = [
    (Telegram, "image", media.jpeg(), 10 * MB),
    (Telegram, "document", media.pdf(), 50 * MB),
    (Telegram, "audio", media.mp3(), 50 * MB),
    (Telegram, "video", media.mp4(), 50 * MB),
    (Telegram, "voice", media.ogg_opus(), 50 * MB),
    (WhatsApp, "image", media.png(), 5 * MB),
    (WhatsApp, "document", media.pdf(), 100 * MB),
    (WhatsApp, "audio", media.mp3(), 16 * MB),
    (WhatsApp, "video", media.mp4(), 16 * MB),
    (WhatsApp, "voice", media.ogg_opus(), 16 * MB),
]


@pytest.mark.parametrize("service, datatype, head, limit", LIMITS, ids=[f"{s.default_name or s.kind}-{d}" for s, d, _, _ in LIMITS])
def test_size_limits_accept_the_limit_and_refuse_one_byte_more(tmp_path, service, datatype, head, limit):
    path = tmp_path / "sparse"
    with open(path, "wb") as handle:  # a sparse file: real size, no disk used
        handle.write(head)
        handle.truncate(limit)
    instance = service()
    assert instance.check_content(datatype, FileContent(path)) == {}
    with open(path, "r+b") as handle:
        handle.truncate(limit + 1)
    with pytest.raises(TooLarge, match=rf"takes at most {limit // MB} MB for {datatype}"):
        instance.check_content(datatype, FileContent(path))


def test_text_is_refused_when_it_would_take_too_many_messages(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("palabra " * (4096 * 32 // 8 + 1000), encoding="utf-8")
    with pytest.raises(TooLarge, match="at most 32 messages"):
        Telegram().check_content("text", FileContent(path))


def test_captions_are_counted_as_each_platform_counts(tmp_path):
    path = tmp_path / "photo"
    path.write_bytes(media.jpeg())
    emoji = "😀" * 600  # 600 characters, 1200 UTF-16 code units
    assert WhatsApp().check_content("image", FileContent(path), {"caption": emoji}) == {"caption": emoji}
    with pytest.raises(InvalidInput, match="1200 UTF-16 code units; telegram takes at most 1024"):
        Telegram().check_content("image", FileContent(path), {"caption": emoji})


# -- text splitting ------------------------------------------------------------------------


def test_splitting_prefers_line_breaks_then_spaces_and_never_cuts_a_character():
    lines = "\n".join(["x" * 50] * 100)  # 5099 characters
    parts = split_text(lines, 4096)
    assert "".join(parts) == lines and all(p.endswith("\n") for p in parts[:-1])

    words = "abc " * 1500
    parts = split_text(words, 4096)
    assert "".join(parts) == words and all(p.endswith(" ") and len(p) <= 4096 for p in parts)

    accents = "e\u0301" * 3000  # "é" as e + combining acute: no spaces, must cut between pairs
    parts = split_text(accents, 4095)
    assert "".join(parts) == accents and all(not p.startswith("\u0301") for p in parts)

    emoji = "a" + "😀" * 3000  # UTF-16: 6001 units
    parts = split_text(emoji, 4096, utf16_units)
    assert "".join(parts) == emoji and [utf16_units(p) for p in parts] == [4095, 1906]


def test_a_text_within_the_limit_is_one_part_and_blank_parts_are_dropped():
    assert split_text("hola", 4096) == ["hola"]
    assert split_text("a" * 10 + " " * 5000 + "b", 4096) == ["a" * 10 + " " * 4086, " " * 914 + "b"]
    assert split_text("a" + " " * 9000 + "b", 4096)[-1].endswith("b")
    assert all(part.strip() for part in split_text("a" + " " * 9000 + "b", 4096))


# -- templates -----------------------------------------------------------------------------


def test_a_template_document_becomes_the_cloud_api_template_object(tmp_path):
    path = tmp_path / "t.json"
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    path.write_text(json.dumps({"name": "order_update", "language": "es_AR", "components": components}))
    assert load_template(FileContent(path)) == {"name": "order_update", "language": {"code": "es_AR", "policy": "deterministic"}, "components": components}


# -- the streamed multipart body -----------------------------------------------------------


def test_the_streamed_multipart_body_parses_back_to_the_same_fields_and_bytes(tmp_path):
    path = tmp_path / "file"
    content = bytes(range(256)) * 300
    path.write_bytes(content)
    with MultipartBody({"chat_id": "-100", "caption": "añ \"q\""}, [("document", 'Informe "final" ñ.pdf', "application/pdf", path)]) as body:
        raw = b"".join(iter(lambda: body.read(1000), b""))
        assert len(raw) == len(body)
        content_type = body.content_type
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
    _, form, files = parse_form_data(environ)
    assert form.to_dict() == {"chat_id": "-100", "caption": 'añ "q"'}
    assert files["document"].read() == content
    assert files["document"].mimetype == "application/pdf"
    assert files["document"].filename == 'Informe "final" ñ.pdf'  # sent as %22 (RFC 7578), read back as a quote


# -- /msg refuses bad messages with a reason, and sends none of them -----------------------

TEMPLATE_OK = json.dumps({"name": "hello_world", "language": "en"}).encode()

BAD = [
    # serv, type, content, upload name, /msg fields, status, reason
    ("wpp1", "image", media.pdf(), "photo.jpg", {}, 400, "image for wpp1 must be JPEG, PNG (checked by content); this file is PDF"),
    ("telegram", "image", b"GIF89a" + b"\x00" * 50, "a.png", {}, 400, "image for telegram must be JPEG, PNG, WebP"),
    ("wpp1", "voice", media.ogg_vorbis(), "note.ogg", {}, 400, "voice for wpp1 must be OGG/Opus (checked by content); this file is Ogg (not Opus)"),
    ("telegram", "voice", media.mp3(), "note.ogg", {}, 400, "voice for telegram must be OGG/Opus"),
    ("telegram", "audio", media.ogg_opus(), "a.mp3", {}, 400, "audio for telegram must be M4A, MP3"),
    ("wpp1", "video", media.jpeg(), "v.mp4", {}, 400, "video for wpp1 must be 3GPP, MP4"),
    ("wpp1", "document", bytes(range(256)), "data.bin", {}, 400, "document for wpp1 must be"),
    ("telegram", "text", b"caf\xe9", "t.txt", {}, 400, "text must be UTF-8 (invalid byte at offset 3)"),
    ("wpp1", "text", b" \n\t ", "t.txt", {}, 400, "text is empty"),
    ("telegram", "document", b"", "empty.pdf", {}, 400, "the upload is empty"),
    ("wpp1", "image", media.pad(media.jpeg(), 5 * MB + 1), "big.jpg", {}, 413, "image is 5.0 MB; wpp1 takes at most 5 MB for image"),
    ("wpp1", "image", media.jpeg(), "a.jpg", {"caption": "x" * 1025}, 400, "caption is 1025 characters; wpp1 takes at most 1024"),
    ("wpp1", "audio", media.mp3(), "a.mp3", {"caption": "hola"}, 400, "wpp1 takes no caption for audio"),
    ("telegram", "text", b"hola", "t.txt", {"caption": "hola"}, 400, "telegram takes no caption for text"),
    ("telegram", "image", media.png(), "a.png", {"filename": "x.png"}, 400, "'filename' goes with type document only"),
    ("wpp1", "document", media.pdf(), "a.pdf", {"filename": "../etc/passwd"}, 400, "'filename' must be a plain file name"),
    ("wpp1", "template", b"{not json", "t.json", {}, 400, "template is not valid JSON"),
    ("wpp1", "template", json.dumps({"name": "Order Update", "language": "en"}).encode(), "t.json", {}, 400, "template 'name' must be"),
    ("wpp1", "template", json.dumps({"name": "order_update"}).encode(), "t.json", {}, 400, "template 'language' must be a language code"),
    ("wpp1", "template", json.dumps({"name": "x", "language": "en", "components": [{"parameters": []}]}).encode(), "t.json", {}, 400, "template components[0] must be an object with a 'type'"),
    ("telegram", "template", TEMPLATE_OK, "t.json", {}, 400, "telegram does not send type 'template'"),
]


@pytest.mark.parametrize("serv, datatype, content, upload_name, fields, status, reason", BAD,
                         ids=[f"{row[0]}-{row[1]}-{n}" for n, row in enumerate(BAD)])
def test_a_bad_message_gets_a_4xx_with_its_reason_and_is_never_sent(service_gateway, telegram, whatsapp, serv, datatype, content, upload_name, fields, status, reason):
    dest = new_chat() if serv == "telegram" else new_number()
    data_id = service_gateway.upload_id(content, filename=upload_name)
    response = service_gateway.msg(id=data_id, serv=serv, dest=dest, type=datatype, **fields)
    assert response.status_code == status, response.text
    assert reason in response.text and "\n" not in response.text.strip()
    service_gateway.drain()
    emulator = telegram if serv == "telegram" else whatsapp
    assert not [r for r in emulator.received() if str(r["dest"]) == dest]


def test_content_decides_not_the_file_name(service_gateway, whatsapp):
    number = new_number()
    data_id = service_gateway.upload_id(media.jpeg(), filename="looks-like.pdf")
    response = service_gateway.msg(id=data_id, serv="wpp1", dest=number, type="image")
    assert response.status_code == 200, response.text
    assert service_gateway.wait_state(response.text)["state"] == "delivered"
    [upload] = [r for r in whatsapp.received() if r["method"] == "media" and r["files"]["file"]["filename"] == "looks-like.pdf"]
    assert upload["fields"]["type"] == "image/jpeg"


def test_every_service_declares_its_datatypes_and_limits_as_data():
    assert Telegram.datatypes == Datatypes.ALL - {Datatypes.TEMPLATE}
    assert WhatsApp.datatypes == Datatypes.ALL
    for service in (Telegram, WhatsApp):
        assert set(service.size_limits) >= Datatypes.FILES
        assert set(service.formats) >= Datatypes.FILES
        assert service.text_limit == 4096 and service.caption_limit == 1024


def test_hostile_texts_split_into_full_parts_and_stop_at_the_cap():
    from multimsg.services.text import MAX_WALK_BACK, TooManyParts

    marks = "a" + "\u0301" * 24000  # one "character" with 24,000 combining marks
    parts = split_text(marks, 4096, utf16_units, max_parts=32)
    assert "".join(parts) == marks
    assert [len(p) for p in parts] == [4096] * 5 + [24001 - 5 * 4096]  # not 24,001 parts of one character

    # A real grapheme at a window's end is still kept whole (the walk back is bounded, not gone).
    word = "x" * 4090 + "e" + "\u0301" * 10 + "y" * 100
    parts = split_text(word, 4096)
    assert "".join(parts) == word and parts[0] == "x" * 4090 and parts[1].startswith("e\u0301")
    assert MAX_WALK_BACK >= 10

    skin = "\U0001F44D\U0001F3FD" * 3000  # thumbs up + skin tone: 4 UTF-16 units per pair
    parts = split_text(skin, 4096, utf16_units)
    assert "".join(parts) == skin and all(utf16_units(p) <= 4096 for p in parts)
    assert all(not p.startswith("\U0001F3FD") for p in parts)

    for hostile in ("\u0301" * 262000, "a" * 524000, "\u200d" * 262000, "\U0001F3FD" * 131000):
        with pytest.raises(TooManyParts):
            split_text(hostile, 4096, utf16_units, max_parts=32)
        parts = split_text(hostile, 4096, utf16_units)  # no cap: every part is as long as the limit allows
        assert "".join(parts) == hostile and all(utf16_units(p) >= 4095 for p in parts[:-1])
    assert len(split_text("a" * (32 * 4096), 4096, max_parts=32)) == 32  # exactly at the cap is fine
