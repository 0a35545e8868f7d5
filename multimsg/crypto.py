"""The crypto format of uploads, and the server's key pair (with rotation).

Wire format (the contract; Python ``cryptography``, WebCrypto and
``openssl pkeyutl`` all produce it):

- ``key`` file: an AES key of 16, 24 or 32 bytes, encrypted with the server's
  RSA public key using OAEP with SHA-256 and MGF1-SHA-256, no label.
- ``data`` file: a 12-byte nonce, then the AES-GCM ciphertext with its 16-byte
  tag appended, no associated data.

``encrypt_upload`` is the client side of that recipe (``multimsg.Client`` uses it).

A key's fingerprint (``key_fingerprint``) is ``SHA256:`` and the unpadded
base64 of the SHA-256 of its DER SubjectPublicKeyInfo, as OpenSSH writes
them; ``parse_fingerprint`` also takes the 64 hex digits (colons allowed).
``fingerprint`` is its short form, the first 16 hex digits (file names, logs).
Clients pin it (``multimsg send --key-fingerprint``, or trust on first use).

Every wrapped key is accepted once (``decrypt_stream(..., replay=...)``, see
``multimsg.replay``): a captured upload replayed by anyone is refused with
``Replayed`` (409) for as long as a key pair that opens it is accepted.

The key pair (RSA-3072) is made on first use and kept in ``keys/`` of the data
folder; the private key is PKCS#8 PEM, mode 0600. ``ServerKeys.rotate()`` makes
a new pair and keeps the old private key as ``keys/retired-<expiry ms>.pem``
(same inode, so still 0600): uploads wrapped with it still decrypt until the
expiry (MULTIMSG_KEY_GRACE after the rotation, 7 days by default), so clients
that fetched the old ``/key`` keep working; after it they are refused, and the
file is deleted. Each process re-reads ``keys/`` when the folder or
``private.pem`` changed (two ``stat`` calls per use), so a rotation made by
``multimsg keys rotate`` in another process takes effect without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from filelock import FileLock

from .errors import InvalidInput
from .fsutil import write_atomic
from .layout import Layout

__all__ = [
    "ServerKeys", "KeyStore", "FileKeyStore", "RetiredKey", "encrypt_upload", "fingerprint", "key_fingerprint", "parse_fingerprint",
    "OAEP", "NONCE_SIZE", "TAG_SIZE", "AES_KEY_SIZES", "RSA_BITS",
]

RSA_BITS = 3072
NONCE_SIZE = 12
TAG_SIZE = 16
AES_KEY_SIZES = (16, 24, 32)
_CHUNK = 1 << 20  # decryption reads and writes this much at a time
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

_RETIRED_RE = re.compile(r"retired-(\d+)(?:-\d+)?\.pem")


def encrypt_upload(public_pem: str | bytes, plaintext: bytes, key_size: int = 32) -> tuple[bytes, bytes]:
    """``(data, key)`` for ``POST /data``: the AES-GCM blob and the RSA-OAEP-wrapped AES key."""
    if key_size not in AES_KEY_SIZES:
        raise ValueError(f"AES key size must be one of {AES_KEY_SIZES}")
    pem = public_pem.encode() if isinstance(public_pem, str) else public_pem
    public = serialization.load_pem_public_key(pem)
    aes_key = os.urandom(key_size)
    nonce = os.urandom(NONCE_SIZE)
    blob = nonce + AESGCM(aes_key).encrypt(nonce, plaintext, None)
    return blob, public.encrypt(aes_key, OAEP)


def fingerprint(public_pem: str | bytes) -> str:
    """A short name for a public key: SHA-256 of its DER SubjectPublicKeyInfo, first 16 hex digits."""
    pem = public_pem.encode() if isinstance(public_pem, str) else public_pem
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _spki_digest(public_pem: str | bytes) -> bytes:
    pem = public_pem.encode() if isinstance(public_pem, str) else public_pem
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def key_fingerprint(public_pem: str | bytes) -> str:
    """``SHA256:<base64>``: the SHA-256 of the key's DER SubjectPublicKeyInfo, unpadded base64 (as OpenSSH prints)."""
    return "SHA256:" + base64.b64encode(_spki_digest(public_pem)).decode().rstrip("=")


def parse_fingerprint(text: str) -> bytes:
    """The 32-byte digest a fingerprint names: ``SHA256:<base64>``, or 64 hex digits (colons allowed); ValueError otherwise."""
    value = text.strip()
    try:
        if value.upper().startswith("SHA256:"):
            b64 = value[7:]
            digest = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        else:
            digest = bytes.fromhex(value.replace(":", ""))
    except (ValueError, binascii.Error):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"not a key fingerprint: {text!r} (use SHA256:<base64>, as 'multimsg keys show' prints, or 64 hex digits)")
    return digest


def fingerprint_digest(public_pem: str | bytes) -> bytes:
    return _spki_digest(public_pem)


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class RetiredKey:
    expires_at: float
    key: rsa.RSAPrivateKey

    @property
    def public_pem(self) -> str:
        return _public_pem(self.key).decode()


class KeyStore:
    """Where the key pairs are kept: the files of ``keys/`` (``FileKeyStore``), or a shared store.

    ``stamp()`` is cheap and changes whenever the keys change; ``load()``
    returns the current private key (PKCS#8 PEM, making one on first use) and
    the retired ones still inside their grace, as ``(expires_at, pem)``;
    ``rotate(grace)`` makes a new current key and retires the old one until
    ``now + grace`` (None when there was no key to retire, or grace is 0).
    """

    def stamp(self) -> object:
        raise NotImplementedError

    def load(self) -> tuple[bytes, list[tuple[float, bytes]]]:
        raise NotImplementedError

    def rotate(self, grace: float) -> float | None:
        raise NotImplementedError


def new_private_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class FileKeyStore(KeyStore):
    """The key pairs in ``keys/`` of the data folder (the embedded backend's store)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    @property
    def _private_path(self):
        return self.layout.keys / "private.pem"

    def stamp(self) -> tuple | None:
        try:
            folder = os.stat(self.layout.keys)
            private = os.stat(self._private_path)
        except FileNotFoundError:
            return None
        return (folder.st_ino, folder.st_mtime_ns, private.st_ino, private.st_mtime_ns)

    def load(self) -> tuple[bytes, list[tuple[float, bytes]]]:
        with FileLock(self.layout.lock("keys")):
            if not self._private_path.exists():
                self._generate()
            self._prune(time.time())
            current = self._private_path.read_bytes()
            retired = [(expires_at, path.read_bytes()) for expires_at, path in self._retired_files()]
        return current, retired

    def _retired_files(self) -> list[tuple[float, "os.PathLike"]]:
        found = []
        for path in self.layout.keys.iterdir():
            match = _RETIRED_RE.fullmatch(path.name)
            if match:
                found.append((int(match[1]) / 1000, path))
        return found

    def _prune(self, now: float) -> None:
        for expires_at, path in self._retired_files():
            if expires_at <= now:
                path.unlink(missing_ok=True)

    def _retired_path(self, expires_at: float):
        stem = f"retired-{int(expires_at * 1000)}"
        path, n = self.layout.keys / f"{stem}.pem", 0
        while path.exists():
            n += 1
            path = self.layout.keys / f"{stem}-{n}.pem"
        return path

    def _generate(self) -> None:
        private_pem = new_private_pem()
        key = load_private(private_pem)
        write_atomic(self._private_path, private_pem)
        write_atomic(self.layout.keys / "public.pem", _public_pem(key))

    def rotate(self, grace: float) -> float | None:
        with FileLock(self.layout.lock("keys")):
            now = time.time()
            expires_at = now + grace
            retired = False
            if self._private_path.exists():
                for old_expiry, path in self._retired_files():
                    if old_expiry > expires_at:
                        os.replace(path, self._retired_path(expires_at))
                if grace > 0:
                    os.link(self._private_path, self._retired_path(expires_at))  # same inode: stays 0600
                    retired = True
            self._generate()
            self._prune(now)
        return expires_at if retired else None


def load_private(pem: bytes) -> rsa.RSAPrivateKey:
    """A server key pair from its PEM: one this server made (``new_private_pem``) and keeps (0600, or a shared store).

    OpenSSL's full check of an RSA key's numbers takes 0.2 s at each load
    (every start, every worker, every reload after a rotation); it guards
    against keys crafted to break the private operation, and these keys are
    our own. One OAEP round trip (5 ms) checks instead that the numbers agree,
    so a damaged key is refused here, not at the first upload.
    """
    key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the server key is not an RSA key")
    probe = os.urandom(32)
    try:
        if key.decrypt(key.public_key().encrypt(probe, OAEP), OAEP) == probe:
            return key
    except ValueError:
        pass
    raise ValueError("the server key is damaged: its private numbers do not match its public ones")


class ServerKeys:
    """The server's RSA key pair, created on first use, rotated on demand.

    ``store`` keeps them: the files of ``keys/`` by default (``FileKeyStore``),
    or a store shared by every process of a deployment.
    """

    def __init__(self, layout: Layout, grace: float | None = None, store: KeyStore | None = None):
        self.layout = layout
        self.store = store if store is not None else FileKeyStore(layout)
        self._grace = grace
        self._lock = threading.Lock()
        self._stamp: object = None
        self._loaded = False
        self._current: rsa.RSAPrivateKey | None = None
        self._public: str = ""
        self._retired: list[RetiredKey] = []

    @property
    def grace(self) -> float:
        """Seconds a retired key keeps decrypting (MULTIMSG_KEY_GRACE)."""
        if self._grace is not None:
            return self._grace
        from .config import settings

        return settings().key_grace

    # -- loading (cached until the store changes) ------------------------------
    def _fresh(self) -> tuple[rsa.RSAPrivateKey, str, list[RetiredKey]]:
        stamp = self.store.stamp()
        with self._lock:
            if stamp is None or stamp != self._stamp or not self._loaded:
                self._load()
            assert self._current is not None
            return self._current, self._public, self._retired

    def _load(self) -> None:
        current_pem, retired_pems = self.store.load()
        current = load_private(current_pem)
        retired = [RetiredKey(expires_at, load_private(pem)) for expires_at, pem in retired_pems]
        self._stamp = self.store.stamp()
        self._loaded = True
        self._current, self._public = current, _public_pem(current).decode()
        self._retired = sorted(retired, key=lambda r: -r.expires_at)

    # -- the keys ------------------------------------------------------------
    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._fresh()[0]

    @property
    def public_pem(self) -> str:
        return self._fresh()[1]

    @property
    def retired(self) -> list[RetiredKey]:
        """Retired keys still inside their grace period, newest first."""
        now = time.time()
        return [r for r in self._fresh()[2] if r.expires_at > now]

    def accepted(self) -> list[str]:
        """Short fingerprints of every key pair that opens uploads now: the current one first."""
        return [fingerprint(self.public_pem)] + [fingerprint(r.public_pem) for r in self.retired]

    def rotate(self, grace: float | None = None) -> dict:
        """Make a new key pair; the old private key keeps decrypting for ``grace`` seconds.

        Every key retired earlier keeps working for at most ``grace`` from now as
        well, so ``rotate(grace=0)`` leaves only the new key (for a leaked key).
        """
        grace = self.grace if grace is None else max(0.0, grace)
        retired_until = self.store.rotate(grace)
        with self._lock:
            self._loaded = False
        public = self.public_pem
        return {
            "fingerprint": fingerprint(public),
            "retired_until": retired_until,
            "public_pem": public,
        }

    # -- POST /data ----------------------------------------------------------
    def unwrap_key(self, wrapped_key: bytes) -> bytes:
        """The AES key inside ``wrapped_key``; InvalidInput if it does not decrypt.

        The key is tried with the current private key, then with retired keys
        still inside their grace period.
        """
        current, _, retired = self._fresh()
        modulus_bytes = current.key_size // 8
        if len(wrapped_key) != modulus_bytes:
            raise InvalidInput(
                f"'key' must be the AES key encrypted with the server's {current.key_size}-bit "
                f"RSA key ({modulus_bytes} bytes), got {len(wrapped_key)} bytes"
            )
        now = time.time()
        aes_key = None
        for private in [current] + [r.key for r in retired if r.expires_at > now]:
            try:
                aes_key = private.decrypt(wrapped_key, OAEP)
                break
            except ValueError:
                continue
        if aes_key is None:
            raise InvalidInput(
                "'key' does not decrypt with the server's key (RSA-OAEP, SHA-256, MGF1-SHA-256); "
                "if /key was fetched before the server's key was rotated, fetch it again"
            )
        if len(aes_key) not in AES_KEY_SIZES:
            raise InvalidInput(f"the AES key must be 16, 24 or 32 bytes, got {len(aes_key)}")
        return aes_key

    def decrypt_stream(self, data: BinaryIO, wrapped_key: bytes, replay=None) -> Iterator[bytes]:
        """The plaintext of an encrypted upload, chunk by chunk, from a seekable file.

        The key is unwrapped before the first chunk. GCM's tag sits at the end
        of the blob, so it is read first and checked by ``finalize()`` after the
        last chunk: a consumer that writes chunks to a temporary file must drop
        that file when this raises (``fsutil.write_stream_atomic`` does), so
        unauthenticated plaintext is never kept.

        ``replay`` (a ``multimsg.replay.ReplayRecord``) claims the wrapped key
        once the key opened it: ``Replayed`` if it was used before. The claim
        is given back if the upload then fails (bad tag, or an error while the
        consumer stores it), so only uploads that were stored count.
        """
        aes_key = self.unwrap_key(wrapped_key)
        size = data.seek(0, io.SEEK_END)
        if size < NONCE_SIZE + TAG_SIZE:
            raise InvalidInput("'data' is too short for a 12-byte nonce and a 16-byte GCM tag")
        data.seek(size - TAG_SIZE)
        tag = data.read(TAG_SIZE)
        data.seek(0)
        nonce = data.read(NONCE_SIZE)
        claim = replay.claim(wrapped_key, self.accepted()) if replay is not None else None
        chunks = self._decrypt_chunks(data, Cipher(algorithms.AES(aes_key), modes.GCM(nonce, tag)).decryptor(), size - NONCE_SIZE - TAG_SIZE)
        return chunks if claim is None else self._given_back_on_failure(chunks, replay, claim)

    @staticmethod
    def _given_back_on_failure(chunks: Iterator[bytes], replay, claim) -> Iterator[bytes]:
        done = False
        try:
            yield from chunks
            done = True
        finally:
            if not done:  # refused, failed, or abandoned before the end: this upload was not stored
                replay.release(claim)

    @staticmethod
    def _decrypt_chunks(data: BinaryIO, decryptor, left: int) -> Iterator[bytes]:
        while left > 0:
            chunk = data.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield decryptor.update(chunk)
        try:
            yield decryptor.finalize()
        except InvalidTag:
            raise InvalidInput("'data' failed authentication (wrong key, or the ciphertext was altered)") from None
