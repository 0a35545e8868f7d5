"""The Redis backend's spool: upload bytes in Redis itself, with the data TTL as Redis expiry.

An upload is a *blob* (``mm:{T}:blob:<blob id>``: one hash, the content in
chunks of ``CHUNK`` bytes as fields ``0``, ``1``, ..., plus ``size``,
``refs`` and ``upload``) and a small *upload* hash
(``mm:{T}:d:<client>:<data id>``: blob id, size, filename, created_at). Both
expire after the data TTL. Each message gets its own reference
(``mm:{T}:mref:<client>:<message id>`` -> blob id, no expiry); the first
reference makes the blob persistent, the last one released lets it expire
with its upload (or deletes it at once if the upload is gone already). So an
upload may expire while queued messages keep their content, and nothing is
copied.

Redis holds the bytes in memory: an upload is capped at ``blob_max`` bytes
(``MULTIMSG_REDIS_BLOB_MAX``, 20 MB by default); above it, ``TooLarge``.
"""

from __future__ import annotations

import io
import json
import time
from typing import BinaryIO, Callable, Iterable

from ...errors import NotFound, TooLarge, Unavailable
from ...ids import new_id
from ..spool import Content, DataInfo, Spool
from .redis import TRIES, guarded, pipeline
from .redis_scripts import ATTACH, RELEASE, Keys

__all__ = ["RedisSpool", "RedisContent", "CHUNK", "BLOB_MAX"]

CHUNK = 1 << 20  # bytes per hash field
BLOB_MAX = 20 * 1000 * 1000
EXPIRED = "data id has expired; upload the file again"


class RedisContent(Content):
    """A blob's bytes, read from Redis when opened."""

    def __init__(self, client, key: str, size: int, chunks: int):
        self.r, self.key, self.size, self.chunks = client, key, size, chunks

    @guarded
    def _chunks(self, first: int, last: int) -> list[bytes]:
        parts = self.r.hmget(self.key, [str(i) for i in range(first, last)]) if last > first else []
        if any(part is None for part in parts):
            raise FileNotFoundError(self.key)
        return parts

    def open(self) -> BinaryIO:
        return io.BytesIO(b"".join(self._chunks(0, self.chunks)))

    def head(self, n: int = 8192) -> bytes:
        return b"".join(self._chunks(0, min(self.chunks, n // CHUNK + 1)))[:n]


class RedisSpool(Spool):
    def __init__(self, client, tag: str = "mm", *, ttl: float, blob_max: int = BLOB_MAX):
        self.r = client
        self.keys = Keys(tag)
        self.ttl = ttl
        self.blob_max = blob_max
        self._attach = client.register_script(ATTACH)
        self._release = client.register_script(RELEASE)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @guarded
    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        data_id, blob_id = new_id(), new_id()
        blob, upload = self.keys.blob(blob_id), self.keys.upload(client, data_id)
        size, index, pending = 0, 0, bytearray()
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > self.blob_max:
                    raise TooLarge(f"upload over {self.blob_max} bytes, the most the shared store (Redis) keeps")
                pending += chunk
                while len(pending) >= CHUNK:
                    self._store_chunk(blob, index, bytes(pending[:CHUNK]))
                    del pending[:CHUNK]
                    index += 1
            if pending or index == 0:
                self._store_chunk(blob, index, bytes(pending))
                index += 1
        except BaseException:
            self.r.delete(blob)
            raise
        created_at = time.time()
        pipe = pipeline(self.r, self.keys.ver, transaction=True)
        pipe.hset(blob, mapping={"size": size, "chunks": index, "refs": 0, "upload": upload})
        pipe.pexpire(blob, self._ttl_ms)
        pipe.hset(upload, mapping={"blob": blob_id, "size": size, "filename": filename, "created_at": repr(created_at)})
        pipe.pexpire(upload, self._ttl_ms)
        pipe.zadd(self.keys.uploads(client), {f"{data_id}:{size}": created_at})
        pipe.execute()
        return DataInfo(data_id, size, filename, created_at)

    def _store_chunk(self, blob: str, index: int, data: bytes) -> None:
        pipe = pipeline(self.r, self.keys.ver, transaction=True)
        pipe.hset(blob, str(index), data)
        pipe.pexpire(blob, self._ttl_ms)  # a crash halfway leaves nothing that lasts
        pipe.execute()

    def _meta(self, client: str, data_id: str) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.upload(client, data_id))
        if not raw:
            raise NotFound("unknown data id (or expired; upload the file again)")
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        if time.time() - float(meta["created_at"]) > self.ttl:
            raise NotFound(EXPIRED)
        return meta

    def _content(self, blob_id: str) -> Content | None:
        key = self.keys.blob(blob_id)
        size, chunks = self.r.hmget(key, ["size", "chunks"])
        if size is None or chunks is None:
            return None
        return RedisContent(self.r, key, int(size), int(chunks))

    @guarded
    def get(self, client: str, data_id: str) -> DataInfo:
        return self._info(data_id, self._meta(client, data_id))

    @staticmethod
    def _info(data_id: str, meta: dict) -> DataInfo:
        return DataInfo(data_id, int(meta["size"]), meta["filename"], float(meta["created_at"]))

    @guarded
    def content(self, client: str, data_id: str) -> Content:
        return self.lookup(client, data_id)[1]

    @guarded
    def lookup(self, client: str, data_id: str) -> tuple[DataInfo, Content]:
        meta = self._meta(client, data_id)
        content = self._content(meta["blob"])
        if content is None:
            raise NotFound(EXPIRED)
        return self._info(data_id, meta), content

    @guarded
    def attach(self, client: str, data_id: str, message_id: str) -> None:
        blob_id = self._meta(client, data_id)["blob"]
        keys = [self.keys.upload(client, data_id), self.keys.blob(blob_id), self.keys.message_ref(client, message_id), self.keys.refs]
        if not self._attach(keys=keys, args=[json.dumps([client, message_id]), repr(time.time())]):
            raise NotFound(EXPIRED)

    @guarded
    def message_content(self, client: str, message_id: str) -> Content:
        blob_id = self.r.get(self.keys.message_ref(client, message_id))
        content = None if blob_id is None else self._content(blob_id.decode())
        if content is None:
            raise FileNotFoundError(message_id)
        return content

    @guarded
    def release(self, client: str, message_id: str) -> None:
        self._release_ref(client, message_id)

    def _release_ref(self, client: str, message_id: str) -> str | None:
        """Drop the message's reference; the blob id if that deleted the blob."""
        ref = self.keys.message_ref(client, message_id)
        for _ in range(TRIES):
            raw = self.r.get(ref)
            blob_id = raw.decode() if raw is not None else ""
            blob = self.keys.blob(blob_id) if raw is not None else self.keys.nothing
            upload = self.r.hget(blob, "upload") if raw is not None else None
            keys = [ref, self.keys.refs, blob, upload.decode() if upload else self.keys.nothing]
            result = self._release(keys=keys, args=[json.dumps([client, message_id]), blob_id])
            if result != -1:
                return result.decode() if isinstance(result, bytes) else None
        raise Unavailable("the shared store is too busy with this message; try again")

    @guarded
    def rewrite_heads(self, size: int, change: Callable[[bytes], bytes | None]) -> int:
        """Only the first chunk (field ``0``) of each blob is read and written back."""
        changed = 0
        for key in self.r.scan_iter(match=self.keys.blob_prefix + "*", count=1000):
            changed += self._rewrite_head(key, size, change)
        return changed

    def _rewrite_head(self, key, size: int, change: Callable[[bytes], bytes | None]) -> int:
        first = self.r.hget(key, "0")
        new = change(first[:size]) if first is not None and len(first) >= size else None
        if new is None:
            return 0
        self.r.hset(key, "0", new + first[size:])
        return 1

    @guarded
    def usage(self, client: str) -> int:
        key = self.keys.uploads(client)
        self.r.zremrangebyscore(key, "-inf", repr(time.time() - self.ttl))  # expired uploads
        return sum(int(member.rsplit(b":", 1)[1]) for member in self.r.zrange(key, 0, -1))

    @guarded
    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        """Redis expires uploads itself; this releases message references whose message is not stored."""
        if live is None:
            return 0
        keep = set(live)
        removed = 0
        for member in self.r.zrangebyscore(self.keys.refs, "-inf", repr(now - older_than)):
            client, message_id = json.loads(member)
            if message_id not in keep:
                self.release(client, message_id)
                removed += 1
        return removed
