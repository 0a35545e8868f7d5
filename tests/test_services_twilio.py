"""SMS/MMS through Twilio: the wire format and one test per outcome row (multimsg/services/twilio.py).

The wire format is checked in-process (the service built with a ``ServiceConfig`` pointing at
the emulator, tests/emulators/twilio.py). Every datatype Twilio takes goes end to end through
a real runner configured by environment, by HTTP and by the CLI, and so does every row of the
outcome table: upload, /msg, the drain, then /cons and /drain.
"""

from __future__ import annotations

import itertools

import pytest

from multimsg.config import ServiceConfig
from multimsg.content import BytesContent
from multimsg.errors import InvalidInput
from multimsg.services import KINDS
from multimsg.services.twilio import Twilio
from tests.emulators import TwilioEmulator
from tests.media import png
from tests.native_support import RETRIES, VIA, arrivals, assert_gave_up_retrying, assert_held, assert_throttled, instance_env, scripted, send_every, serve

_numbers = itertools.count(14155550001)


def new_number() -> str:
    return f"+{next(_numbers)}"


@pytest.fixture(scope="module")
def twilio_server():
    with TwilioEmulator().start() as emulator:
        yield emulator


@pytest.fixture
def twilio(twilio_server):
    twilio_server.reset()
    return twilio_server


def service(emulator, **values) -> Twilio:
    config = {"account_sid": emulator.sid, "auth_token": emulator.token, "sender": "+15005550006", "api_url": emulator.url,
              "media_base_url": "", **values}
    return Twilio(ServiceConfig(config, read_timeout=2.0))


def message(content: bytes, dest: str, datatype: str = "text", **extra) -> dict:
    return {"id": "T" * 16, "content": BytesContent(content), "dest": dest, "type": datatype, "options": {}, "platform_ids": [], **extra}


def test_registered_as_a_kind():
    assert KINDS["twilio"] is Twilio and Twilio.kind == "twilio"


def test_sms_goes_with_basic_auth_and_form_fields(twilio):
    dest = new_number()
    outcome = service(twilio).send(message("¡hola! ✓".encode(), dest))
    assert outcome.kind == "delivered", outcome
    [sent] = twilio.received()
    assert sent["fields"] == {"To": dest, "From": "+15005550006", "Body": "¡hola! ✓"}
    assert outcome.platform_ids == [sent["response"]["sid"]] and outcome.platform_ids[0].startswith("SM")


def test_a_messaging_service_sid_goes_as_messaging_service_sid(twilio):
    dest = new_number()
    assert service(twilio, sender="MG" + "1" * 32).send(message(b"hola", dest)).kind == "delivered"
    [sent] = twilio.received()
    assert sent["fields"] == {"To": dest, "MessagingServiceSid": "MG" + "1" * 32, "Body": "hola"}


def test_a_body_over_1600_is_split_into_parts(twilio):
    dest, text = new_number(), ("mensaje " * 500).strip()  # 3999 characters
    outcome = service(twilio).send(message(text.encode(), dest))
    assert outcome.kind == "delivered" and len(outcome.platform_ids) == 3
    parts = [r["fields"]["Body"] for r in twilio.received()]
    assert "".join(parts) == text and all(len(part) <= 1600 for part in parts)


def test_media_are_refused_at_msg_without_a_public_base_url(twilio):
    with pytest.raises(InvalidInput, match="not public"):
        service(twilio).check_content("image", BytesContent(png()), {})
    assert service(twilio).check_content("text", BytesContent(b"hola"), {}) == {}


def test_media_go_as_media_url_under_the_public_base_url(twilio):
    svc = service(twilio, media_base_url="https://media.example.org/mm/")
    assert svc.check_content("image", BytesContent(png()), {"caption": "foto"}) == {"caption": "foto"}
    dest = new_number()
    outcome = svc.send(message(png(), dest, "image", filename="foto 1.png", options={"caption": "foto"}))
    assert outcome.kind == "delivered", outcome
    [sent] = twilio.received()
    assert sent["fields"]["MediaUrl"] == ["https://media.example.org/mm/TTTTTTTTTTTTTTTT/foto%201.png"]
    assert sent["fields"]["Body"] == "foto"


# -- end to end: a real runner, HTTP and CLI -----------------------------------------------------

MEDIA_BASE = "https://media.example.org/mm"


@pytest.fixture(scope="module")
def twilio_gateway(tmp_path_factory, server_keys, twilio_server):
    account = {"account_sid": twilio_server.sid, "auth_token": twilio_server.token, "from": "+15005550006", "api_url": twilio_server.url}
    env = {**RETRIES, **instance_env("tw", "twilio", **account, media_base_url=MEDIA_BASE), **instance_env("twsms", "twilio", **account),
           # a held instance waits a minute for its next probe: one instance per misconfigured row
           **instance_env("twauth", "twilio", **{**account, "auth_token": "wrong-token"}),
           **instance_env("twsid", "twilio", **{**account, "api_url": twilio_server.url + "/elsewhere"}),
           **instance_env("twfrom", "twilio", **{**account, "from": "+15005550009"}),
           **instance_env("tw21212", "twilio", **account), **instance_env("tw21659", "twilio", **account)}
    yield from serve(tmp_path_factory, server_keys, env, "twilio")


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_twilio_takes_arrives_end_to_end(twilio_gateway, twilio, tmp_path, via):
    sent = send_every(twilio_gateway, tmp_path, via, "tw", {datatype: new_number() for datatype in Twilio.datatypes})
    for item, record in arrivals(sent, twilio):
        assert record["fields"]["From"] == "+15005550006" and item.report["platform_ids"] == [record["response"]["sid"]]
        if item.datatype == "text":
            assert record["fields"]["Body"] == item.content.decode() and "MediaUrl" not in record["fields"]
        else:
            assert record["fields"]["Body"] == item.caption
            assert record["fields"]["MediaUrl"] == [f"{MEDIA_BASE}/{item.report['id']}/{item.upload_name}"]


def test_media_are_refused_at_msg_by_an_instance_without_a_media_base_url(twilio_gateway, twilio):
    response = twilio_gateway.msg(id=twilio_gateway.upload_id(png()), serv="twsms", dest=new_number(), type="image")
    assert response.status_code == 400 and "media_base_url" in response.text, response.text
    assert twilio_gateway.wait_state(twilio_gateway.send(b"solo texto", "twsms", new_number()))["state"] == "delivered"


# -- outcome table, through the runner -----------------------------------------------------------

@pytest.mark.parametrize("answer, words, retry_after", [
    ("too_many", "Too Many Requests (error 20429)", None),  # without a Retry-After
    ({"status": 429, "body": {"message": "slow down"}, "headers": {"Retry-After": "1"}}, "slow down", 1),
], ids=["20429", "429-retry-after"])
def test_rate_limits_slow_the_whole_service_down(twilio_gateway, twilio, answer, words, retry_after):
    dests = (new_number(), new_number())
    message_id = scripted(twilio_gateway, twilio, "tw", dests[0], answer)
    assert_throttled(twilio_gateway, twilio, "tw", message_id, dests, words, retry_after)


@pytest.mark.parametrize("answer, code", [("invalid_to", 21211), ("not_mobile", 21614), ("unsubscribed", 21610),
                                          ({"status": 400, "body": {"code": 21408, "message": "Permission to send an SMS has not been enabled"}}, 21408)],
                         ids=["21211", "21614", "21610", "other"])
def test_refused_numbers_and_other_errors_fail_with_twilio_message_and_code(twilio_gateway, twilio, answer, code):
    report = twilio_gateway.wait_state(scripted(twilio_gateway, twilio, "tw", new_number(), answer))
    assert report["state"] == "failed" and report["last_error"].endswith(f"(error {code})"), report
    assert len(report["last_error"]) > len(f"twilio:  (error {code})")  # Twilio's message too


@pytest.mark.parametrize("serv, answer, code", [
    ("twauth", None, 20003),  # the instance's auth token is wrong
    ("twsid", None, 20404),  # its api_url leads to no account's Messages
    ("twfrom", None, 21606),  # its from is not a number of the account
    ("tw21212", {"status": 400, "body": {"code": 21212, "message": "The 'From' number +1500 is not a valid phone number"}}, 21212),
    ("tw21659", {"status": 400, "body": {"code": 21659, "message": "Source number is not a Twilio number"}}, 21659),
])
def test_refused_account_settings_hold_the_instance(twilio_gateway, twilio, serv, answer, code):
    dest = new_number()
    message_id = scripted(twilio_gateway, twilio, serv, dest, answer) if answer else twilio_gateway.send(b"hola", serv, dest)
    report = assert_held(twilio_gateway, twilio, serv, message_id, f"(error {code})", new_number())
    assert "wrong-token" not in report["last_error"]


@pytest.mark.parametrize("answer, extra, words", [
    ("server_error", {}, "Internal Server Error (error 20500)"),
    ("bad_gateway", {}, "HTTP 503"),
    ("timeout", {"seconds": 3}, "did not answer in time"),
    ("drop", {}, "could not reach the platform"),
    ({"status": 201, "body": {"status": "queued"}}, {}, "not a created message"),
], ids=["500", "503-html", "timeout", "dropped", "201-without-sid"])
def test_transient_answers_are_retried(twilio_gateway, twilio, answer, extra, words):
    dest = new_number()
    message_id = scripted(twilio_gateway, twilio, "tw", dest, answer, times=2, **extra)
    assert_gave_up_retrying(twilio_gateway, twilio, message_id, dest, words)
