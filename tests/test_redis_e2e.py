"""Two real gateway processes sharing one queue through a real redis-server.

Each runner has its own, empty data folder and the same
``MULTIMSG_BACKEND=redis://...``: a message uploaded and queued on runner A
is drained and reported by runner B, and delivered once on the Telegram
emulator. These upload plain content; encrypted uploads across runners (the
key pairs shared through Redis, sealed with ``MULTIMSG_KEY_SEAL``) are
``tests/test_redis_shared.py``.

Also: with redis-server stopped, ``/msg`` answers 503 with a reason (not
500); once it is back, the same runner works again without a restart.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.gatewayproc import Gateway, free_port
from tests.redis_support import RedisServer, missing_redis, redis_server, redis_url  # noqa: F401  (fixtures)

SEAL = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64: the server keys are sealed with it in Redis


@pytest.fixture
def runners(tmp_path, gateway_env, redis_url):
    started: list[Gateway] = []

    def start(name: str, url: str = redis_url) -> Gateway:
        runner = Gateway(tmp_path / name, {**gateway_env, "MULTIMSG_BACKEND": url, "MULTIMSG_KEY_SEAL": SEAL}).start()  # an empty data folder
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def test_a_message_queued_on_one_runner_is_delivered_by_another(runners, telegram):
    a, b = runners("a"), runners("b")
    data_id = a.upload_id(b"hola desde A", filename="t.txt")
    assert b.upload(b"x").status_code == 200  # B works on its own too
    queued = a.msg(id=data_id, serv="telegram", dest="4242", type="text")
    assert queued.status_code == 200, queued.text
    message_id = queued.text
    assert b.cons(message_id).text == "queued"  # B sees A's message

    summary = b.drain()
    assert (summary["claimed"], summary["delivered"]) == (1, 1)
    [sent] = telegram.wait_for(count=1)
    assert (str(sent["dest"]), sent["fields"]["text"]) == ("4242", "hola desde A")
    assert a.drain()["claimed"] == 0  # delivered once: nothing left for A
    assert b.cons(message_id).text == "delivered"
    assert a.cons(message_id).status_code == 404  # reported and archived (no grace in these tests): for both runners


def test_redis_down_is_503_with_a_reason_and_back_up_works_again(runners, telegram):
    binary = shutil.which("redis-server")
    if binary is None:
        missing_redis("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="multimsg-redis-") as folder:
        server = RedisServer(binary, Path(folder), port=free_port()).start()  # its own server: this test stops it
        try:
            a = runners("a", url=server.url + "/0")
            data_id = a.upload_id(b"antes", filename="t.txt")
            server.stop()
            down = a.msg(id=data_id, serv="telegram", dest="1", type="text")
            assert down.status_code == 503, down.text
            assert "shared store is unreachable" in down.text
            assert a.upload(b"x").status_code == 503
            for path in ("/cons", "/drain"):
                answer = a.http.post(a.url + path, data={"id": "A" * 16}, timeout=30)
                assert answer.status_code == 503 and "unreachable" in answer.text, (path, answer.status_code, answer.text)

            server.start()  # the same port; an empty Redis (no persistence in tests): upload again
            message_id = a.send(b"otra vez", "telegram", "7", filename="t.txt")
            assert a.wait_state(message_id)["state"] == "delivered"
            assert telegram.wait_for(count=1)[0]["fields"]["text"] == "otra vez"
        finally:
            server.stop()
