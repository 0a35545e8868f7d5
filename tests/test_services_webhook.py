"""The signed webhook: JSON texts, multipart files, Standard Webhooks signatures checked by the
``standardwebhooks`` package in a real receiver process, one test per row of the outcome table
in ``multimsg/services/webhook.py``."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.conftest import require
from tests.emulators import WebhookReceiver
from tests.native_support import FILES, cli_send, settled_drain, start_gateway, wait_attempted
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


def test_a_text_arrives_as_signed_json(hook_gateway, receiver):
    dest = new_dest()
    message_id = hook_gateway.send("Hola ✓".encode(), "hook", dest)
    report = hook_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    [got] = receiver.wait_for(lambda r: r["dest"] == dest)
    assert got["media"]["verified"] is True and got["media"]["content_type"] == "application/json"
    assert got["media"]["verified_by"] == "standardwebhooks"
    assert got["media"]["webhook_id"] == f"msg_{message_id}" and report["platform_ids"] == [f"msg_{message_id}"]
    assert got["fields"]["type"] == "message.text"
    assert got["fields"]["data"] == {"id": message_id, "serv": "hook", "dest": dest, "datatype": "text", "text": "Hola ✓"}


@pytest.mark.parametrize("datatype, build, upload_name, mime", FILES)
def test_every_file_datatype_arrives_signed_as_multipart(hook_gateway, receiver, datatype, build, upload_name, mime):
    content, dest = build(), new_dest()
    message_id = hook_gateway.send(content, "hook", dest, datatype, filename=upload_name, caption="with a caption")
    assert hook_gateway.wait_state(message_id)["state"] == "delivered"
    [got] = receiver.wait_for(lambda r: r["dest"] == dest)
    assert got["media"]["verified"] is True and got["media"]["content_type"] == "multipart/form-data"
    upload = got["files"]["file"]
    assert upload["sha256"] == sha256(content) and upload["filename"] == upload_name and upload["content_type"] == mime
    data = got["fields"]["data"]
    assert data["caption"] == "with a caption" and data["datatype"] == datatype and data["size"] == len(content)


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


def test_the_cli_sends_through_the_webhook(hook_gateway, receiver, tmp_path):
    dest = new_dest()
    result = cli_send(hook_gateway, tmp_path, b"from the command line", "hook", dest, name="note.txt")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "delivered"
    [got] = receiver.wait_for(lambda r: r["dest"] == dest)
    assert got["media"]["verified"] and got["fields"]["data"]["text"] == "from the command line"


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
