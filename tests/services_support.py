"""Shared pieces of the datatype and outcome tests (test_services_*.py, test_datatypes.py, ...).

- ``service_gateway``: one real runner per test module (starting one costs a
  few seconds), wired to the session's emulators with short backoffs and a
  1 s read timeout. Tests reset the emulators through the ``telegram`` /
  ``whatsapp`` fixtures and use their own destinations (``new_chat()``,
  ``new_number()``), so what one test leaves queued never shows up in
  another's records.
- ``emulator_env(telegram, whatsapp)``: the environment that points the service
  classes at the emulators (tests that build a service in-process and call
  ``send`` with a ``pace`` callback set it with ``monkeypatch``).
- ``queue(gateway, content, serv, dest, type, upload_name=..., **fields)``: upload
  then ``/msg`` with optional fields; returns the message id.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil

import pytest

from tests.gatewayproc import Gateway

__all__ = ["service_gateway", "new_chat", "new_number", "queue", "sha256", "emulator_env", "content_env", "module_gateway"]

_chats = itertools.count(700_000_001)
_numbers = itertools.count(5491100000001)


def new_chat() -> str:
    """A private Telegram chat id no other test uses."""
    return str(next(_chats))


def new_number() -> str:
    """A WhatsApp number no other test uses."""
    return str(next(_numbers))


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def emulator_env(telegram, whatsapp) -> dict[str, str]:
    return {
        "MULTIMSG_TELEGRAM_TOKEN": telegram.token,
        "MULTIMSG_TELEGRAM_API_URL": telegram.url,
        "MULTIMSG_WPP1_TOKEN": whatsapp.token,
        "MULTIMSG_WPP1_PHONE_NUMBER_ID": whatsapp.phone_id,
        "MULTIMSG_WPP1_API_URL": whatsapp.url,
    }


def content_env(telegram, whatsapp) -> dict[str, str]:
    """``emulator_env`` with quick retries, a 1 s read timeout, no fsync and no per-recipient spacing."""
    return {
        **emulator_env(telegram, whatsapp),
        "MULTIMSG_DRAIN_INTERVAL": "0",
        "MULTIMSG_RETRY_BASE": "0.05",
        "MULTIMSG_RETRY_CAP": "0.2",
        "MULTIMSG_READ_TIMEOUT": "1",
        "MULTIMSG_FSYNC": "0",
        # No per-recipient spacing (WhatsApp's is 6 s): these tests are about content and answers.
        "MULTIMSG_WPP1_DEST_INTERVAL": "0",
        "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0",
    }


def module_gateway(tmp_path_factory, server_keys, env: dict[str, str]):
    """A runner for one test module (a generator for a module-scoped fixture): started, yielded, stopped."""
    home = tmp_path_factory.mktemp("services") / "home"
    shutil.copytree(server_keys, home / "keys")
    runner = Gateway(home, env).start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def service_gateway(tmp_path_factory, telegram_server, whatsapp_server, server_keys):
    yield from module_gateway(tmp_path_factory, server_keys, content_env(telegram_server, whatsapp_server))


def queue(gateway: Gateway, content: bytes, serv: str, dest: str, type: str, upload_name: str = "data.bin", **fields) -> str:
    """Upload ``content`` (as ``upload_name``) and queue it with the optional ``fields``; returns the message id."""
    data_id = gateway.upload_id(content, filename=upload_name)
    response = gateway.msg(id=data_id, serv=serv, dest=dest, type=type, **fields)
    assert response.status_code == 200, response.text
    return response.text
