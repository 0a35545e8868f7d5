"""Key rotation: ``multimsg keys rotate`` in another process, seen by a running server.

After a rotation ``/key`` serves the new key at once; an upload wrapped with
the old key still decrypts during the grace period (MULTIMSG_KEY_GRACE, or
``--grace``) and is refused after it.
"""

from __future__ import annotations

import stat
import time

from multimsg import Client
from multimsg.crypto import encrypt_upload
from tests.test_cli import multimsg


def rotate(gateway, *args: str, grace: str | None = None):
    env = {"MULTIMSG_HOME": str(gateway.home)}
    if grace is not None:
        env["MULTIMSG_KEY_GRACE"] = grace
    result = multimsg("keys", "rotate", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def upload_with(gateway, pem: str, content: bytes):
    blob, wrapped = encrypt_upload(pem, content)
    return gateway.upload(blob, key=wrapped)


def test_after_rotation_the_new_key_is_served_and_the_old_one_works_within_the_grace_period(gateway, telegram):
    old = gateway.http.get(gateway.url + "/key").text
    said = rotate(gateway, grace="3600")
    assert "still decrypts uploads until" in said

    new = gateway.http.get(gateway.url + "/key").text
    assert new != old and new.startswith("-----BEGIN PUBLIC KEY-----")  # no restart needed

    accepted = upload_with(gateway, old, "cifrado con la clave anterior".encode())
    assert accepted.status_code == 200, accepted.text
    message_id = gateway.msg(id=accepted.text, serv="telegram", dest="31", type="text").text
    assert gateway.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "cifrado con la clave anterior"
    assert upload_with(gateway, new, b"with the new key").status_code == 200

    keys = gateway.home / "keys"
    retired = list(keys.glob("retired-*.pem"))
    assert len(retired) == 1
    for path in [keys / "private.pem", *retired]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = multimsg("keys", "show", env={"MULTIMSG_HOME": str(gateway.home)}).stdout.decode()
    assert shown.count("retired key") == 1


def test_the_old_key_is_refused_once_the_grace_period_is_over(gateway):
    old = gateway.http.get(gateway.url + "/key").text
    rotate(gateway, grace="1")
    deadline = time.monotonic() + 20
    while True:
        refused = upload_with(gateway, old, b"too late")
        if refused.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert refused.status_code == 400
    assert "does not decrypt with the server's key" in refused.text and "fetch it again" in refused.text
    new = gateway.http.get(gateway.url + "/key").text
    assert upload_with(gateway, new, b"fresh key").status_code == 200


def test_rotate_with_grace_0_refuses_every_older_key_at_once(gateway):
    first = gateway.http.get(gateway.url + "/key").text
    rotate(gateway, grace="3600")
    second = gateway.http.get(gateway.url + "/key").text
    assert upload_with(gateway, first, b"x").status_code == 200

    said = rotate(gateway, "--grace", "0")
    assert "no longer decrypts" in said
    for pem in (first, second):
        response = upload_with(gateway, pem, b"leaked key")
        assert response.status_code == 400 and "fetch it again" in response.text
    assert not list((gateway.home / "keys").glob("retired-*.pem"))


def test_the_client_fetches_the_key_again_when_it_was_rotated_meanwhile(gateway, telegram):
    with Client(gateway.url) as client:
        before = client.public_key()
        rotate(gateway, "--grace", "0")
        data_id = client.upload(b"sent after a rotation")  # the first try is refused; the client refetches /key
        assert client.public_key() != before
        message_id = client.queue(data_id, "telegram", "32", "text")
    assert gateway.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "sent after a rotation"
