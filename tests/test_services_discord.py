"""Discord webhooks end to end: every datatype through a real runner to the Discord emulator,
and one test per row of the outcome table in ``multimsg/services/discord.py``."""

from __future__ import annotations

import itertools
import json

import pytest

from tests import media
from tests.emulators import DiscordEmulator
from tests.native_support import FILES, cli_send, settled_drain, start_gateway, wait_attempted
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


@pytest.mark.parametrize("datatype, build, upload_name, mime", FILES)
def test_every_file_datatype_goes_as_files0_with_payload_json_to_a_thread(discord_gateway, discord, datatype, build, upload_name, mime):
    content, thread = build(), new_thread()
    message_id = discord_gateway.send(content, "discord1", thread, datatype, filename=upload_name, caption=f"{datatype} ✓")
    report = discord_gateway.wait_state(message_id)
    assert report["state"] == "delivered", report
    [sent] = discord.wait_for(lambda r: r["dest"] == thread)
    upload = sent["files"]["files[0]"]
    assert upload["sha256"] == sha256(content) and upload["filename"] == upload_name and upload["content_type"] == mime
    assert sent["fields"]["content"] == f"{datatype} ✓"
    assert sent["fields"]["attachments"] == [{"id": 0, "filename": upload_name}]
    assert report["platform_ids"] == [sent["response"]["id"]]


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


def test_the_cli_sends_to_discord(discord_gateway, discord, tmp_path):
    thread = new_thread()
    result = cli_send(discord_gateway, tmp_path, media.png(), "discord1", thread, "--caption", "from the CLI", name="cli.png")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "delivered"
    [sent] = discord.wait_for(lambda r: r["dest"] == thread)
    assert sent["files"]["files[0]"]["sha256"] == sha256(media.png()) and sent["fields"]["content"] == "from the CLI"
