"""The crypto format of uploads, and the server's key pair.

Wire format (the contract; Python ``cryptography``, WebCrypto and
``openssl pkeyutl`` all produce it):

- ``key`` file: an AES key of 16, 24 or 32 bytes, encrypted with the server's
  RSA public key using OAEP with SHA-256 and MGF1-SHA-256, no label.
- ``data`` file: a 12-byte nonce, then the AES-GCM ciphertext with its 16-byte
  tag appended, no associated data.

The key pair (RSA-3072) is made on first use and kept in ``keys/`` of the data
folder; the private key is PKCS#8 PEM, mode 0600.
"""

from __future__ import annotations

from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from filelock import FileLock

from .errors import InvalidInput
from .fsutil import write_atomic
from .queue.layout import Layout

__all__ = ["ServerKeys", "OAEP", "NONCE_SIZE", "TAG_SIZE", "AES_KEY_SIZES", "RSA_BITS"]

RSA_BITS = 3072
NONCE_SIZE = 12
TAG_SIZE = 16
AES_KEY_SIZES = (16, 24, 32)
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class ServerKeys:
    """The server's RSA key pair, created on first use."""

    def __init__(self, layout: Layout):
        self.layout = layout

    @property
    def _private_path(self):
        return self.layout.keys / "private.pem"

    @cached_property
    def private_key(self) -> rsa.RSAPrivateKey:
        with FileLock(self.layout.lock("keys")):
            if not self._private_path.exists():
                self._generate()
            pem = self._private_path.read_bytes()
        return serialization.load_pem_private_key(pem, password=None)

    def _generate(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(self._private_path, private_pem)
        write_atomic(self.layout.keys / "public.pem", self._public_pem(key))

    @staticmethod
    def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @cached_property
    def public_pem(self) -> str:
        return self._public_pem(self.private_key).decode()

    def decrypt_upload(self, blob: bytes, wrapped_key: bytes) -> bytes:
        """The plaintext of an encrypted upload; InvalidInput if it does not decrypt."""
        modulus_bytes = self.private_key.key_size // 8
        if len(wrapped_key) != modulus_bytes:
            raise InvalidInput(
                f"'key' must be the AES key encrypted with the server's {self.private_key.key_size}-bit "
                f"RSA key ({modulus_bytes} bytes), got {len(wrapped_key)} bytes"
            )
        try:
            aes_key = self.private_key.decrypt(wrapped_key, OAEP)
        except ValueError:
            raise InvalidInput("'key' does not decrypt with the server's key (RSA-OAEP, SHA-256, MGF1-SHA-256)") from None
        if len(aes_key) not in AES_KEY_SIZES:
            raise InvalidInput(f"the AES key must be 16, 24 or 32 bytes, got {len(aes_key)}")
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise InvalidInput("'data' is too short for a 12-byte nonce and a 16-byte GCM tag")
        try:
            return AESGCM(aes_key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], None)
        except InvalidTag:
            raise InvalidInput("'data' failed authentication (wrong key, or the ciphertext was altered)") from None
