"""Encrypted uploads: the documented wire format, produced by Python, openssl and WebCrypto.

key  = RSA-OAEP(SHA-256, MGF1-SHA-256) of an AES key (16, 24 or 32 bytes)
data = nonce (12) || AES-GCM ciphertext || tag (16)
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.conftest import require_tool

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def encrypt(public_pem: str, plaintext: bytes, key_size: int = 32) -> tuple[bytes, bytes]:
    aes_key = os.urandom(key_size)
    nonce = os.urandom(12)
    blob = nonce + AESGCM(aes_key).encrypt(nonce, plaintext, None)
    wrapped = serialization.load_pem_public_key(public_pem.encode()).encrypt(aes_key, OAEP)
    return blob, wrapped


def test_key_is_a_3072_bit_spki_pem_made_on_first_start_and_kept(make_gateway, tmp_path):
    gateway = make_gateway(home=tmp_path / "fresh-home")  # no pre-made keys: the runner makes them
    first = gateway.http.get(gateway.url + "/key")
    assert first.status_code == 200
    assert first.text.startswith("-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(first.text.encode())
    assert public.key_size >= 3072
    assert gateway.http.get(gateway.url + "/key").text == first.text
    private = gateway.home / "keys" / "private.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    gateway.stop()
    restarted = make_gateway(home=gateway.home)
    assert restarted.http.get(restarted.url + "/key").text == first.text


@pytest.mark.parametrize("key_size", [16, 24, 32])
def test_encrypted_text_is_decrypted_and_delivered(gateway, telegram, key_size):
    pem = gateway.http.get(gateway.url + "/key").text
    blob, wrapped = encrypt(pem, "secreto: ñandú".encode(), key_size)
    message_id = gateway.send(blob, "telegram", "777", key=wrapped)
    assert gateway.wait_state(message_id)["state"] == "delivered"
    [sent] = telegram.wait_for(count=1)
    assert sent["fields"]["text"] == "secreto: ñandú"


def test_key_wrapped_by_the_openssl_cli_works(gateway, telegram, tmp_path):
    require_tool("openssl", "a key wrapped by the openssl CLI")
    (tmp_path / "pub.pem").write_text(gateway.http.get(gateway.url + "/key").text)
    aes_key = os.urandom(32)
    (tmp_path / "aes.key").write_bytes(aes_key)
    subprocess.run(
        ["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", "pub.pem",
         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256",
         "-in", "aes.key", "-out", "key.bin"],
        cwd=tmp_path, check=True,
    )
    nonce = os.urandom(12)
    blob = nonce + AESGCM(aes_key).encrypt(nonce, b"wrapped by openssl", None)
    message_id = gateway.send(blob, "telegram", "778", key=(tmp_path / "key.bin").read_bytes())
    assert gateway.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "wrapped by openssl"


NODE_CLIENT = r"""
const pem = require('fs').readFileSync(0, 'utf8');
const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
(async () => {
  const subtle = crypto.subtle;
  const pub = await subtle.importKey('spki', der, {name: 'RSA-OAEP', hash: 'SHA-256'}, false, ['wrapKey']);
  const aes = await subtle.generateKey({name: 'AES-GCM', length: 256}, true, ['encrypt']);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = new Uint8Array(await subtle.encrypt({name: 'AES-GCM', iv}, aes, new TextEncoder().encode('hello from WebCrypto')));
  const wrapped = new Uint8Array(await subtle.wrapKey('raw', aes, pub, {name: 'RSA-OAEP'}));
  const blob = Buffer.concat([Buffer.from(iv), Buffer.from(ct)]);
  console.log(JSON.stringify({data: blob.toString('base64'), key: Buffer.from(wrapped).toString('base64')}));
})();
"""


def test_webcrypto_client_works(gateway, telegram):
    require_tool("node", "WebCrypto interop")
    import base64
    import json

    pem = gateway.http.get(gateway.url + "/key").text
    out = subprocess.run(["node", "-e", NODE_CLIENT], input=pem, capture_output=True, text=True, check=True)
    parts = json.loads(out.stdout)
    message_id = gateway.send(base64.b64decode(parts["data"]), "telegram", "779", key=base64.b64decode(parts["key"]))
    assert gateway.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "hello from WebCrypto"


def test_tampered_ciphertext_is_rejected_and_nothing_is_stored(gateway):
    pem = gateway.http.get(gateway.url + "/key").text
    blob, wrapped = encrypt(pem, b"do not alter")
    tampered = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    before = sorted(p.name for p in (gateway.home / "spool").rglob("*") if p.is_file())
    response = gateway.upload(tampered, key=wrapped)
    assert response.status_code == 400
    assert "failed authentication" in response.text
    after = sorted(p.name for p in (gateway.home / "spool").rglob("*") if p.is_file())
    assert after == before


@pytest.mark.parametrize(
    "make_key, reason",
    [
        (lambda wrapped: wrapped[:100], "384 bytes"),
        (lambda wrapped: bytes(384), "does not decrypt"),
    ],
)
def test_bad_keys_are_rejected_with_a_reason(gateway, make_key, reason):
    pem = gateway.http.get(gateway.url + "/key").text
    blob, wrapped = encrypt(pem, b"x")
    response = gateway.upload(blob, key=make_key(wrapped))
    assert response.status_code == 400 and reason in response.text


def test_truncated_blob_is_rejected(gateway):
    pem = gateway.http.get(gateway.url + "/key").text
    _, wrapped = encrypt(pem, b"x")
    response = gateway.upload(b"short", key=wrapped)
    assert response.status_code == 400 and "too short" in response.text


# -- replays ---------------------------------------------------------------------------------
def test_a_replayed_encrypted_upload_is_refused_for_as_long_as_its_key_is_accepted(gateway):
    import subprocess
    import sys

    from multimsg.crypto import encrypt_upload
    from tests.gatewayproc import ROOT

    pem = gateway.http.get(gateway.url + "/key").text
    blob, wrapped = encrypt_upload(pem, b"captured on the way")
    assert gateway.upload(blob, key=wrapped).status_code == 200
    for source in (None, "127.0.0.2"):  # the same client, or anyone who captured it
        again = gateway.upload(blob, key=wrapped, source=source)
        assert again.status_code == 409, again.text
        assert "received before" in again.text and "\n" not in again.text.strip()
    assert len(list((gateway.home / "spool").glob("*/*.json"))) == 1

    # An upload that fails is not recorded: the same wrapped key then works once.
    blob2, wrapped2 = encrypt_upload(pem, b"second try")
    assert gateway.upload(blob2[:-1], key=wrapped2).status_code == 400
    assert gateway.upload(blob2, key=wrapped2).status_code == 200
    assert gateway.upload(blob2, key=wrapped2).status_code == 409

    # After a rotation the old key still opens it within the grace: still refused.
    env = {**__import__("os").environ, "MULTIMSG_HOME": str(gateway.home)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "multimsg", "keys", "rotate", *args], env=env, cwd=ROOT, capture_output=True)  # noqa: E731
    assert run("--grace", "3600").returncode == 0
    assert gateway.upload(blob, key=wrapped).status_code == 409
    blob3, wrapped3 = encrypt_upload(pem, b"old key, new upload")
    assert gateway.upload(blob3, key=wrapped3).status_code == 200  # fresh wrapped key, retired key: accepted once
    assert gateway.upload(blob3, key=wrapped3).status_code == 409
    # Once no accepted key opens them, their record is deleted (and they do not decrypt anyway).
    assert run("--grace", "0").returncode == 0
    assert gateway.upload(blob, key=wrapped).status_code == 400
    from multimsg.crypto import fingerprint

    newest = gateway.http.get(gateway.url + "/key").text
    newest_blob, newest_key = encrypt_upload(newest, b"with the newest key")
    assert gateway.upload(newest_blob, key=newest_key).status_code == 200
    assert {p.name for p in (gateway.home / "replay").iterdir() if p.is_dir()} == {fingerprint(newest)}
