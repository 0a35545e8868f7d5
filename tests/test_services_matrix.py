"""Matrix: the client-server API against a real Synapse, and the fault rows against the emulator.

The Synapse tests start a throwaway homeserver (tests/synapse_support.py: generated config,
free loopback port, SQLite), register users through the shared-secret admin API, create rooms,
send through ``multimsg.services.matrix.Matrix`` and read the events back. Synapse
(``matrix-synapse``) is in the test extra, so under CI=true these tests must run.
M_LIMIT_EXCEEDED comes from the real Synapse too (a user whose rate limit the admin API
lowered). Every datatype also goes end to end through a real runner configured by
environment to the real Synapse, by HTTP and by the CLI. Every row of the outcome table goes
through a runner of its own to tests/emulators/matrix.py, which produces on demand what a real
homeserver will not (M_LIMIT_EXCEEDED with a chosen retry_after_ms, 5xx, timeouts, dropped
connections, M_TOO_LARGE, idempotency seen from the server side): upload, /msg, the drain,
then /cons and /drain.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import time
from urllib.parse import quote

import pytest

from multimsg.config import ServiceConfig
from multimsg.content import BytesContent
from multimsg.errors import InvalidInput
from multimsg.services import KINDS
from multimsg.services.matrix import Matrix
from tests.conftest import require
from tests.emulators import MatrixEmulator
from tests.media import ogg_opus, png
from tests.native_support import RETRIES, VIA, assert_gave_up_retrying, assert_held, assert_throttled, instance_env, scripted, send_every, serve

_ids = itertools.count(1)


def new_id() -> str:
    return f"M{next(_ids):015d}"


def message(content: bytes, dest: str, datatype: str = "text", **extra) -> dict:
    return {"id": new_id(), "content": BytesContent(content), "dest": dest, "type": datatype, "options": {}, "platform_ids": [], **extra}


def service(homeserver: str, token: str) -> Matrix:
    return Matrix(ServiceConfig({"homeserver": homeserver, "access_token": token}, read_timeout=2.0))


def test_registered_as_a_kind():
    assert KINDS["matrix"] is Matrix and Matrix.kind == "matrix"


@pytest.mark.parametrize("dest", ["!abc:example.org", "!abc:matrix.example.org:8448", "!Yx1-_2abcdefghijklmnop", "#room:example.org", "#sala_ñ:[::1]:8008"])
def test_dest_formats(dest):
    assert service("http://x", "t").check_dest(dest) == dest


@pytest.mark.parametrize("dest", ["abc:example.org", "#room", "#a/b:example.org", "!abc:exa mple.org", "@user:example.org"])
def test_bad_dests_are_refused(dest):
    with pytest.raises(InvalidInput):
        service("http://x", "t").check_dest(dest)


# -- a real Synapse --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synapse(tmp_path_factory):
    require(importlib.util.find_spec("synapse") is not None, "matrix-synapse is not installed (pip install -e '.[test]')")
    from tests.synapse_support import Synapse

    with Synapse(tmp_path_factory.mktemp("synapse")) as server:
        yield server


@pytest.fixture(scope="module")
def room(synapse):
    """(bot token, room id, alias) for a room the bot created."""
    token = synapse.register("multimsg")
    answer = synapse.client(token, "POST", "/_matrix/client/v3/createRoom", json={"room_alias_name": "avisos", "preset": "private_chat"})
    assert answer.status_code == 200, answer.text
    return token, answer.json()["room_id"], f"#avisos:{synapse.server_name}"


def read_event(synapse, token, room_id, event_id) -> dict:
    answer = synapse.client(token, "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event_id)}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_synapse_text_by_room_id_is_read_back(synapse, room):
    token, room_id, _ = room
    outcome = service(synapse.url, token).send(message("hola, sala ✓".encode(), room_id))
    assert outcome.kind == "delivered", outcome
    event = read_event(synapse, token, room_id, outcome.platform_ids[0])
    assert event["type"] == "m.room.message" and event["content"] == {"msgtype": "m.text", "body": "hola, sala ✓"}


def test_synapse_alias_is_resolved_and_a_retry_is_not_a_duplicate(synapse, room):
    token, room_id, alias = room
    data = message(b"una sola vez", alias)
    first = service(synapse.url, token).send(data)
    again = service(synapse.url, token).send(data)  # the same message id: the same transaction id
    assert first.kind == again.kind == "delivered"
    assert first.platform_ids == again.platform_ids
    assert read_event(synapse, token, room_id, first.platform_ids[0])["room_id"] == room_id


def test_synapse_image_is_uploaded_and_sent_as_m_image(synapse, room):
    token, room_id, _ = room
    image = png()
    outcome = service(synapse.url, token).send(message(image, room_id, "image", filename="foto.png", options={"caption": "mirá"}))
    assert outcome.kind == "delivered", outcome
    content = read_event(synapse, token, room_id, outcome.platform_ids[0])["content"]
    assert content["msgtype"] == "m.image" and content["body"] == "mirá" and content["filename"] == "foto.png"
    assert content["info"] == {"mimetype": "image/png", "size": len(image)}
    server, media_id = content["url"][len("mxc://"):].split("/", 1)
    download = synapse.client(token, "GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")
    assert download.status_code == 200 and hashlib.sha256(download.content).digest() == hashlib.sha256(image).digest()


def test_synapse_voice_is_m_audio_with_the_voice_flag(synapse, room):
    token, room_id, _ = room
    outcome = service(synapse.url, token).send(message(ogg_opus(), room_id, "voice"))
    assert outcome.kind == "delivered", outcome
    content = read_event(synapse, token, room_id, outcome.platform_ids[0])["content"]
    assert content["msgtype"] == "m.audio" and "org.matrix.msc3245.voice" in content


def test_synapse_unknown_token_is_misconfigured(synapse, room):
    _, room_id, _ = room
    outcome = service(synapse.url, "syt_not_a_token").send(message(b"hola", room_id))
    assert outcome.kind == "misconfigured" and "M_UNKNOWN_TOKEN" in outcome.reason


def test_synapse_room_the_bot_is_not_in_fails_forbidden(synapse, room):
    token, _, _ = room
    other = synapse.register("someone-else")
    foreign = synapse.client(other, "POST", "/_matrix/client/v3/createRoom", json={"preset": "private_chat"}).json()["room_id"]
    outcome = service(synapse.url, token).send(message(b"hola", foreign))
    assert outcome.kind == "failed" and "M_FORBIDDEN" in outcome.reason


def test_synapse_unknown_alias_fails_not_found(synapse, room):
    token, _, _ = room
    outcome = service(synapse.url, token).send(message(b"hola", f"#no-such-room:{synapse.server_name}"))
    assert outcome.kind == "failed" and "M_NOT_FOUND" in outcome.reason


def test_synapse_limit_exceeded_is_a_throttle_with_its_retry_after(synapse):
    admin = synapse.register("operator", admin=True)
    slow = synapse.register("slow-bot")
    user_id = f"@slow-bot:{synapse.server_name}"
    room_id = synapse.client(slow, "POST", "/_matrix/client/v3/createRoom", json={"preset": "private_chat"}).json()["room_id"]
    override = synapse.client(admin, "POST", f"/_synapse/admin/v1/users/{quote(user_id)}/override_ratelimit",
                              json={"messages_per_second": 1, "burst_count": 1})  # whole numbers only
    assert override.status_code == 200, override.text
    svc = service(synapse.url, slow)
    for _ in range(5):  # room creation spent some of the budget: the first or second send is refused
        data = message(b"rapido", room_id)
        limited = svc.send(data)
        if limited.kind == "retry":
            break
    assert limited.kind == "retry" and "M_LIMIT_EXCEEDED" in limited.reason and limited.throttle == "service", limited
    assert limited.retry_after is not None and 0 < limited.retry_after <= 1.5
    time.sleep(limited.retry_after + 0.1)  # honoured: after retry_after the same message goes out
    assert svc.send(data).kind == "delivered"


# -- end to end: a real runner to the real Synapse, HTTP and CLI ------------------------------------

@pytest.fixture(scope="module")
def matrix_gateway(tmp_path_factory, server_keys, synapse, room):
    token, _, _ = room
    env = instance_env("mx", "matrix", homeserver=synapse.url, access_token=token)
    yield from serve(tmp_path_factory, server_keys, env, "matrix")


@pytest.mark.parametrize("via", VIA)
def test_every_datatype_arrives_in_synapse_end_to_end(matrix_gateway, synapse, room, tmp_path, via):
    token, room_id, alias = room
    msgtypes = {"text": "m.text", "image": "m.image", "document": "m.file", "audio": "m.audio", "video": "m.video", "voice": "m.audio"}
    dests = {datatype: alias if datatype == "text" else room_id for datatype in msgtypes}  # the alias is resolved by the runner
    sent = send_every(matrix_gateway, tmp_path, via, "mx", dests)
    for item in sent.values():
        assert item.report["state"] == "delivered", (item.datatype, item.report)
        [event_id] = item.report["platform_ids"]
        event = read_event(synapse, token, room_id, event_id)
        content = event["content"]
        assert event["room_id"] == room_id and content["msgtype"] == msgtypes[item.datatype], (item.datatype, content)
        if item.datatype == "text":
            assert content["body"] == item.content.decode()
            continue
        assert content["body"] == item.caption and content["filename"] == item.upload_name
        assert content["info"] == {"mimetype": item.mime, "size": len(item.content)}
        assert ("org.matrix.msc3245.voice" in content) == (item.datatype == "voice")
        server, media_id = content["url"][len("mxc://"):].split("/", 1)
        download = synapse.client(token, "GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")
        assert download.status_code == 200 and download.content == item.content, item.datatype


# -- fault rows, against the emulator, through a runner ----------------------------------------------

@pytest.fixture(scope="module")
def matrix_server():
    with MatrixEmulator().start() as emulator:
        yield emulator


@pytest.fixture
def matrix(matrix_server):
    matrix_server.reset()
    return matrix_server


@pytest.fixture(scope="module")
def emulated_gateway(tmp_path_factory, server_keys, matrix_server):
    """A runner of its own for the emulator's rows, so that they do not wait for (or skip with) Synapse."""
    account = {"homeserver": matrix_server.url, "access_token": matrix_server.token}
    env = {**RETRIES, **instance_env("mxe", "matrix", **account),
           # a held instance waits a minute for its next probe: one instance per misconfigured row
           **instance_env("mxtoken", "matrix", **{**account, "access_token": "syt_not_the_token"}),
           **instance_env("mxnope", "matrix", **{**account, "homeserver": matrix_server.url + "/nope"}),
           **instance_env("mxmissing", "matrix", **account), **instance_env("mx404", "matrix", **account)}
    yield from serve(tmp_path_factory, server_keys, env, "matrix-emulated")


def new_room() -> str:
    return f"!{new_id().lower()}:localhost"


def sends_to(emulator, room: str, count: int = 1) -> list[dict]:
    return emulator.wait_for(lambda r: r["method"] == "send" and r["dest"] == room, count=count)


@pytest.mark.parametrize("answer, extra, retry_after", [
    ("limit", {"retry_after_ms": 1200}, 1.2),
    ({"status": 429, "body": {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests"}, "headers": {"Retry-After": "1"}}, {}, 1),
], ids=["retry_after_ms", "Retry-After"])
def test_limit_exceeded_waits_for_retry_after_and_slows_the_whole_service_down(emulated_gateway, matrix, answer, extra, retry_after):
    rooms = (new_room(), new_room())
    message_id = scripted(emulated_gateway, matrix, "mxe", rooms[0], answer, **extra)
    limited, resent, _ = assert_throttled(emulated_gateway, matrix, "mxe", message_id, rooms, "M_LIMIT_EXCEEDED", retry_after)
    assert limited["fields"]["txn"] == resent["fields"]["txn"] and resent["fields"]["repeat"] is False  # refused, so not made


@pytest.mark.parametrize("answer, extra, words", [
    ("server_error", {}, "M_UNKNOWN: Internal server error"),
    ("bad_gateway", {}, "HTTP 502"),
    ("timeout", {"seconds": 3}, "did not answer in time"),
    ("drop", {}, "could not reach the homeserver"),
    ({"status": 200, "body": {}}, {}, "not a sent event"),
], ids=["500", "502-html", "timeout", "dropped", "200-without-event_id"])
def test_transient_answers_are_retried_with_the_same_transaction(emulated_gateway, matrix, answer, extra, words):
    room = new_room()
    message_id = scripted(emulated_gateway, matrix, "mxe", room, answer, times=2, **extra)
    first, second = assert_gave_up_retrying(emulated_gateway, matrix, message_id, room, words)
    assert first["fields"]["txn"] == second["fields"]["txn"] == f"multimsg.{message_id}.0"


def test_a_timed_out_event_sent_again_is_the_same_event(emulated_gateway, matrix):
    room = new_room()
    report = emulated_gateway.wait_state(scripted(emulated_gateway, matrix, "mxe", room, "timeout", seconds=3))
    assert report["state"] == "delivered" and report["attempts"] == 1, report
    late, again = sends_to(matrix, room, count=2)
    assert late["status"] == again["status"] == 200 and (late["fields"]["repeat"], again["fields"]["repeat"]) == (False, True)
    assert report["platform_ids"] == [late["response"]["event_id"]] == [again["response"]["event_id"]]


def test_an_upload_answer_without_content_uri_is_retried_before_any_event(emulated_gateway, matrix):
    room = new_room()
    matrix.script({"status": 200, "body": {}}, method="upload", times=2)
    report = emulated_gateway.wait_state(emulated_gateway.send(png(), "mxe", room, "image"))
    assert report["state"] == "failed" and report["last_error"] == "gave up after 2 attempts: matrix: an upload answer without a content_uri", report
    assert [r["method"] for r in matrix.received()] == ["upload", "upload"]


def test_an_upload_is_not_repeated_by_a_retry(emulated_gateway, matrix):
    alias = f"#fotos-{new_id().lower()}:localhost"
    matrix.script("server_error", method="send")
    report = emulated_gateway.wait_state(emulated_gateway.send(png(), "mxe", alias, "image"))
    assert report["state"] == "delivered" and report["attempts"] == 1, report
    assert [r["method"] for r in matrix.received()] == ["directory", "upload", "send", "send"]  # the alias and the file remembered
    upload, failed, sent = (r for r in matrix.received() if r["method"] != "directory")
    assert upload["files"]["file"]["sha256"] == hashlib.sha256(png()).hexdigest()
    assert failed["json"]["url"] == sent["json"]["url"] == upload["response"]["content_uri"] and sent["dest"] == f"!{alias[1:]}"


@pytest.mark.parametrize("serv, answer, errcode", [
    ("mxtoken", None, "M_UNKNOWN_TOKEN"),  # the instance's token is not the account's
    ("mxnope", None, "M_UNRECOGNIZED"),  # its homeserver URL is not the client-server API
    ("mxmissing", {"status": 401, "body": {"errcode": "M_MISSING_TOKEN", "error": "Missing access token"}}, "M_MISSING_TOKEN"),
    ("mx404", {"status": 404, "raw": "404 page not found"}, "HTTP 404"),  # a 404 without an errcode: not a homeserver
])
def test_refused_credentials_or_homeserver_hold_the_instance(emulated_gateway, matrix, serv, answer, errcode):
    room = new_room()
    message_id = scripted(emulated_gateway, matrix, serv, room, answer) if answer else emulated_gateway.send(b"hola", serv, room)
    report = assert_held(emulated_gateway, matrix, serv, message_id, errcode, new_room())
    assert "syt_" not in report["last_error"]


@pytest.mark.parametrize("answer, method, errcode", [
    ("forbidden", "send", "M_FORBIDDEN: User @bot:localhost not in room"),
    ("not_found", "send", "M_NOT_FOUND: Unknown room"),
    ("too_large", "send", "M_TOO_LARGE"),
    ({"status": 400, "body": {"errcode": "M_BAD_JSON", "error": "Content not JSON."}}, "send", "M_BAD_JSON: Content not JSON."),
    ("too_large", "upload", "M_TOO_LARGE: Uploaded content is too large"),
])
def test_refusals_fail_with_the_homeserver_error(emulated_gateway, matrix, answer, method, errcode):
    room = new_room()
    datatype, content = ("image", png()) if method == "upload" else ("text", b"hola")
    matrix.script(answer, dest=None if method == "upload" else room, method=method)
    report = emulated_gateway.wait_state(emulated_gateway.send(content, "mxe", room, datatype))
    assert report["state"] == "failed" and report["attempts"] == 1 and errcode in report["last_error"], report
    assert len([r for r in matrix.received() if r["method"] == method]) == 1
    if method == "upload":
        assert not [r for r in matrix.received() if r["method"] == "send"]  # no event for a file that did not go up


def test_an_alias_the_homeserver_does_not_know_fails(emulated_gateway, matrix):
    report = emulated_gateway.wait_state(emulated_gateway.send(b"hola", "mxe", "#missing-room:localhost"))
    assert report["state"] == "failed" and "M_NOT_FOUND: Room alias #missing-room:localhost not found" in report["last_error"], report
    assert [r["method"] for r in matrix.received()] == ["directory"]
