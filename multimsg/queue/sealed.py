"""Uploads encrypted at rest: ``SealedSpool`` wraps any ``Spool`` so that all it stores is ciphertext.

Every upload gets its own data key (AES-256-GCM). The stored object is a
fixed ``HEADER`` and then the content in chunks of ``CHUNK`` bytes, each
sealed on its own, so the drain decrypts as it streams and never holds
unauthenticated plaintext of more than one chunk::

    header (160 bytes): "MMSEAL1\\0" | chunk size (4, big-endian) | nonce prefix (7) | 0 | slot 0 | slot 1 | zeros
    slot (68 bytes):    storage key id (8) | nonce (12) | data key sealed with that storage key (32 + 16)
    chunk i:            AES-GCM(data key, nonce = prefix | i (4, big-endian) | 1 if last else 0) of CHUNK bytes, + tag

The chunk's number and "last" flag are in its nonce: chunks swapped,
dropped or cut off fail authentication (``Tampered``, a message failed with
the reason, never a 5xx). The data key is sealed with the storage key
(``multimsg.storage_keys``: an environment variable or a file outside the
data folder, never beside the data), with the header's fields as associated
data. The file name is sealed with the data key too (the inner spool stores
``sealed:<base64url>``), so a copy of the data folder, a Redis dump or the
bucket shows neither content nor names.

Rotation (``rewrap``) re-seals data keys only: the content is not rewritten.
The header has two slots: the new key's seal goes into the free one (and is
made durable) before the old one is cleared, so a crash halfway leaves a
header that still opens with one of the keys, and old keys stay in the
keyring until nothing needs them.

Content stored before encryption was on (no header) is read as it is:
those uploads still drain, and are not rewritten (they expire with the
data TTL).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidInput
from ..storage_keys import ID_SIZE, StorageKeys, key_id
from .spool import Content, DataInfo, Spool

__all__ = ["SealedSpool", "SealedContent", "Tampered", "HEADER", "CHUNK", "plain_size", "seal_name", "open_name"]

MAGIC = b"MMSEAL1\0"
CHUNK = 64 * 1024
TAG = 16
NONCE = 12
PREFIX = 7
SLOT = ID_SIZE + NONCE + 32 + TAG
_SLOTS_AT = len(MAGIC) + 4 + PREFIX + 1
HEADER = 160
NAME_MARK = "sealed:"
ONE_READ = 1 << 20  # SealedContent.read takes the stored bytes in one read up to this much plaintext
_EMPTY_SLOT = bytes(SLOT)


class Tampered(InvalidInput):
    """Stored content that fails authentication: altered, truncated, or sealed with a key this server lacks."""


class Keyring(Protocol):
    def load(self) -> StorageKeys: ...


def plain_size(stored: int, chunk: int = CHUNK) -> int:
    """The content's size, from the stored object's (the header, and a tag per chunk)."""
    body = max(0, stored - HEADER)
    chunks = max(1, -(-body // (chunk + TAG)))
    return max(0, body - TAG * chunks)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\1" if last else b"\0")


def _open_chunk(aead: AESGCM, prefix: bytes, index: int, data: bytes, want: int, last: bool) -> bytes:
    """Chunk ``index``'s plaintext from its ``want`` stored bytes (``data``: what could be read of them)."""
    if want < TAG or len(data) < want:
        raise Tampered("stored content is truncated")
    try:
        return aead.decrypt(_nonce(prefix, index, last), data, None)
    except InvalidTag:
        raise Tampered(f"stored content failed authentication at chunk {index} (altered, reordered or cut short)") from None


@dataclass
class Header:
    chunk: int
    prefix: bytes
    slots: list[bytes] = field(default_factory=lambda: [_EMPTY_SLOT, _EMPTY_SLOT])

    @classmethod
    def new(cls) -> "Header":
        return cls(CHUNK, os.urandom(PREFIX))

    @classmethod
    def parse(cls, raw: bytes) -> "Header | None":
        """The header at the start of a stored object; None if it has none (stored before encryption was on)."""
        if len(raw) < HEADER or not raw.startswith(MAGIC):
            return None
        chunk = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 4], "big")
        prefix = raw[len(MAGIC) + 4:len(MAGIC) + 4 + PREFIX]
        slots = [raw[_SLOTS_AT + i * SLOT:_SLOTS_AT + (i + 1) * SLOT] for i in (0, 1)]
        return cls(chunk or CHUNK, prefix, slots)

    def to_bytes(self) -> bytes:
        raw = MAGIC + self.chunk.to_bytes(4, "big") + self.prefix + b"\0" + b"".join(self.slots)
        return raw + bytes(HEADER - len(raw))

    def _aad(self, ident: bytes) -> bytes:
        return MAGIC + self.chunk.to_bytes(4, "big") + self.prefix + ident

    def seal_key(self, storage_key: bytes, data_key: bytes) -> bytes:
        ident, nonce = key_id(storage_key), os.urandom(NONCE)
        return ident + nonce + AESGCM(storage_key).encrypt(nonce, data_key, self._aad(ident))

    def slot_key(self, index: int) -> bytes:
        return self.slots[index][:ID_SIZE]

    def open_key(self, keys: StorageKeys) -> tuple[bytes, int]:
        """The data key and the slot that gave it; ``Tampered`` if no key of the keyring opens a slot."""
        current = key_id(keys.current)
        for index in sorted((0, 1), key=lambda i: self.slot_key(i) != current):  # the current key's seal first
            slot = self.slots[index]
            storage_key = keys.by_id(slot[:ID_SIZE]) if slot != _EMPTY_SLOT else None
            if storage_key is None:
                continue
            try:
                return AESGCM(storage_key).decrypt(slot[ID_SIZE:ID_SIZE + NONCE], slot[ID_SIZE + NONCE:], self._aad(slot[:ID_SIZE])), index
            except InvalidTag:
                continue
        raise Tampered(f"stored content cannot be opened: its data key is altered or sealed with a storage key not in {keys.source}")


def _encrypt(data_key: bytes, header: Header, chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield header.to_bytes()
    aead, index, pending = AESGCM(data_key), 0, b""
    for chunk in chunks:
        pending += chunk
        if len(pending) <= header.chunk:
            continue
        view, start = memoryview(pending), 0
        while len(pending) - start > header.chunk:  # a chunk is sealed only when more follows: the last is flagged
            yield aead.encrypt(_nonce(header.prefix, index, False), bytes(view[start:start + header.chunk]), None)
            start += header.chunk
            index += 1
        pending = bytes(view[start:])
    yield aead.encrypt(_nonce(header.prefix, index, True), pending, None)


class _Opened(io.RawIOBase):
    """The plaintext of a sealed object, one authenticated chunk at a time."""

    def __init__(self, raw: BinaryIO, data_key: bytes, header: Header, stored: int):
        self.raw, self.header, self.aead = raw, header, AESGCM(data_key)
        self.left, self.index, self.buffer, self.done = stored - HEADER, 0, b"", False

    def readable(self) -> bool:
        return True

    def _read_exactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            part = self.raw.read(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _next(self) -> None:
        want = min(self.header.chunk + TAG, self.left)
        data = self._read_exactly(want)
        self.left -= want
        last = self.left == 0
        self.buffer = _open_chunk(self.aead, self.header.prefix, self.index, data, want, last)
        self.index += 1
        self.done = last

    def readinto(self, target) -> int:
        while not self.buffer and not self.done:
            self._next()
        n = min(len(target), len(self.buffer))
        target[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class SealedContent(Content):
    """A stored object's plaintext: decrypted as it is read (content stored in the clear is passed through)."""

    def __init__(self, inner: Content, keys: StorageKeys):
        self.inner, self.keys = inner, keys
        self.header = Header.parse(inner.head(HEADER)) if inner.size >= HEADER else None
        self.size = inner.size if self.header is None else plain_size(inner.size, self.header.chunk)
        self._data_key: bytes | None = None  # opened once, when first needed

    def data_key(self) -> bytes:
        assert self.header is not None
        if self._data_key is None:
            self._data_key = self.header.open_key(self.keys)[0]
        return self._data_key

    def open(self) -> BinaryIO:
        if self.header is None:
            return self.inner.open()
        data_key = self.data_key()
        raw = self.inner.open()
        try:
            if len(raw.read(HEADER)) < HEADER:
                raise Tampered("stored content is truncated")
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(_Opened(raw, data_key, self.header, self.inner.size), buffer_size=CHUNK)

    def read(self, limit: int | None = None) -> bytes:
        """The plaintext (at most ``limit`` bytes), from one read of the chunks it needs, each authenticated as ``open`` does.

        A text's check reads its whole content on every ``/msg``: through
        ``open`` that is a buffered file, a raw stream under a second buffer
        and a read per chunk (some 40 us of a 1 KB text's 75); this reads the
        stored bytes once and opens the chunks in memory.
        """
        if self.header is None:
            return self.inner.read(limit)
        want = self.size if limit is None or limit < 0 else min(limit, self.size)  # a negative limit reads all, as a stream's
        if want > ONE_READ:
            return super().read(limit)  # a large read streams, chunk by chunk, and holds no stored copy beside the plaintext
        if limit == 0:
            return b""
        step = self.header.chunk + TAG
        chunks = max(1, -(-want // self.header.chunk))
        stored = self.inner.read(HEADER + chunks * step)
        if len(stored) < HEADER:
            raise Tampered("stored content is truncated")
        aead, left, plain = AESGCM(self.data_key()), self.inner.size - HEADER, []
        for index in range(chunks):
            start, size = HEADER + index * step, min(step, left)
            left -= size
            plain.append(_open_chunk(aead, self.header.prefix, index, stored[start:start + size], size, left == 0))
            if left == 0:
                break
        return b"".join(plain)[:want]


def _seal_name(data_key: bytes, name: str) -> str:
    nonce = os.urandom(NONCE)
    return NAME_MARK + base64.urlsafe_b64encode(nonce + AESGCM(data_key).encrypt(nonce, name.encode(), b"filename")).decode()


def _open_name(data_key: bytes, sealed: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(sealed[len(NAME_MARK):])
        return AESGCM(data_key).decrypt(raw[:NONCE], raw[NONCE:], b"filename").decode()
    except (ValueError, binascii.Error, InvalidTag):
        raise Tampered("the upload's stored file name failed authentication") from None


def seal_name(content: Content, name: str | None) -> str | None:
    """A message's file name as the store keeps it: sealed with its content's data key (rotation leaves it valid)."""
    if name is None or not isinstance(content, SealedContent) or content.header is None:
        return name
    return _seal_name(content.data_key(), name)


def open_name(content: Content, name: str | None) -> str | None:
    """The file name ``seal_name`` sealed (a name stored in the clear is returned as it is)."""
    if name is None or not name.startswith(NAME_MARK) or not isinstance(content, SealedContent) or content.header is None:
        return name
    return _open_name(content.data_key(), name)


class SealedSpool(Spool):
    """Any spool, with everything it stores sealed: content, and file names (``keys``: the storage keyring)."""

    def __init__(self, inner: Spool, keys: Keyring):
        self.inner, self.keys = inner, keys

    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        return self._sealed(self.inner.put, client, chunks, filename)

    def put_message(self, client: str, chunks: Iterable[bytes], filename: str, message_id: str) -> DataInfo:
        def put(client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
            return self.inner.put_message(client, chunks, filename, message_id)

        return self._sealed(put, client, chunks, filename)

    def _sealed(self, put: Callable[[str, Iterable[bytes], str], DataInfo], client: str, chunks: Iterable[bytes],
                filename: str) -> DataInfo:
        """``put`` the content and file name sealed with a fresh data key; the info speaks of the plaintext."""
        keys, data_key, header = self.keys.load(), AESGCM.generate_key(bit_length=256), Header.new()
        header.slots[0] = header.seal_key(keys.current, data_key)
        info = put(client, _encrypt(data_key, header, chunks), _seal_name(data_key, filename))
        return DataInfo(info.data_id, plain_size(info.size, header.chunk), filename, info.created_at)

    def get(self, client: str, data_id: str) -> DataInfo:
        return self.lookup(client, data_id)[0]

    def content(self, client: str, data_id: str) -> Content:
        return SealedContent(self.inner.content(client, data_id), self.keys.load())

    def lookup(self, client: str, data_id: str) -> tuple[DataInfo, Content]:
        info, inner = self.inner.lookup(client, data_id)
        content = SealedContent(inner, self.keys.load())
        if not info.filename.startswith(NAME_MARK):
            return info, content  # stored before encryption was on
        if content.header is None:
            raise Tampered("the upload's stored content has lost its header")
        return DataInfo(data_id, content.size, _open_name(content.data_key(), info.filename), info.created_at), content

    def attach(self, client: str, data_id: str, message_id: str) -> None:
        self.inner.attach(client, data_id, message_id)

    def message_content(self, client: str, message_id: str) -> Content:
        return SealedContent(self.inner.message_content(client, message_id), self.keys.load())

    def release(self, client: str, message_id: str) -> None:
        self.inner.release(client, message_id)

    def usage(self, client: str) -> int:
        return self.inner.usage(client)

    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        return self.inner.sweep(now, live, older_than)

    def rewrite_heads(self, size: int, change: Callable[[bytes], bytes | None]) -> int:
        return self.inner.rewrite_heads(size, change)

    # -- rotation -------------------------------------------------------------------
    def rewrap(self, keys: StorageKeys) -> dict[str, int]:
        """Seal every data key with ``keys.current`` (content untouched), then clear the older seals.

        Returns ``rewrapped`` (objects given a seal with the current key), ``cleared`` (older seals
        removed), ``on_old_keys`` (objects still opened only by an older key: run it again before
        dropping that key) and ``unreadable`` (objects no key opens).
        """
        current, counts = key_id(keys.current), {"rewrapped": 0, "cleared": 0, "on_old_keys": 0, "unreadable": 0}

        def opened(head: bytes) -> tuple[Header, bytes, int] | None:
            header = Header.parse(head)
            if header is None:
                return None
            try:
                return (header, *header.open_key(keys))
            except Tampered:
                counts["unreadable"] += 1
                return None

        def add_current(head: bytes) -> bytes | None:
            found = opened(head)
            if found is None:
                return None
            header, data_key, used = found
            if header.slot_key(used) == current:
                return None
            header.slots[1 - used] = header.seal_key(keys.current, data_key)
            counts["rewrapped"] += 1
            return header.to_bytes()

        def clear_old(head: bytes) -> bytes | None:
            found = opened(head)
            if found is None:
                return None
            header, _, used = found
            if header.slot_key(used) != current:
                counts["on_old_keys"] += 1  # stored after the first pass read it: sealed with an older key
                return None
            if header.slots[1 - used] == _EMPTY_SLOT:
                return None
            header.slots[1 - used] = _EMPTY_SLOT
            counts["cleared"] += 1
            return header.to_bytes()

        self.inner.rewrite_heads(HEADER, add_current)  # made durable object by object before the next pass
        counts["unreadable"] = 0  # counted again by the second pass
        self.inner.rewrite_heads(HEADER, clear_old)
        return counts
