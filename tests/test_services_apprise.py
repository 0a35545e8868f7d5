"""The Apprise bridge: Apprise's json:// and form:// plugins against a local receiver, byte for byte,
and one test per outcome row (multimsg/services/apprise_bridge.py).

The dest checks, the plugin's limits and the bytes sent are checked in-process (the bridge
built with a ``ServiceConfig``); every datatype the json:// plugin takes goes end to end
through a real runner configured by environment, by HTTP and by the CLI, and so does every
row of the outcome table, through json:// and form:// (upload, /msg, the drain, /cons, /drain).

Apprise (``apprise>=2.2``) is in the test extra, so under CI=true these tests must run.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools

import pytest

from multimsg.config import ServiceConfig
from multimsg.content import BytesContent
from multimsg.errors import InvalidInput
from multimsg.services import KINDS
from multimsg.services.apprise_bridge import AppriseBridge, _secret_pieces, classify
from tests.conftest import require
from tests.emulators import Receiver
from tests.gatewayproc import Gateway
from tests.media import pdf, png
from tests.native_support import (
    FAST,
    RETRIES,
    VIA,
    arrivals,
    assert_gave_up_retrying,
    assert_throttled,
    instance_env,
    scripted,
    send_every,
    settled_drain,
    start_gateway,
    swept,
)

PATTERN = r"[a-z][a-z0-9-]{0,31}"


@pytest.fixture(autouse=True)
def _apprise_installed():
    require(importlib.util.find_spec("apprise") is not None, "apprise is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def receiver_server():
    with Receiver().start() as emulator:
        yield emulator


@pytest.fixture
def receiver(receiver_server):
    receiver_server.reset()
    return receiver_server


def bridge(url: str, pattern: str = PATTERN, **values) -> AppriseBridge:
    return AppriseBridge(ServiceConfig({"url_template": url, "dest_regex": pattern, "title": "", **values}, read_timeout=2.0))


def json_bridge(receiver) -> AppriseBridge:
    return bridge(f"json://127.0.0.1:{receiver.port}/hooks/${{dest}}")


def form_bridge(receiver) -> AppriseBridge:
    return bridge(f"form://127.0.0.1:{receiver.port}/hooks/${{dest}}")


def message(content: bytes, dest: str, datatype: str = "text", **extra) -> dict:
    return {"id": "A" * 16, "content": BytesContent(content), "dest": dest, "type": datatype, "options": {}, "platform_ids": [], **extra}


def test_registered_as_a_kind():
    assert KINDS["apprise"] is AppriseBridge and AppriseBridge.kind == "apprise"


# -- the destination is checked before it is substituted --------------------------------------

@pytest.mark.parametrize("dest", ["../admin", "a/b", "ops?x=1", "ops#frag", "ops%2f..", "user@evil.example", "ops x", "OPS", "", "a" * 40])
def test_dests_the_pattern_or_the_url_rules_refuse(receiver, dest):
    with pytest.raises(InvalidInput):
        json_bridge(receiver).check_dest(dest)


def test_a_permissive_pattern_still_refuses_traversal(receiver):
    loose = bridge(f"json://127.0.0.1:{receiver.port}/hooks/${{dest}}", pattern=r".+")
    for dest in ("../../etc", "x/../../y", "a@b"):
        with pytest.raises(InvalidInput):
            loose.check_dest(dest)
    assert loose.check_dest("fine-dest") == "fine-dest"


@pytest.mark.parametrize("url, why", [
    ("json://127.0.0.1/hooks", "exactly once"),
    ("json://127.0.0.1/${dest}/${dest}", "exactly once"),
    ("nosuchplugin://host/${dest}", "names a plugin this server has"),
])
def test_bad_templates_leave_the_instance_unconfigured(url, why):
    instance = bridge(url)
    assert not instance.configured() and why in instance.missing_credentials()[0]
    assert instance.send(message(b"hola", "ops")).kind == "misconfigured"


def test_a_bad_pattern_leaves_the_instance_unconfigured():
    instance = bridge("json://127.0.0.1/${dest}", pattern="[unclosed")
    assert not instance.configured() and "regular expression" in instance.missing_credentials()[0]


def test_datatypes_and_pace_come_from_the_plugin(receiver):
    instance = json_bridge(receiver)
    assert instance.datatypes == {"text", "image", "document", "audio", "video", "voice"}  # json:// takes attachments
    assert instance.rate == 1.0  # json:// states no spacing: the conservative default
    assert bridge("mailgun://user@example.org/key/${dest}").rate == pytest.approx(1 / 0.2)
    assert bridge("ntfy://ntfy.example.org/${dest}").rate == pytest.approx(1 / 5.5)  # Apprise's default spacing


# -- json:// and form://, byte for byte -------------------------------------------------------

def test_json_text_arrives_byte_for_byte(receiver):
    text = "hola ✓ — «comillas» \"dobles\" \\ y\nsaltos\r\n\ttab 👍🏽"
    outcome = json_bridge(receiver).send(message(text.encode(), "ops"))
    assert outcome.kind == "delivered" and outcome.platform_ids == [""]
    [sent] = receiver.received()
    assert sent["method"] == "POST" and sent["media"]["path"] == "/hooks/ops"
    assert sent["json"]["message"] == text and sent["json"]["type"] == "info"


def test_json_attachment_arrives_byte_for_byte(receiver):
    image = png()
    outcome = json_bridge(receiver).send(message(image, "ops", "image", filename="foto.png", options={"caption": "mirá"}))
    assert outcome.kind == "delivered", outcome
    [sent] = receiver.received()
    [attachment] = sent["json"]["attachments"]
    assert base64.b64decode(attachment["base64"]) == image
    assert attachment["filename"] == "foto.png" and attachment["mimetype"] == "image/png"
    assert sent["json"]["message"] == "mirá"


# Instances whose settings change between the queueing of a message and its sending: the module's
# runner is the second start of one data folder, the first (without a drain) queued a message to each.
CHANGED = {"noplugin": {"url": "nosuchplugin://host/${dest}"}, "noslot": {"url": "json://127.0.0.1:9/hooks"},
           "badpattern": {"dest_pattern": "[unclosed"}, "narrowed": {"dest_pattern": "[a-z]{1,3}"}}


def instances_env(instances: dict[str, dict[str, str]]) -> dict[str, str]:
    return {key: value for serv, settings in instances.items() for key, value in instance_env(serv, "apprise", **settings).items()}


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, server_keys, receiver_server):
    """(the module's runner, the id of the message queued to each instance of ``CHANGED`` before they changed)."""
    hooks = f"127.0.0.1:{receiver_server.port}/hooks/${{dest}}"
    good = {"url": f"json://{hooks}", "dest_pattern": PATTERN}
    env = {**RETRIES, **instances_env({"ops": good, "forms": {**good, "url": f"form://{hooks}"},
                                       "nobody": {**good, "url": "json://127.0.0.1:9/hooks/${dest}"}})}
    first = start_gateway(tmp_path_factory, server_keys, {**env, **instances_env(dict.fromkeys(CHANGED, good)), "MULTIMSG_DRAIN_INTERVAL": "0"}, "apprise")
    try:
        queued = {serv: first.send(b"hola", serv, "ops-queued") for serv in CHANGED}
    finally:
        first.stop()
    runner = swept(Gateway(first.home, {**FAST, **env, **instances_env({serv: {**good, **change} for serv, change in CHANGED.items()})}).start())
    yield runner, queued
    runner.stop()


@pytest.fixture(scope="module")
def apprise_gateway(restarted):
    return restarted[0]


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_end_to_end_through_the_json_plugin(apprise_gateway, receiver, tmp_path, via):
    dests = {datatype: f"{via}-{datatype}" for datatype in ("text", "image", "document", "audio", "video", "voice")}
    sent = send_every(apprise_gateway, tmp_path, via, "ops", dests)
    for item, record in arrivals(sent, receiver):
        assert record["media"]["path"] == f"/hooks/{item.dest}"
        if item.datatype == "text":
            assert record["json"]["message"] == item.content.decode() and not record["json"].get("attachments")
        else:
            [attachment] = record["json"]["attachments"]
            assert base64.b64decode(attachment["base64"]) == item.content, item.datatype
            assert (attachment["filename"], attachment["mimetype"]) == (item.upload_name, item.mime)
            assert record["json"]["message"] == item.caption


def test_form_text_and_attachment_arrive_byte_for_byte(receiver):
    text, document = "línea 1\nlínea 2 ✓", pdf("acta")
    assert form_bridge(receiver).send(message(text.encode(), "ops")).kind == "delivered"
    assert form_bridge(receiver).send(message(document, "ops", "document", filename="acta 2026.pdf")).kind == "delivered"
    first, second = receiver.received()
    assert first["fields"]["message"] == text
    [upload] = second["files"].values()
    assert upload["sha256"] == hashlib.sha256(document).hexdigest() and upload["size"] == len(document)
    assert upload["filename"] == "acta 2026.pdf" and upload["content_type"] == "application/pdf"


def test_a_long_text_goes_as_parts_within_the_plugin_limit(receiver):
    text = ("palabra " * 9000).strip()  # 71999 characters; json:// takes 32768 per message
    outcome = json_bridge(receiver).send(message(text.encode(), "ops"))
    assert outcome.kind == "delivered" and len(outcome.platform_ids) == 3
    parts = [r["json"]["message"] for r in receiver.received()]
    assert "".join(parts) == text and all(len(part) <= 32768 - 64 for part in parts)


def test_a_plugin_without_attachments_sends_text_only():
    instance = bridge("gotify://gotify.example.org/${dest}")  # Apprise's gotify plugin takes no attachments
    assert instance.datatypes == {"text"}
    assert instance.send(message(png(), "ops", "image")).kind == "failed"


def test_a_plugin_whose_limits_are_properties_keeps_the_defaults():
    instance = bridge("matrix://user:pass@matrix.example.org/${dest}")  # body_maxlen is a property there
    assert instance.configured() and instance.text_limit == 32768 and instance.rate == pytest.approx(1 / 0.5)


def test_credentials_of_the_url_are_hidden_in_reasons():
    url = "json://user:s3cr3t-pa55word@hooks.example.org/in/T0KENabcdef123/ops"
    outcome = classify(["Failed to send to json://user:s3cr3t-pa55word@hooks.example.org/in/T0KENabcdef123/ops: error=400."], _secret_pieces(url, "ops"))
    assert outcome.kind == "failed"
    assert "s3cr3t-pa55word" not in outcome.reason and "T0KENabcdef123" not in outcome.reason and "error=400" in outcome.reason


# -- outcome table, through the runner -----------------------------------------------------------

_dests = itertools.count(1)


def new_dest() -> str:
    return f"row-{next(_dests)}"


PLUGINS = {"json": "ops", "form": "forms"}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_429_slows_the_whole_service_down_without_a_retry_after(apprise_gateway, receiver, plugin):
    serv, dests = PLUGINS[plugin], (new_dest(), new_dest())
    message_id = scripted(apprise_gateway, receiver, serv, dests[0], "too_many")
    assert_throttled(apprise_gateway, receiver, serv, message_id, dests, "error=429", retry_after=None)  # Apprise passes on none


@pytest.mark.parametrize("answer, words", [("server_error", "error=500"), ("drop", "onnection")])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_5xx_and_connection_errors_are_retried(apprise_gateway, receiver, plugin, answer, words):
    dest = new_dest()
    message_id = scripted(apprise_gateway, receiver, PLUGINS[plugin], dest, answer, times=2)
    assert_gave_up_retrying(apprise_gateway, receiver, message_id, dest, words)


def test_the_service_timeouts_reach_the_plugin(apprise_gateway, receiver):
    dest = new_dest()  # 3 s late: past this runner's read timeout (2 s), within Apprise's own default (4 s)
    report = apprise_gateway.wait_state(scripted(apprise_gateway, receiver, "ops", dest, "timeout", seconds=3))
    assert report["state"] == "delivered" and report["attempts"] == 1, report  # the late answer was given up, the message sent again
    late, again = receiver.wait_for(lambda r: r["dest"] == dest, count=2)
    assert late["status"] == again["status"] == 200 and late["json"]["message"] == again["json"]["message"] == "scripted"


def test_nobody_listening_is_retried(apprise_gateway):
    report = apprise_gateway.wait_state(apprise_gateway.send(b"hola", "nobody", new_dest()))
    assert report["state"] == "failed" and report["attempts"] == 2, report
    assert report["last_error"].startswith("gave up after 2 attempts: apprise: ") and "onnection" in report["last_error"], report


@pytest.mark.parametrize("answer, status", [("bad_request", 400), ("unauthorized", 401), ("not_found", 404)])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_other_4xx_fail_with_the_apprise_log_line(apprise_gateway, receiver, plugin, answer, status):
    dest = new_dest()
    report = apprise_gateway.wait_state(scripted(apprise_gateway, receiver, PLUGINS[plugin], dest, answer))
    assert report["state"] == "failed" and report["attempts"] == 1 and f"error={status}" in report["last_error"], report
    assert report["last_error"].startswith("apprise: ") and str(receiver.port) not in report["last_error"]  # the URL is hidden
    assert len(receiver.wait_for(lambda r: r["dest"] == dest)) == 1


def test_an_instance_changed_after_msg_holds_or_fails_its_queued_messages(restarted, receiver):
    """A template Apprise cannot load, one without ``${dest}`` and a pattern that is no regular expression
    hold the instance (its message stays queued, /drain says why); a pattern the dest no longer matches fails it."""
    gateway, queued = restarted
    summary = settled_drain(gateway)
    failed = gateway.state(queued["narrowed"])
    assert failed["state"] == "failed" and failed["last_error"] == "apprise: 'dest' for narrowed must be a destination matching [a-z]{1,3}", failed
    for serv, words in (("noplugin", "an Apprise URL in MULTIMSG_NOPLUGIN_URL whose schema names a plugin this server has"),
                        ("noslot", "an Apprise URL holding ${dest} exactly once in MULTIMSG_NOSLOT_URL"),
                        ("badpattern", "a regular expression in MULTIMSG_BADPATTERN_DEST_PATTERN (unterminated character set")):
        assert summary["misconfigured"].get(serv, "").startswith(f"{serv} is not configured (set {words}"), (serv, summary)
        report = gateway.state(queued[serv])
        assert report["state"] == "queued" and report["attempts"] == 0, report
    assert not [record for record in receiver.received() if record["dest"] == "ops-queued"]
    refused = gateway.msg(id=gateway.upload_id(b"hola"), serv="noslot", dest="ops", type="text")  # and /msg says what to set
    assert refused.status_code == 400 and "(missing an Apprise URL holding ${dest} exactly once in MULTIMSG_NOSLOT_URL)" in refused.text, refused.text
