"""The signed webhook: JSON texts, multipart files, Standard Webhooks signatures checked by the
``standardwebhooks`` package in a real receiver process, one test per row of the outcome table
in ``multimsg/services/webhook.py``."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.conftest import require
from tests.emulators import WebhookReceiver
from tests.native_support import SAMPLES, VIA, arrivals, send_every, settled_drain, start_gateway, wait_attempted
from tests.services_support import sha256

_dests = itertools.count(1)


def new_dest() -> str:
    return f"user-{next(_dests)}"


@pytest.fixture(scope="module")
def receiver():
    try:
        import standardwebhooks  # noqa: F401
    except ImportError:
        require(False, "the standardwebhooks package is not installed (pip install -e '.[test]')")
    with WebhookReceiver().start() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def hook_gateway(tmp_path_factory, server_keys, receiver):
    env = {}
    for name, secret in (("hook", receiver.secret), ("hookgone", receiver.secret), ("hookbad", "not-a-whsec-secret")):
        env.update({f"MULTIMSG_{name.upper()}_KIND": "webhook", f"MULTIMSG_{name.upper()}_URL": receiver.url,
                    f"MULTIMSG_{name.upper()}_SECRET": secret, f"MULTIMSG_{name.upper()}_DEST_INTERVAL": "0"})
    runner = start_gateway(tmp_path_factory, server_keys, env, "webhook")
    yield runner
    runner.stop()


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_signed_text_as_json_files_as_multipart(hook_gateway, receiver, tmp_path, via):
    sent = send_every(hook_gateway, tmp_path, via, "hook", {datatype: new_dest() for datatype, *_ in SAMPLES})
    for item, got in arrivals(sent, receiver):
        report = item.report
        assert got["media"]["verified"] is True
        assert got["media"]["webhook_id"] == f"msg_{report['id']}" and report["platform_ids"] == [f"msg_{report['id']}"]
        data = got["fields"]["data"]
        if item.datatype == "text":
            assert got["media"]["content_type"] == "application/json" and got["media"]["verified_by"] == "standardwebhooks"
            assert got["fields"]["type"] == "message.text"
            assert data == {"id": report["id"], "serv": "hook", "dest": item.dest, "datatype": "text", "text": item.content.decode()}
            continue
        assert got["media"]["content_type"] == "multipart/form-data"
        upload = got["files"]["file"]
        assert upload["sha256"] == sha256(item.content) and upload["filename"] == item.upload_name and upload["content_type"] == item.mime
        assert data["caption"] == item.caption and data["datatype"] == item.datatype and data["size"] == len(item.content)


def queue_scripted(gateway, receiver, serv, response, times=1, **extra) -> tuple[str, str]:
    dest = new_dest()
    receiver.script(response, dest=dest, times=times, **extra)
    return gateway.send(b"scripted", serv, dest), dest


def test_410_disables_the_endpoint_misconfigured(hook_gateway, receiver):
    message_id, dest = queue_scripted(hook_gateway, receiver, "hookgone", "gone", times=5)
    report, summaries = wait_attempted(hook_gateway, message_id)
    receiver.wait_for(lambda r: r["dest"] == dest)
    assert report["state"] == "queued" and "disabled this endpoint" in report["last_error"], report
    assert "hookgone" in summaries + json.dumps(settled_drain(hook_gateway))


def test_a_secret_that_is_not_whsec_is_misconfigured(hook_gateway, receiver):
    message_id = hook_gateway.send(b"never signed", "hookbad", new_dest())
    report, _ = wait_attempted(hook_gateway, message_id)
    assert report["state"] == "queued" and "whsec_" in report["last_error"], report


@pytest.mark.parametrize("response", ["too_many", "bad_gateway", "gateway_timeout"])
def test_throttling_answers_are_retried_after_retry_after(hook_gateway, receiver, response):
    message_id, dest = queue_scripted(hook_gateway, receiver, "hook", response, retry_after=1)
    report = hook_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    first, second = receiver.wait_for(lambda r: r["dest"] == dest, count=2)
    assert first["status"] in (429, 502, 504) and second["status"] == 200
    if response != "gateway_timeout":  # 504 carries no Retry-After here
        assert second["t"] - first["t"] >= 0.9


def test_other_5xx_is_retried(hook_gateway, receiver):
    message_id, dest = queue_scripted(hook_gateway, receiver, "hook", "server_error")
    assert hook_gateway.wait_state(message_id)["state"] == "delivered"
    assert [r["status"] for r in receiver.wait_for(lambda r: r["dest"] == dest, count=2)] == [500, 200]


def test_a_dropped_connection_is_retried(hook_gateway, receiver):
    message_id, dest = queue_scripted(hook_gateway, receiver, "hook", "drop")
    assert hook_gateway.wait_state(message_id)["state"] == "delivered"
    assert [r["status"] for r in receiver.wait_for(lambda r: r["dest"] == dest, count=2)] == [0, 200]


def test_other_4xx_fails(hook_gateway, receiver):
    message_id, _ = queue_scripted(hook_gateway, receiver, "hook", "bad_request")
    report = hook_gateway.wait_state(message_id)
    assert report["state"] == "failed" and "HTTP 400" in report["last_error"]


def test_the_receiver_really_checks_the_signature(hook_gateway, receiver):
    receiver.configure(secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")  # another secret: nothing verifies
    try:
        dest = new_dest()
        report = hook_gateway.wait_state(hook_gateway.send(b"signed with the wrong key", "hook", dest))
        assert report["state"] == "failed" and "HTTP 401" in report["last_error"]
        [got] = receiver.wait_for(lambda r: r["dest"] == dest)
        assert got["media"]["verified"] is False and "signature" in got["media"]["error"].lower()
    finally:
        receiver.reset()
