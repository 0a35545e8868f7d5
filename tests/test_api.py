"""The seed's HTTP contract end to end: /key, /data, /msg, /cons, /drain on a real runner."""

from __future__ import annotations

import re

import pytest

ID_RE = re.compile(r"[A-Za-z0-9]{16}")


def test_text_to_telegram_is_delivered_once_then_archived(gateway, telegram):
    message_id = gateway.send("hola, ¿qué tal? ✓".encode(), "telegram", "12345")
    assert ID_RE.fullmatch(message_id)
    assert gateway.cons(message_id).text == "queued"

    summary = gateway.drain()
    assert summary == {"busy": False, "claimed": 1, "delivered": 1, "retried": 0, "failed": 0, "misconfigured": {}}
    [sent] = telegram.wait_for(count=1)
    assert sent["method"] == "sendMessage"
    assert str(sent["dest"]) == "12345"
    assert sent["fields"]["text"] == "hola, ¿qué tal? ✓"

    first = gateway.cons(message_id)
    assert (first.status_code, first.text) == (200, "delivered")
    again = gateway.cons(message_id)
    assert again.status_code == 404
    assert "unknown message id" in again.text


def test_text_to_whatsapp_is_delivered_with_its_wamid(gateway, whatsapp):
    message_id = gateway.send(b"Hello from multimsg", "wpp1", "5491155551234")
    gateway.drain()
    [sent] = whatsapp.wait_for(count=1)
    assert sent["json"]["to"] == "5491155551234"
    assert sent["json"]["type"] == "text"
    assert sent["json"]["text"]["body"] == "Hello from multimsg"

    report = gateway.state(message_id)
    assert report["state"] == "delivered"
    assert report["platform_ids"] and report["platform_ids"][0].startswith("wamid.")
    assert report["attempts"] == 0
    assert gateway.cons(message_id).status_code == 404


def test_json_answers_have_the_documented_shapes(gateway):
    upload = gateway.http.post(gateway.url + "/data", files={"data": ("t.txt", b"hi")}, headers={"Accept": "application/json"})
    assert upload.headers["Content-Type"].startswith("application/json")
    data_id = upload.json()["id"]
    queued = gateway.http.post(gateway.url + "/msg", json={"id": data_id, "serv": "telegram", "dest": -100123, "type": "text"},
                               headers={"Accept": "application/json"})
    assert queued.status_code == 200, queued.text
    message_id = queued.json()["id"]
    report = gateway.state(message_id)
    assert set(report) == {"id", "state", "serv", "dest", "type", "attempts", "created_at", "updated_at",
                           "next_attempt_at", "last_error", "platform_ids", "receipt", "failure", "scheduled_for"}
    assert report["receipt"] == {} and report["failure"] is None
    assert report["dest"] == "-100123" and report["state"] == "queued"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", report["created_at"])
    error = gateway.http.post(gateway.url + "/cons", data={"id": "x" * 16}, headers={"Accept": "application/json"})
    assert error.status_code == 404 and set(error.json()) == {"error"}


def test_one_upload_can_go_to_several_recipients(gateway, telegram):
    data_id = gateway.upload_id(b"same text")
    ids = [gateway.msg(id=data_id, serv="telegram", dest=dest, type="text").text for dest in ("1001", "1002", "1003")]
    assert len(set(ids)) == 3
    gateway.drain()
    received = telegram.wait_for(count=3)
    assert sorted(str(r["dest"]) for r in received) == ["1001", "1002", "1003"]
    assert {r["fields"]["text"] for r in received} == {"same text"}


@pytest.mark.parametrize(
    "fields, status, reason",
    [
        ({"serv": "telegram", "dest": "1", "type": "text"}, 400, "missing field: id"),
        ({"id": "DATA", "dest": "1", "type": "text"}, 400, "missing field: serv"),
        ({"id": "DATA", "serv": "signal", "dest": "1", "type": "text"}, 400, "known services: outbox, telegram, wpp1"),
        ({"id": "DATA", "serv": "telegram", "dest": "1", "type": "hologram"}, 400, "does not send type 'hologram'"),
        ({"id": "DATA", "serv": "wpp1", "dest": "+54 9 11 5555-1234", "type": "text"}, 400, "digits only"),
        ({"id": "DATA", "serv": "wpp1", "dest": "1234", "type": "text"}, 400, "8 to 15 digits"),
        ({"id": "DATA", "serv": "telegram", "dest": "bob smith", "type": "text"}, 400, "@channelusername"),
        ({"id": "AAAAAAAAAAAAAAAA", "serv": "telegram", "dest": "1", "type": "text"}, 404, "unknown data id"),
        ({"id": "../../etc/passwd", "serv": "telegram", "dest": "1", "type": "text"}, 404, "unknown data id"),
    ],
)
def test_msg_rejects_bad_fields_with_a_reason(gateway, fields, status, reason):
    data_id = gateway.upload_id(b"text")
    fields = {k: (data_id if v == "DATA" else v) for k, v in fields.items()}
    response = gateway.msg(**fields)
    assert response.status_code == status
    assert reason in response.text
    assert "\n" not in response.text


def test_msg_refuses_a_service_without_credentials(make_gateway):
    gateway = make_gateway(env={"MULTIMSG_TELEGRAM_TOKEN": ""})
    data_id = gateway.upload_id(b"hi")
    response = gateway.msg(id=data_id, serv="telegram", dest="1", type="text")
    assert response.status_code == 400
    assert "not configured" in response.text and "MULTIMSG_TELEGRAM_TOKEN" in response.text


@pytest.mark.parametrize("content, reason", [(b"\xff\xfe not utf-8", "UTF-8"), (b"   \n", "empty")])
def test_text_must_be_utf8_and_not_empty(gateway, content, reason):
    data_id = gateway.upload_id(content)
    response = gateway.msg(id=data_id, serv="telegram", dest="1", type="text")
    assert response.status_code == 400 and reason in response.text


def test_data_must_be_multipart_with_a_data_file(gateway):
    not_multipart = gateway.http.post(gateway.url + "/data", data={"data": "x"})
    assert not_multipart.status_code == 415
    no_file = gateway.http.post(gateway.url + "/data", files={"other": ("a", b"x")})
    assert no_file.status_code == 400 and "'data'" in no_file.text


def test_cons_needs_an_id_and_wrong_methods_are_refused(gateway):
    missing = gateway.http.post(gateway.url + "/cons")
    assert missing.status_code == 400 and "id" in missing.text
    assert gateway.http.get(gateway.url + "/msg").status_code == 405
    assert gateway.http.post(gateway.url + "/key").status_code == 405
    assert gateway.http.get(gateway.url + "/nowhere").status_code == 404


def test_drain_is_for_loopback_or_the_operator_token(make_gateway):
    gateway = make_gateway(env={"MULTIMSG_DRAIN_TOKEN": "s3cret-operator"})
    assert gateway.http.post(gateway.url + "/drain").status_code == 401
    assert gateway.http.post(gateway.url + "/drain", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert gateway.drain(Authorization="Bearer s3cret-operator")["busy"] is False
