"""Slack's Web API end to end (by HTTP and by the CLI): texts by chat.postMessage, files by the external upload flow,
and one test per row of the outcome table in ``multimsg/services/slack.py``."""

from __future__ import annotations

import itertools
import json

import pytest

from tests import media
from tests.emulators import SlackEmulator
from tests.native_support import SAMPLES, VIA, send_every, settled_drain, start_gateway, wait_attempted
from tests.services_support import sha256

_channels = itertools.count(10_000_001)


def new_channel() -> str:
    return f"C{next(_channels)}X"


@pytest.fixture(scope="module")
def slack():
    with SlackEmulator().start() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def fresh(slack):
    slack.reset()


@pytest.fixture(scope="module")
def slack_gateway(tmp_path_factory, server_keys, slack):
    env = {"MULTIMSG_SLACK1_KIND": "slack", "MULTIMSG_SLACK1_TOKEN": slack.token, "MULTIMSG_SLACK1_API_URL": slack.url,
           "MULTIMSG_SLACK1_DEST_INTERVAL": "0"}
    for name in ("slackauth", "slackgone", "slackidle"):  # a misconfigured instance waits 60 s for its next probe: one per test
        env.update({f"MULTIMSG_{name.upper()}_KIND": "slack", f"MULTIMSG_{name.upper()}_TOKEN": slack.token,
                    f"MULTIMSG_{name.upper()}_API_URL": slack.url})
    runner = start_gateway(tmp_path_factory, server_keys, env, "slack")
    yield runner
    runner.stop()


def test_a_long_text_goes_by_chat_post_message_in_parts(slack_gateway, slack):
    channel, text = new_channel(), ("palabra " * 1000).strip()
    report = slack_gateway.wait_state(slack_gateway.send(text.encode(), "slack1", channel))
    assert report["state"] == "delivered", report
    sent = slack.wait_for(lambda r: r["dest"] == channel, count=2)
    assert all(r["method"] == "chat.postMessage" and len(r["fields"]["text"]) <= 4000 for r in sent)
    assert " ".join(r["fields"]["text"] for r in sent).split() == text.split()
    assert report["platform_ids"] == [r["response"]["ts"] for r in sent]


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_end_to_end_files_through_the_external_upload(slack_gateway, slack, tmp_path, via):
    sent = send_every(slack_gateway, tmp_path, via, "slack1", {datatype: new_channel() for datatype, *_ in SAMPLES})
    for item in sent.values():
        assert item.report["state"] == "delivered", (item.datatype, item.report)
        [posted] = slack.wait_for(lambda r, dest=item.dest: r["dest"] == dest and r["status"] == 200)
        if item.datatype == "text":
            assert posted["method"] == "chat.postMessage" and posted["fields"]["text"] == item.content.decode()
            assert item.report["platform_ids"] == [posted["response"]["ts"]]
            continue
        assert posted["method"] == "files.completeUploadExternal" and posted["fields"]["initial_comment"] == item.caption
        [file_id] = item.report["platform_ids"]
        assert posted["fields"]["files"] == [{"id": file_id, "title": item.upload_name}]
        assert posted["files"]["file"]["sha256"] == sha256(item.content) and posted["files"]["file"]["filename"] == item.upload_name
        [ticket] = slack.wait_for(lambda r, file_id=file_id: r["method"] == "files.getUploadURLExternal" and r["response"]["file_id"] == file_id)
        assert ticket["fields"] == {"filename": item.upload_name, "length": str(len(item.content))}
        [upload] = slack.wait_for(lambda r, file_id=file_id: r["method"] == "upload" and r["dest"] == file_id)
        assert upload["files"]["file"]["sha256"] == sha256(item.content) and upload["files"]["file"]["content_type"] == item.mime


def scripted(gateway, slack, response, serv="slack1", **extra) -> tuple[str, str]:
    channel = new_channel()
    slack.script(response, dest=channel, **extra)
    return gateway.send(b"scripted", serv, channel), channel


@pytest.mark.parametrize("response", ["ratelimited", "ratelimited_200"])
def test_rate_limits_wait_for_retry_after(slack_gateway, slack, response):
    message_id, channel = scripted(slack_gateway, slack, response, retry_after=1)
    assert slack_gateway.wait_state(message_id)["state"] == "delivered"
    first, second = slack.wait_for(lambda r: r["dest"] == channel, count=2)
    assert first["response"]["error"] == "ratelimited" and second["status"] == 200
    assert second["t"] - first["t"] >= 0.9


@pytest.mark.parametrize("response", ["server_error", "bad_gateway", "drop"])
def test_5xx_and_lost_connections_are_retried(slack_gateway, slack, response):
    message_id, channel = scripted(slack_gateway, slack, response)
    assert slack_gateway.wait_state(message_id)["state"] == "delivered"
    assert slack.wait_for(lambda r: r["dest"] == channel, count=2)[-1]["status"] == 200


@pytest.mark.parametrize("response, serv", [("invalid_auth", "slackauth"), ("not_authed", "slackgone"), ("account_inactive", "slackidle")])
def test_refused_credentials_are_misconfigured(slack_gateway, slack, response, serv):
    message_id, _ = scripted(slack_gateway, slack, response, serv=serv)
    report, summaries = wait_attempted(slack_gateway, message_id)
    assert report["state"] == "queued" and response in report["last_error"], report
    assert serv in summaries + json.dumps(settled_drain(slack_gateway))


@pytest.mark.parametrize("response", ["channel_not_found", "not_in_channel", "msg_too_long"])
def test_channel_errors_fail(slack_gateway, slack, response):
    message_id, _ = scripted(slack_gateway, slack, response)
    report = slack_gateway.wait_state(message_id)
    assert report["state"] == "failed" and response in report["last_error"]


@pytest.mark.parametrize("response", ["server_error", "drop"])
def test_a_retry_after_a_failed_completion_completes_the_uploaded_file_without_uploading_again(slack_gateway, slack, response):
    channel, content = new_channel(), media.pdf()
    slack.script(response, dest=channel, method="files.completeUploadExternal")
    report = slack_gateway.wait_state(slack_gateway.send(content, "slack1", channel, "document", filename="acta.pdf"))
    assert report["state"] == "delivered" and report["attempts"] == 1, report
    methods = [r["method"] for r in slack.received()]
    assert methods == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal", "files.completeUploadExternal"], methods
    ticket, _, failed, shared = slack.received()
    assert failed["status"] != 200 and shared["status"] == 200 and shared["dest"] == channel
    assert shared["fields"]["files"] == [{"id": ticket["response"]["file_id"], "title": "acta.pdf"}]
    assert report["platform_ids"] == [ticket["response"]["file_id"]]


def test_a_file_slack_no_longer_has_is_uploaded_again_once(slack):
    from multimsg.config import ServiceConfig
    from multimsg.content import BytesContent
    from multimsg.services.slack import Slack

    service = Slack(ServiceConfig({"token": slack.token, "api_url": slack.url}, read_timeout=2.0))
    channel, content = new_channel(), media.png()
    data = {"id": "K" * 16, "content": BytesContent(content), "dest": channel, "type": "image", "options": {}, "platform_ids": ["FGONE0001"]}
    outcome = service.send(data)  # an earlier attempt uploaded FGONE0001; the emulator never had it
    assert outcome.kind == "delivered", outcome
    assert [r["method"] for r in slack.received()] == ["files.completeUploadExternal", "files.getUploadURLExternal", "upload",
                                                       "files.completeUploadExternal"]
    gone, ticket, _, shared = slack.received()
    assert gone["response"]["error"] == "file_not_found" and shared["status"] == 200
    assert outcome.platform_ids == [ticket["response"]["file_id"]] and shared["files"]["file"]["sha256"] == sha256(content)


def test_a_refused_completion_fails_the_file(slack_gateway, slack):
    channel = new_channel()
    slack.script("not_in_channel", dest=channel, method="files.completeUploadExternal")
    report = slack_gateway.wait_state(slack_gateway.send(media.pdf(), "slack1", channel, "document"))
    assert report["state"] == "failed" and "not_in_channel" in report["last_error"]
