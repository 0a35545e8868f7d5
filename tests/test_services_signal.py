"""Signal through signal-cli-rest-api: the wire format and one test per outcome row (multimsg/services/signal.py).

The wire format is checked in-process (the service built with a ``ServiceConfig`` pointing at
the emulator, tests/emulators/signal.py, and ``send`` called directly). Every datatype Signal
takes goes end to end through a real runner configured by environment, by HTTP and by the CLI,
and so does every row of the outcome table: upload, /msg, the drain, then /cons and /drain.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from multimsg.config import ServiceConfig
from multimsg.content import BytesContent
from multimsg.errors import InvalidInput
from multimsg.services import KINDS
from multimsg.services.signal import Signal
from tests.emulators import SignalEmulator
from tests.media import ogg_opus, png
from tests.native_support import RETRIES, VIA, arrivals, assert_gave_up_retrying, assert_held, assert_throttled, instance_env, scripted, send_every, serve
from tests.services_support import sha256

_numbers = itertools.count(4917000000001)


def new_number() -> str:
    return f"+{next(_numbers)}"


@pytest.fixture(scope="module")
def signal_server():
    with SignalEmulator().start() as emulator:
        yield emulator


@pytest.fixture
def signal(signal_server):
    signal_server.reset()
    return signal_server


def service(emulator, **values) -> Signal:
    config = {"api_url": emulator.url, "number": emulator.number, **values}
    return Signal(ServiceConfig(config, read_timeout=2.0))


def message(content: bytes, dest: str, datatype: str = "text", **extra) -> dict:
    return {"id": "S" * 16, "content": BytesContent(content), "dest": dest, "type": datatype, "options": {}, "platform_ids": [], **extra}


def test_registered_as_a_kind():
    assert KINDS["signal"] is Signal and Signal.kind == "signal"


@pytest.mark.parametrize("dest", ["+4915112345678", "0b1f7c1e-3a2d-4d7e-9f00-0123456789ab", "group.dGVzdGdyb3VwaWQ="])
def test_dest_formats(dest):
    assert Signal(ServiceConfig({"api_url": "http://x", "number": "+1"})).check_dest(dest) == dest


@pytest.mark.parametrize("dest", ["4915112345678", "+49 151", "group.", "../v1/accounts", "+0123456789"])
def test_bad_dests_are_refused(dest):
    with pytest.raises(InvalidInput):
        Signal(ServiceConfig({"api_url": "http://x", "number": "+1"})).check_dest(dest)


def test_text_is_sent_with_number_and_recipients(signal):
    dest = new_number()
    outcome = service(signal).send(message("hola, señal ✓".encode(), dest))
    assert outcome.kind == "delivered", outcome
    [sent] = signal.received()
    assert sent["json"] == {"message": "hola, señal ✓", "number": signal.number, "recipients": [dest]}
    assert outcome.platform_ids == [sent["response"]["timestamp"]]


def test_long_text_goes_as_ordered_parts(signal):
    dest, text = new_number(), ("palabra " * 600).strip()
    outcome = service(signal).send(message(text.encode(), dest))
    assert outcome.kind == "delivered" and len(outcome.platform_ids) == 3
    parts = [r["json"]["message"] for r in signal.received()]
    assert "".join(parts) == text and all(len(part) <= 2000 for part in parts)


def test_an_image_goes_as_a_data_uri_with_mime_type_and_file_name(signal):
    dest, PNG = new_number(), png()
    data = message(PNG, dest, "image", filename="foto; 1.png", options={"caption": "mirá"})
    outcome = service(signal).send(data)
    assert outcome.kind == "delivered", outcome
    [sent] = signal.received()
    assert sent["fields"]["message"] == "mirá"
    attachment = sent["files"]["attachment0"]
    assert attachment == {"sha256": hashlib.sha256(PNG).hexdigest(), "size": len(PNG), "filename": "foto_ 1.png", "content_type": "image/png"}


def test_a_large_document_is_streamed_byte_for_byte(signal):
    dest, blob = new_number(), bytes(range(256)) * 4099 + b"x"  # not a multiple of 3
    outcome = service(signal).send(message(blob, dest, "document", filename="blob.bin"))
    assert outcome.kind == "delivered", outcome
    [sent] = signal.received()
    assert sent["files"]["attachment0"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert sent["files"]["attachment0"]["content_type"] == "application/octet-stream"


# -- end to end: a real runner, HTTP and CLI -----------------------------------------------------

@pytest.fixture(scope="module")
def signal_gateway(tmp_path_factory, server_keys, signal_server):
    account = {"api_url": signal_server.url, "number": signal_server.number}
    env = {**RETRIES, **instance_env("sig", "signal", **account),
           # a held instance waits a minute for its next probe: one instance per misconfigured row
           **instance_env("sigcaptcha", "signal", **account),
           **instance_env("signoacct", "signal", api_url=signal_server.url, number="+4915199999999"),
           **instance_env("sigurl", "signal", api_url=signal_server.url + "/nope", number=signal_server.number)}
    yield from serve(tmp_path_factory, server_keys, env, "signal")


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_signal_takes_arrives_end_to_end(signal_gateway, signal, tmp_path, via):
    sent = send_every(signal_gateway, tmp_path, via, "sig", {datatype: new_number() for datatype in Signal.datatypes})
    for item, record in arrivals(sent, signal):
        assert record["fields"]["number"] == signal.number and record["fields"]["recipients"] == [item.dest]
        assert item.report["platform_ids"] == [record["response"]["timestamp"]]
        if item.datatype == "text":
            assert record["fields"]["message"] == item.content.decode() and not record["files"]
        else:
            assert record["fields"]["message"] == item.caption
            assert record["files"]["attachment0"] == {"sha256": sha256(item.content), "size": len(item.content),
                                                      "filename": item.upload_name, "content_type": item.mime}


def test_voice_is_refused_at_msg_with_the_reason(signal_gateway):
    response = signal_gateway.msg(id=signal_gateway.upload_id(ogg_opus()), serv="sig", dest=new_number(), type="voice")
    assert response.status_code == 400 and "voice" in response.text, response.text


# -- outcome table, through the runner -----------------------------------------------------------

def test_captcha_challenge_holds_the_instance_as_misconfigured(signal_gateway, signal):
    dest = new_number()
    message_id = scripted(signal_gateway, signal, "sigcaptcha", dest, "captcha")
    assert_held(signal_gateway, signal, "sigcaptcha", message_id, "needs a captcha", new_number())
    [challenged] = signal.wait_for(lambda r: r["dest"] == dest)
    assert challenged["status"] == 429 and challenged["response"]["challenge_tokens"]


def test_429_without_challenge_slows_the_whole_service_down(signal_gateway, signal):
    dests = (new_number(), new_number())
    message_id = scripted(signal_gateway, signal, "sig", dests[0], "rate_limited")
    assert_throttled(signal_gateway, signal, "sig", message_id, dests, "rate limiting", retry_after=None)  # Signal says none


@pytest.mark.parametrize("serv, words", [("signoacct", "not an account of this signal-cli-rest-api"), ("sigurl", "API URL was refused")])
def test_an_account_or_api_url_the_api_refuses_holds_the_instance(signal_gateway, signal, serv, words):
    assert_held(signal_gateway, signal, serv, signal_gateway.send(b"hola", serv, new_number()), words, new_number())


@pytest.mark.parametrize("answer, extra, words", [
    ("unregistered", {"who": "+4917000000009"}, 'Failed to send message: Unregistered user "+4917000000009"'),
    ({"status": 400, "body": {"error": "Invalid group id"}}, {}, "Invalid group id"),
    ({"status": 413, "body": {"error": "Request Entity Too Large"}}, {}, "Request Entity Too Large"),
], ids=["unregistered", "other-400", "413"])
def test_refusals_of_the_message_fail_with_the_api_error(signal_gateway, signal, answer, extra, words):
    report = signal_gateway.wait_state(scripted(signal_gateway, signal, "sig", new_number(), answer, **extra))
    assert report["state"] == "failed" and report["last_error"] == f"signal: {words}", report


@pytest.mark.parametrize("answer, extra, words", [
    ("server_error", {}, "Internal Server Error"),
    ("bad_gateway", {}, "HTTP 502"),
    ("timeout", {"seconds": 3}, "did not answer in time"),
    ("drop", {}, "could not reach the platform"),
    ({"status": 201, "body": {}}, {}, "not a sent message"),
], ids=["500", "502-html", "timeout", "dropped", "201-without-timestamp"])
def test_transient_answers_are_retried(signal_gateway, signal, answer, extra, words):
    dest = new_number()
    message_id = scripted(signal_gateway, signal, "sig", dest, answer, times=2, **extra)
    assert_gave_up_retrying(signal_gateway, signal, message_id, dest, words)
