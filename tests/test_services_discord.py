"""Discord webhooks end to end: every datatype through a real runner (by HTTP and by the CLI) to the Discord emulator,
and one test per row of the outcome table in ``multimsg/services/discord.py``."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.emulators import DiscordEmulator
from tests.native_support import SAMPLES, VIA, arrivals, send_every, settled_drain, start_gateway, wait_attempted
from tests.services_support import sha256

_threads = itertools.count(1_100_000_000_000_000_001)


def new_thread() -> str:
    return str(next(_threads))


@pytest.fixture(scope="module")
def discord():
    with DiscordEmulator().start() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def fresh(discord):
    discord.reset()


@pytest.fixture(scope="module")
def discord_gateway(tmp_path_factory, server_keys, discord):
    env = {"MULTIMSG_DISCORD1_KIND": "discord", "MULTIMSG_DISCORD1_WEBHOOK_URL": discord.url, "MULTIMSG_DISCORD1_DEST_INTERVAL": "0",
           "MULTIMSG_DISCORDX_KIND": "discord", "MULTIMSG_DISCORDX_WEBHOOK_URL": discord.url.rsplit("/", 1)[0] + "/wrong-token"}
    runner = start_gateway(tmp_path_factory, server_keys, env, "discord")
    yield runner
    runner.stop()


def test_a_long_text_goes_as_parts_of_2000_characters_to_the_channel(discord_gateway, discord):
    text = ("palabra " * 600).strip()  # 4799 characters: 3 parts
    report = discord_gateway.wait_state(discord_gateway.send(text.encode(), "discord1", "-"))
    assert report["state"] == "delivered", report
    sent = discord.wait_for(lambda r: r["dest"] == "-", count=3)
    parts = [r["fields"]["content"] for r in sent]
    assert all(len(part) <= 2000 for part in parts) and " ".join(parts).split() == text.split()
    assert all(r["media"]["wait"] and r["fields"]["allowed_mentions"] == {"parse": []} for r in sent)
    assert report["platform_ids"] == [r["response"]["id"] for r in sent]


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_end_to_end_files_as_files0_with_payload_json(discord_gateway, discord, tmp_path, via):
    sent = send_every(discord_gateway, tmp_path, via, "discord1", {datatype: new_thread() for datatype, *_ in SAMPLES})
    for item, record in arrivals(sent, discord):
        assert record["media"]["wait"] and item.report["platform_ids"] == [record["response"]["id"]]
        if item.datatype == "text":
            assert record["fields"]["content"] == item.content.decode() and not record["files"]
            continue
        upload = record["files"]["files[0]"]
        assert upload["sha256"] == sha256(item.content) and upload["filename"] == item.upload_name and upload["content_type"] == item.mime
        assert record["fields"]["content"] == item.caption
        assert record["fields"]["attachments"] == [{"id": 0, "filename": item.upload_name}]


def test_a_file_over_10_mib_is_refused_at_msg(discord_gateway):
    data_id = discord_gateway.upload_id(b"%PDF-1.4\n" + b"0" * (10 * 1024 * 1024))
    response = discord_gateway.msg(id=data_id, serv="discord1", dest="-", type="document")
    assert response.status_code == 413, response.text


def scripted(gateway, discord, response, **extra) -> tuple[str, str]:
    thread = new_thread()
    discord.script(response, dest=thread, **extra)
    return gateway.send(b"scripted", "discord1", thread), thread


@pytest.mark.parametrize("response", ["rate_limited", "rate_limited_body_only", "rate_limited_header_only"])
def test_429_waits_for_retry_after_from_the_body_or_the_header(discord_gateway, discord, response):
    message_id, thread = scripted(discord_gateway, discord, response, retry_after=1.2)
    assert discord_gateway.wait_state(message_id)["state"] == "delivered"
    first, second = discord.wait_for(lambda r: r["dest"] == thread, count=2)
    assert first["status"] == 429 and second["status"] == 200
    assert second["t"] - first["t"] >= 1.1


@pytest.mark.parametrize("response", ["server_error", "bad_gateway", "drop"])
def test_5xx_and_lost_connections_are_retried(discord_gateway, discord, response):
    message_id, thread = scripted(discord_gateway, discord, response)
    assert discord_gateway.wait_state(message_id)["state"] == "delivered"
    assert discord.wait_for(lambda r: r["dest"] == thread, count=2)[-1]["status"] == 200


@pytest.mark.parametrize("response, words", [("unknown_channel", "Unknown Channel"), ("invalid_form", "Invalid Form Body"),
                                             ("too_large", "Request entity too large")])
def test_refusals_of_the_message_fail(discord_gateway, discord, response, words):
    message_id, _ = scripted(discord_gateway, discord, response)
    report = discord_gateway.wait_state(message_id)
    assert report["state"] == "failed" and words in report["last_error"], report


def test_a_refused_webhook_token_is_misconfigured(discord_gateway, discord):
    message_id = discord_gateway.send(b"wrong token", "discordx", "-")
    report, summaries = wait_attempted(discord_gateway, message_id)
    assert report["state"] == "queued" and "Invalid Webhook Token" in report["last_error"], report
    assert "discordx" in summaries + json.dumps(settled_drain(discord_gateway))
    [sent] = discord.wait_for()
    assert sent["status"] == 401


def test_an_unknown_webhook_is_misconfigured(tmp_path_factory, server_keys, discord):
    gone = discord.url.replace(discord.url.split("/")[-2], "100000000000000001")
    runner = start_gateway(tmp_path_factory, server_keys, {"MULTIMSG_D2_KIND": "discord", "MULTIMSG_D2_WEBHOOK_URL": gone}, "discord-gone")
    try:
        message_id = runner.send(b"deleted webhook", "d2", "-")
        report, _ = wait_attempted(runner, message_id)
        assert report["state"] == "queued" and "Unknown Webhook" in report["last_error"], report
    finally:
        runner.stop()
