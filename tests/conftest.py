"""Shared fixtures: platform emulators, and a real multimsg runner wired to them.

- ``telegram`` / ``whatsapp``: one emulator process per test session, reset
  before each test that uses it.
- ``gateway_env``: the environment that points multimsg at the emulators.
- ``gateway``: a fresh ``local_runner.py`` process with its own data folder.
  ``make_gateway(**env)`` starts more (or differently configured) ones.

Every runner gets a copy of one pre-generated key pair: RSA-3072 generation
costs about a second, and the key's origin is not what these tests test
(tests/test_key.py checks generation itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.emulators import TelegramEmulator, WhatsAppEmulator
from tests.gatewayproc import Gateway
from tests.services_support import emulator_env


@pytest.fixture(scope="session")
def telegram_server():
    with TelegramEmulator().start() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def whatsapp_server():
    with WhatsAppEmulator().start() as emulator:
        yield emulator


@pytest.fixture
def telegram(telegram_server):
    telegram_server.reset()
    return telegram_server


@pytest.fixture
def whatsapp(whatsapp_server):
    whatsapp_server.reset()
    return whatsapp_server


@pytest.fixture
def gateway_env(telegram, whatsapp) -> dict[str, str]:
    return {
        **emulator_env(telegram, whatsapp),
        "MULTIMSG_DRAIN_INTERVAL": "0",
        "MULTIMSG_RETRY_BASE": "0.05",
        "MULTIMSG_READ_TIMEOUT": "3",
    }


@pytest.fixture(scope="session")
def server_keys(tmp_path_factory) -> Path:
    """One key pair for the session's runners (made by the real code path)."""
    from multimsg.crypto import ServerKeys
    from multimsg.queue.layout import Layout

    home = tmp_path_factory.mktemp("keys-home")
    assert ServerKeys(Layout(home)).public_pem  # made on first use
    return home / "keys"


@pytest.fixture
def make_gateway(tmp_path, gateway_env, server_keys):
    started: list[Gateway] = []

    def make(name: str = "home", env: dict[str, str] | None = None, home: Path | None = None) -> Gateway:
        home = home or tmp_path / name
        if not (home / "keys").exists():
            shutil.copytree(server_keys, home / "keys")
        runner = Gateway(home, {**gateway_env, **(env or {})}).start()
        started.append(runner)
        return runner

    yield make
    for runner in started:
        runner.stop()


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()
