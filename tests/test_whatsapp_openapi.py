"""Every WhatsApp request body multimsg sends validates against Meta's OpenAPI spec.

The spec is the vendored ``tests/reference/whatsapp-business-messaging-api_v23.0.yaml``
(the request body of ``POST /{Version}/{Phone-Number-ID}/messages``). Its message
schemas are ``allOf: [BaseMessageProperties, {additionalProperties: false,
properties: {...}}]``; under JSON Schema, ``additionalProperties: false`` in one
``allOf`` branch only sees that branch's own properties, so a strict validator
rejects even correct bodies (``to``, ``messaging_product``... count as
"additional"). ``tests/emulators/openapi.py`` therefore merges the ``allOf``
branches into one schema before validating, which gives the meaning the spec
intends; it also relaxes two ``required`` entries that Meta's own examples leave
out (see that module).

The emulator validates every ``/messages`` body it receives and records the
problems as ``schema_errors``; this test sends every datatype through a real
runner and asserts that no body had any, and re-checks each body here.
"""

from __future__ import annotations

import json

from tests import media
from tests.emulators.openapi import validate_message
from tests.services_support import new_number, queue, service_gateway  # noqa: F401  (fixture)

TEMPLATE = {
    "name": "order_update",
    "language": "en_US",
    "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "Order A-1"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "2 items"}]},
    ],
}

MESSAGES = [
    # datatype, content, optional /msg fields
    ("text", "Hola 👋, ¿qué tal?".encode(), {}),
    ("text", ("palabra " * 1100).encode(), {}),  # 8800 characters: 3 parts
    ("image", media.jpeg(), {"caption": "una foto"}),
    ("image", media.png(), {}),
    ("document", media.pdf(), {"caption": "el informe", "filename": "informe.pdf"}),
    ("document", media.docx(), {}),
    ("audio", media.mp3(), {}),
    ("audio", media.mp4(b"M4A "), {}),
    ("video", media.mp4(), {"caption": "un video"}),
    ("voice", media.ogg_opus(), {}),
    ("template", json.dumps(TEMPLATE).encode(), {}),
    ("template", json.dumps({"name": "hello_world", "language": "en"}).encode(), {}),
]


def test_every_datatype_sends_bodies_that_match_metas_openapi_spec(service_gateway, whatsapp):
    numbers = {}
    for datatype, content, fields in MESSAGES:
        number = new_number()
        numbers[number] = datatype
        queue(service_gateway, content, "wpp1", number, datatype, f"upload.{datatype}", **fields)
    service_gateway.drain()

    sent = whatsapp.wait_for(lambda r: r["method"] == "messages" and r["dest"] in numbers and r["status"] == 200,
                             count=len(MESSAGES) + 2)
    assert {numbers[r["dest"]] for r in sent} == {"text", "image", "document", "audio", "video", "voice", "template"}
    for record in sent:
        assert record["schema_errors"] == [], (numbers[record["dest"]], record["json"], record["schema_errors"])
        assert validate_message(record["json"]) == []


def test_the_validator_does_reject_a_body_the_spec_forbids():
    """So that an empty ``schema_errors`` above means something."""
    good = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "5491100000000",
            "type": "text", "text": {"body": "hola"}}
    assert validate_message(good) == []
    assert validate_message({**good, "caption": "not a text field"})  # unknown top-level property
    assert validate_message({**good, "text": {"body": "hola", "filename": "x"}})  # unknown text property
    assert validate_message({k: v for k, v in good.items() if k != "to"})  # missing recipient
