"""Configuration from a TOML file (MULTIMSG_CONFIG, or multimsg.toml in the data folder); the environment wins."""

from __future__ import annotations

import json

from tests.test_cli import multimsg

TOML = """
drain_interval = 0.1
key_grace = 60

[telegram]
token = "{token}"
api_url = "{url}"

[retry]
base = 0.05

[mystery]
setting = 1
"""


def test_a_runner_takes_its_settings_from_multimsg_toml_in_the_data_folder(make_gateway, telegram, tmp_path):
    home = tmp_path / "from-toml"
    home.mkdir()
    (home / "multimsg.toml").write_text(TOML.format(token=telegram.token, url=telegram.url))
    (home / "multimsg.toml").chmod(0o600)
    # The fixture's environment names the emulator; blank it so only the file can.
    gateway = make_gateway(home=home, env={"MULTIMSG_TELEGRAM_TOKEN": "", "MULTIMSG_TELEGRAM_API_URL": "", "MULTIMSG_DRAIN_INTERVAL": ""})
    message_id = gateway.send(b"configured by file", "telegram", "61")
    assert gateway.wait_state(message_id, drain=False)["state"] == "delivered"  # the file's drain_interval runs the timer
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "configured by file"


def test_config_command_shows_sources_masks_secrets_and_names_unknown_keys(telegram, tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text(TOML.format(token=telegram.token, url=telegram.url))
    path.chmod(0o644)
    env = {"MULTIMSG_CONFIG": str(path), "MULTIMSG_HOME": str(tmp_path / "home"), "MULTIMSG_RETRY_BASE": "7"}
    result = multimsg("config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    settings = shown["settings"]
    assert shown["file"] == str(path) and shown["file_state"] == "found"
    assert settings["MULTIMSG_TELEGRAM_TOKEN"] == {"value": "******** (set)", "source": "file"}
    assert settings["MULTIMSG_TELEGRAM_API_URL"] == {"value": telegram.url, "source": "file"}
    assert settings["MULTIMSG_RETRY_BASE"] == {"value": "7.0", "source": "environment"}  # the environment wins
    assert settings["MULTIMSG_KEY_GRACE"] == {"value": "60.0", "source": "file"}
    assert settings["MULTIMSG_DRAIN_TOKEN"] == {"value": None, "source": "default"}
    assert shown["unknown"] == ["MULTIMSG_MYSTERY_SETTING"]
    errors = result.stderr.decode()
    assert "MULTIMSG_MYSTERY_SETTING is not a setting multimsg reads" in errors
    assert f"chmod 600 {path}" in errors  # it holds a token and others can read it
    assert telegram.token not in result.stdout.decode() + errors

    text = multimsg("config", env=env).stdout.decode()
    assert f"# config file: {path} (found)" in text and telegram.token not in text


def test_a_missing_or_broken_config_file_is_one_clear_line(tmp_path):
    missing = multimsg("config", env={"MULTIMSG_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == f"MULTIMSG_CONFIG: no such file: {tmp_path / 'nope.toml'}"
    (tmp_path / "bad.toml").write_text("drain_interval = = 3\n")
    broken = multimsg("config", env={"MULTIMSG_CONFIG": str(tmp_path / "bad.toml")})
    assert broken.returncode == 1
    assert broken.stderr.decode().startswith(f"{tmp_path / 'bad.toml'}: not valid TOML")
