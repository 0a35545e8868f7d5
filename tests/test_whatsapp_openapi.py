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

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import media
from tests.emulators import openapi
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


def _spec_examples() -> list[dict]:
    """The request bodies of Meta's own examples in the vendored spec."""
    spec = openapi._load_spec(openapi.SPEC_PATH)
    examples = spec["paths"][openapi.MESSAGES_PATH]["post"]["requestBody"]["content"]["application/json"]["examples"]
    return [example["value"] for example in examples.values() if isinstance(example.get("value"), dict)]


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=600)
                     | st.sampled_from(["\ud800", "x\udfff", 10**400]),  # json.loads gives these too
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


@st.composite
def _mutated(draw: st.DrawFn, bodies: list[dict]) -> object:
    """A spec example with one to three changes: a value replaced, a key dropped or added, a type renamed."""
    body = copy.deepcopy(draw(st.sampled_from(bodies)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(body)))
        if not path:
            return draw(_JSON) if draw(st.integers(0, 9)) == 0 else body
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "drop", "add", "type"]))
        if action == "replace":
            parent[path[-1]] = draw(_JSON)
        elif action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from([*parent, "extra", "caption"]))] = draw(_JSON)
        elif action == "type":
            body["type"] = draw(st.sampled_from(sorted(openapi.message_schemas()["by_type"])))
    return body


def test_the_fast_check_agrees_with_jsonschema():
    """openapi.py lets jsonschema-rs accept a body and asks `jsonschema` only about the rest: the
    two must agree on the spec's own examples and on bodies changed from them, or the fast check
    would let through a body the reference rejects."""
    bodies = _spec_examples()
    assert len(bodies) >= 40
    kinds = sorted(openapi.message_schemas()["by_type"])

    def agree(body: object) -> None:
        kind = body.get("type") if isinstance(body, dict) else None
        for key in {None, kind if kind in kinds else None}:
            reference = not list(openapi._validator(key).iter_errors(body))
            try:
                fast = openapi._checker(key).is_valid(body)
            except ValueError:  # a value it cannot take (a lone surrogate): validate_message asks jsonschema
                continue
            assert fast == reference, (key, body)

    for body in bodies:
        agree(body)
    lone = {"messaging_product": "whatsapp", "to": "5491100000000", "type": "text", "text": {"body": "\ud800"}}
    assert validate_message(lone) == []  # jsonschema-rs cannot take a lone surrogate: jsonschema decides
    assert validate_message({**lone, "text": {"body": "\ud800", "x": 1}}) == ["text: Additional properties are not allowed ('x' was unexpected)"]
    assert sum(validate_message(body) == [] for body in bodies) >= 30  # most of Meta's examples are valid as they are

    given(_mutated(bodies))(settings(max_examples=400, deadline=None, database=None,
                                     suppress_health_check=list(HealthCheck))(agree))()
