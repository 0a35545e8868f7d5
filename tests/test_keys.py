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


def test_a_damaged_key_file_stops_the_server_at_start_with_the_reason(make_gateway, tmp_path):
    """The key is loaded without OpenSSL's slow check of its numbers (our own key): a round trip must still refuse a damaged one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from multimsg.crypto import new_private_pem

    good = serialization.load_pem_private_key(new_private_pem(), password=None)
    assert isinstance(good, rsa.RSAPrivateKey)
    n = good.private_numbers()
    damaged = rsa.RSAPrivateNumbers(p=n.p, q=n.q, d=n.d + 2, dmp1=n.dmp1 + 2, dmq1=n.dmq1 + 2, iqmp=n.iqmp,
                                    public_numbers=n.public_numbers).private_key(unsafe_skip_rsa_key_validation=True)
    home = tmp_path / "damaged"
    (home / "keys").mkdir(parents=True, mode=0o700)
    (home / "keys" / "private.pem").write_bytes(damaged.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    try:
        make_gateway("damaged", home=home)
    except RuntimeError as exc:
        assert "the server key is damaged" in str(exc)
    else:
        raise AssertionError("a runner started with a damaged key")
