"""Microsoft Teams Workflows webhooks: texts as Adaptive Cards, files refused at /msg, and one
test per row of the outcome table in ``multimsg/services/teams.py``."""

from __future__ import annotations

import json

import pytest

from tests import media
from tests.emulators import TeamsEmulator
from tests.native_support import cli_send, settled_drain, start_gateway, wait_attempted


@pytest.fixture(scope="module")
def teams():
    with TeamsEmulator().start() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def fresh(teams):
    teams.reset()


@pytest.fixture(scope="module")
def teams_gateway(tmp_path_factory, server_keys, teams):
    env = {"MULTIMSG_TEAMS_KIND": "teams", "MULTIMSG_TEAMS_URL": teams.url,
           "MULTIMSG_TEAMSX_KIND": "teams", "MULTIMSG_TEAMSX_URL": teams.url.replace("sig=", "sig=wrong"),
           "MULTIMSG_TEAMSNF_KIND": "teams", "MULTIMSG_TEAMSNF_URL": teams.url.replace("/workflows/", "/workflows/nope")}
    runner = start_gateway(tmp_path_factory, server_keys, env, "teams")
    yield runner
    runner.stop()


def test_a_text_arrives_as_an_adaptive_card_in_parts(teams_gateway, teams):
    text = ("palabra " * 1000).strip()  # 7999 characters: 2 cards
    report = teams_gateway.wait_state(teams_gateway.send(text.encode(), "teams", "-"))
    assert report["state"] == "delivered", report
    sent = teams.wait_for(count=2)
    assert all(r["status"] == 202 and r["json"]["attachments"][0]["content"]["version"] == "1.4" for r in sent)
    assert " ".join(t for r in sent for t in r["fields"]["texts"]).split() == text.split()
    assert len(report["platform_ids"]) == 2


@pytest.mark.parametrize("datatype, build", [("image", media.png), ("document", media.pdf), ("voice", media.ogg_opus)])
def test_files_are_refused_at_msg_with_the_reason(teams_gateway, datatype, build):
    response = teams_gateway.msg(id=teams_gateway.upload_id(build()), serv="teams", dest="-", type=datatype)
    assert response.status_code == 400
    assert f"teams does not send type '{datatype}'; it sends: text" in response.text


def test_dest_is_the_workflows_channel(teams_gateway):
    response = teams_gateway.msg(id=teams_gateway.upload_id(b"hola"), serv="teams", dest="19:abc@thread.tacv2", type="text")
    assert response.status_code == 400 and "'-'" in response.text


def scripted(gateway, teams, response, **extra) -> str:
    teams.script(response, **extra)
    return gateway.send(b"scripted", "teams", "-")


def test_429_waits_for_retry_after(teams_gateway, teams):
    message_id = scripted(teams_gateway, teams, "rate_limited", retry_after=1)
    assert teams_gateway.wait_state(message_id)["state"] == "delivered"
    first, second = teams.wait_for(count=2)
    assert first["status"] == 429 and second["status"] == 202 and second["t"] - first["t"] >= 0.9


@pytest.mark.parametrize("response", ["server_error", "bad_gateway", "drop"])
def test_5xx_and_lost_connections_are_retried(teams_gateway, teams, response):
    message_id = scripted(teams_gateway, teams, response)
    assert teams_gateway.wait_state(message_id)["state"] == "delivered"
    assert teams.wait_for(count=2)[-1]["status"] == 202


@pytest.mark.parametrize("serv, status", [("teamsx", 401), ("teamsnf", 404)])
def test_a_refused_workflow_url_is_misconfigured(teams_gateway, teams, serv, status):
    message_id = teams_gateway.send(b"wrong url", serv, "-")
    report, summaries = wait_attempted(teams_gateway, message_id)
    assert report["state"] == "queued" and f"HTTP {status}" in report["last_error"], report
    assert serv in summaries + json.dumps(settled_drain(teams_gateway))


def test_a_refused_card_fails(teams_gateway, teams):
    report = teams_gateway.wait_state(scripted(teams_gateway, teams, "bad_request"))
    assert report["state"] == "failed" and "HTTP 400" in report["last_error"] and "not valid" in report["last_error"]


def test_the_cli_sends_to_teams(teams_gateway, teams, tmp_path):
    result = cli_send(teams_gateway, tmp_path, "hola, equipo".encode(), "teams", "-", name="hola.txt")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "delivered"
    assert teams.wait_for()[0]["fields"]["texts"] == ["hola, equipo"]


def test_the_cli_is_refused_a_file_with_the_reason(teams_gateway, teams, tmp_path):
    result = cli_send(teams_gateway, tmp_path, media.png(), "teams", "-", "--type", "image", name="shot.png")
    assert result.returncode != 0 and "teams does not send type 'image'; it sends: text" in result.stderr.decode(), result
    assert teams.received() == []
