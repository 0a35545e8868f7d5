"""Real gateway processes sharing one queue through a real redis-server.

Each runner has its own, empty data folder and the same
``MULTIMSG_BACKEND=redis://...``: a message uploaded and queued on runner A
is drained and reported by runner B, and delivered once on the Telegram
emulator. The seed's whole flow with each handler (/key, /data, /msg, /cons,
/drain) served by its own ``functions-framework`` process, each with its own
empty data folder: plain and encrypted uploads (the client encrypts with the
key /key gives; every handler opens it with the key pair sealed in Redis), to
the Telegram and the WhatsApp emulators, with the bytes in Redis and on a
local S3 server. Key rotation and replays across runners:
``tests/test_redis_shared.py``.

Also: with redis-server stopped, ``/msg`` answers 503 with a reason (not
500); once it is back, the same runner works again without a restart.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from multimsg.crypto import encrypt_upload
from tests.gatewayproc import Gateway, free_port
from tests.redis_support import RedisServer, missing_redis, redis_server, redis_url  # noqa: F401  (fixtures)
from tests.s3_support import S3_ENV, s3_bucket, s3_server  # noqa: F401  (fixtures)
from tests.test_functions_framework import serve

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


# What each platform's emulator received as the text of a message
TEXT_OF = {"telegram": lambda r: r["fields"]["text"], "wpp1": lambda r: r["json"]["text"]["body"]}
DEST_OF = {"telegram": lambda r: str(r["dest"]), "wpp1": lambda r: r["json"]["to"]}


@pytest.mark.parametrize("blobs", ["redis", "s3"])
def test_the_seeds_flow_with_each_handler_its_own_process_plain_and_encrypted_on_both_platforms(
        request, tmp_path, gateway_env, redis_url, telegram, whatsapp, blobs):
    env = {**gateway_env, "MULTIMSG_BACKEND": redis_url, "MULTIMSG_KEY_SEAL": SEAL, "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0",
           "MULTIMSG_WPP1_DEST_INTERVAL": "0"}
    if blobs == "s3":
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        env.update(S3_ENV, MULTIMSG_BLOBS=f"s3://{bucket}/flow", MULTIMSG_S3_ENDPOINT_URL=server.url)
    emulators = {"telegram": telegram, "wpp1": whatsapp}
    procs = {}
    try:
        for target in ("key", "data", "msg", "cons", "drain"):
            procs[target] = serve(target, tmp_path / target, env)  # each its own, empty data folder
        url = {target: u for target, (_, u) in procs.items()}
        pem = requests.get(url["key"], timeout=10).text
        assert pem.startswith("-----BEGIN PUBLIC KEY-----")
        queued = {}
        for serv, dest in (("telegram", "4545"), ("wpp1", "5491155554545")):
            for encrypted in (False, True):
                text = f"{serv} {'cifrado' if encrypted else 'en claro'}, cada handler en su proceso"
                if encrypted:
                    data, key = encrypt_upload(pem, text.encode())
                    upload = requests.post(url["data"], files={"data": ("t.txt", data), "key": ("key.bin", key)}, timeout=10)
                else:
                    upload = requests.post(url["data"], files={"data": ("t.txt", text.encode())}, timeout=10)
                assert upload.status_code == 200, upload.text
                answer = requests.post(url["msg"], data={"id": upload.text, "serv": serv, "dest": dest + str(int(encrypted)),
                                                         "type": "text"}, timeout=10)
                assert answer.status_code == 200, answer.text
                assert requests.post(url["cons"], data={"id": answer.text}, timeout=10).text == "queued"
                queued[answer.text] = (serv, dest + str(int(encrypted)), text)
        summary = requests.post(url["drain"], timeout=60).json()
        assert summary["delivered"] == len(queued), summary
        for message_id, (serv, dest, text) in queued.items():
            [sent] = emulators[serv].wait_for(lambda r, s=serv, d=dest: DEST_OF[s](r) == d)
            assert TEXT_OF[serv](sent) == text  # decrypted by /drain's process, encrypted for /key's
            assert requests.post(url["cons"], data={"id": message_id}, timeout=10).text == "delivered"
        if blobs == "s3":
            assert server.client().list_objects_v2(Bucket=bucket, Prefix="flow/")["KeyCount"] >= 1  # the bytes went to S3
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()
