"""Shared fixtures: platform emulators, and a real multimsg runner wired to them.

- ``telegram`` / ``whatsapp``: one emulator process per test session, reset
  before each test that uses it.
- ``gateway_env``: the environment that points multimsg at the emulators.
- ``gateway``: a fresh ``local_runner.py`` process with its own data folder.
  ``make_gateway(**env)`` starts more (or differently configured) ones.

Under ``CI=true`` nothing skips for a missing tool or privilege: ``require``
fails the test instead, and any other skip fails too unless the test is marked
``ci_may_skip`` (a skip that is legitimately conditional), so a green CI run
means every test ran.

Every runner gets a copy of one pre-generated key pair: RSA-3072 generation
costs about a second, and the key's origin is not what these tests test
(tests/test_key.py checks generation itself).
"""

from __future__ import annotations

import base64
import compileall
import os
import shutil
from pathlib import Path

import pytest

from tests.emulators import TelegramEmulator, WhatsAppEmulator
from tests.gatewayproc import Gateway
from tests.services_support import emulator_env

__all__ = ["require", "require_tool", "in_ci"]

ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require(condition: object, reason: str) -> None:
    """Skip the test unless ``condition`` holds; under ``CI=true``, fail it instead."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, why: str) -> str:
    """The path of command ``name``, or skip (fail under CI) saying what it is for."""
    path = shutil.which(name)
    require(path, f"{name} is not installed ({why})")
    assert path is not None
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "ci_may_skip(reason): this test may skip under CI=true (legitimately conditional)")
    if not hasattr(config, "workerinput"):  # once, in the process that hands out the tests
        # The suite starts some 500 runners and CLI calls, each importing multimsg afresh. Where
        # PYTHONDONTWRITEBYTECODE is set (as in some CI images) no import caches its bytecode, and
        # each of them compiled the whole package again: 0.66 s of imports against 0.44 s compiled.
        compileall.compile_dir(ROOT / "multimsg", quiet=1)
        compileall.compile_dir(ROOT / "tests", quiet=1, maxlevels=0)


# The longest modules first (seconds each in a CI run, most first): with ``--dist loadfile`` each module runs whole
# on one worker, handed out in collection order, and a long module handed out last keeps one core busy alone
# at the end. Longest first, the two workers finish close together. The rest keep their order.
LONGEST_FIRST = ("test_shared_engine", "test_redis_shared", "test_schemathesis", "test_receipts_callbacks", "test_drain",
                 "test_crash", "test_workers", "test_redis_e2e", "test_services_matrix", "test_cli", "test_schedule_cancel")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: within a module, and for the rest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("ci_may_skip") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test skipped ({reason}); use tests.conftest.require, or mark it ci_may_skip"


# Every process the tests start that uses the Redis backend needs the seal of the server keys kept there;
# one throwaway value for the session (tests of a missing or wrong seal override it).
os.environ.setdefault("MULTIMSG_KEY_SEAL", base64.b64encode(b"multimsg tests: not a secret :-)").decode())


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
def gateway_env(telegram, whatsapp, tmp_path_factory) -> dict[str, str]:
    return {
        **emulator_env(telegram, whatsapp),
        "MULTIMSG_STORAGE_KEY_FILE": str(tmp_path_factory.mktemp("storage-key") / "storage-keys"),  # outside any data folder
        "MULTIMSG_DRAIN_INTERVAL": "0",
        "MULTIMSG_RETRY_BASE": "0.05",
        "MULTIMSG_READ_TIMEOUT": "3",
        "MULTIMSG_REPORT_GRACE": "0",  # a reported final state is archived at the next /cons (tests of the grace set their own)
    }


@pytest.fixture(scope="session")
def server_keys(tmp_path_factory) -> Path:
    """One key pair for the session's runners (made by the real code path)."""
    from multimsg.crypto import ServerKeys
    from multimsg.layout import Layout

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
