"""Several accounts per platform: serv names a configured instance, its kind picks the module.

Instances come from ``[services.NAME]`` in the configuration file and from
``MULTIMSG_<NAME>_KIND`` (and any ``MULTIMSG_<NAME>_<KEY>``) in the environment,
which wins; each sends with its own credentials, and /msg, /health and
``multimsg config`` name them.
"""

from __future__ import annotations

import json

import pytest

from tests.emulators import TelegramEmulator
from tests.test_cli import multimsg

OTHER_TOKEN = "987654:SECOND-BOT"


@pytest.fixture(scope="module")
def second_bot():
    with TelegramEmulator(token=OTHER_TOKEN).start() as emulator:
        yield emulator


def write_config(home, second_bot) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "multimsg.toml").write_text(f"""
[services.tg2]
kind = "telegram"
token = "999:WRONG-IN-THE-FILE"
api_url = "{second_bot.url}"
dest_interval = 0

[services.box2]
kind = "outbox"
folder = "{home / 'second-outbox'}"
""")
    (home / "multimsg.toml").chmod(0o600)


def test_instances_of_one_kind_send_with_their_own_settings(make_gateway, telegram, second_bot, tmp_path):
    second_bot.reset()
    home = tmp_path / "instances"
    write_config(home, second_bot)
    gateway = make_gateway(home=home, env={"MULTIMSG_TG2_TOKEN": OTHER_TOKEN, "MULTIMSG_OB3_KIND": "outbox"})  # the environment wins

    first = gateway.send(b"through the first bot", "telegram", "71")
    second = gateway.send(b"through the second bot", "tg2", "72")
    assert gateway.wait_state(first)["state"] == "delivered"
    assert gateway.wait_state(second)["state"] == "delivered"
    assert [r["fields"]["text"] for r in telegram.received()] == ["through the first bot"]
    assert [r["fields"]["text"] for r in second_bot.received()] == ["through the second bot"]

    boxed = gateway.wait_state(gateway.send(b"second outbox", "box2", "eve"))
    assert (home / "second-outbox" / boxed["platform_ids"][0]).read_bytes() == b"second outbox"
    env_only = gateway.wait_state(gateway.send(b"env-only instance", "ob3", "eve"))
    assert (home / "outbox" / env_only["platform_ids"][0]).read_bytes() == b"env-only instance"

    response = gateway.msg(id=gateway.upload_id(b"x"), serv="signal", dest="1", type="text")
    assert response.status_code == 400
    assert "known services: box2, ob3, outbox, telegram, tg2, wpp1" in response.text

    health = gateway.http.get(gateway.url + "/health").json()
    assert health["kinds"] == {"box2": "outbox", "ob3": "outbox", "outbox": "outbox", "telegram": "telegram", "tg2": "telegram", "wpp1": "whatsapp"}
    assert health["services"]["tg2"] is True

    shown = multimsg("config", "--json", env={"MULTIMSG_HOME": str(home), "MULTIMSG_TG2_TOKEN": OTHER_TOKEN})
    assert shown.returncode == 0, shown.stderr
    services = json.loads(shown.stdout)["services"]
    assert services["tg2"]["kind"] == "telegram" and services["tg2"]["configured"] is True
    assert services["tg2"]["settings"]["MULTIMSG_TG2_TOKEN"] == "******** (set)"
    assert services["tg2"]["settings"]["MULTIMSG_TG2_API_URL"] == second_bot.url
    assert services["wpp1"]["kind"] == "whatsapp"
    assert OTHER_TOKEN not in shown.stdout.decode() and "WRONG-IN-THE-FILE" not in shown.stdout.decode()
    assert json.loads(shown.stdout)["unknown"] == []  # every key of [services.*] is a setting multimsg reads


def test_an_instance_without_its_credentials_is_refused_at_msg(make_gateway, tmp_path):
    gateway = make_gateway(env={"MULTIMSG_HOOK9_KIND": "webhook"})
    response = gateway.msg(id=gateway.upload_id(b"x"), serv="hook9", dest="-", type="text")
    assert response.status_code == 503 or response.status_code == 400, response.text
    assert "MULTIMSG_HOOK9_URL" in response.text and "MULTIMSG_HOOK9_SECRET" in response.text


def test_an_instance_may_not_shadow_a_global_setting(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "multimsg.toml").write_text('[services.drain]\nkind = "outbox"\n')
    result = multimsg("config", env={"MULTIMSG_HOME": str(home)})
    assert result.returncode == 1
    assert "service instance 'drain': the name is taken by the setting MULTIMSG_DRAIN_" in result.stderr.decode()


def test_the_openapi_description_names_every_kind_and_takes_any_instance_name():
    from multimsg.services import KINDS
    from tests.gatewayproc import ROOT

    spec = json.loads((ROOT / "multimsg" / "openapi.json").read_text())
    bodies = [media["schema"] for media in spec["paths"]["/msg"]["post"]["requestBody"]["content"].values()]
    for schema in bodies:
        serv, dest = schema["properties"]["serv"], schema["properties"]["dest"]
        assert "enum" not in serv and "[services.NAME]" in serv["description"]
        assert all(kind in serv["description"] and f"{kind}: " in dest["description"] for kind in KINDS), serv
