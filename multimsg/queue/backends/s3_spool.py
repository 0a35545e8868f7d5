"""Upload bytes in an S3-compatible object store, their bookkeeping in Redis (``MULTIMSG_BLOBS=s3://BUCKET/PREFIX``).

A peer of ``redis_spool`` for big media: the same keys in Redis (the upload
hash ``mm:{T}:d:<client>:<data id>``, the blob hash ``mm:{T}:blob:<blob id>``
with ``size``, ``refs`` and ``upload``, one reference per message
``mm:{T}:mref:<client>:<message id>``), but the blob hash holds no bytes: they
are one object, ``PREFIX<tag>/<blob id>``, in the bucket. Nothing is copied
when a message attaches an upload: the message's reference counts in the blob
hash; when the last reference is released (and the upload is gone) the blob
hash and then the object are deleted. A blob hash that expires with its upload
(no message took it) leaves its object behind: the sweep lists the objects
under the deployment's prefix and deletes those whose blob hash is gone (and
that are older than the sweep's threshold, so an upload in progress is never
touched).

Content streams from the object store (``get_object``'s body; a ranged read
for ``head``): a big file is never held in memory, neither on upload (a
multipart upload in parts of ``PART`` bytes) nor when sent.

``boto3`` is imported only here, and this module only when ``MULTIMSG_BLOBS``
names a bucket. Endpoint, region and credentials come from boto3's usual
settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``~/.aws/...``), plus ``MULTIMSG_S3_ENDPOINT_URL`` for a store other than AWS
(Google Cloud Storage's interoperability endpoint, MinIO, Ceph, ...).
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import BinaryIO, Iterable, cast
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

from ...errors import Unavailable
from ...ids import new_id
from ..spool import Content, DataInfo
from .redis import guarded, pipeline
from .redis_spool import RedisSpool

__all__ = ["S3Spool", "S3Content", "s3_client", "parse_s3_url", "PART"]

PART = 8 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB, except the last part)
UNREACHABLE = "the blob store is unreachable; try again"
_DOWN = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
         botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://BUCKET/PREFIX``; the prefix ends with ``/`` unless empty."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://BUCKET/PREFIX URL: {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, prefix + "/" if prefix else ""


def s3_client(endpoint_url: str | None = None, connect_timeout: float = 5.0, read_timeout: float = 30.0):
    """A boto3 S3 client; checksums only where the API requires them (other S3-compatible stores reject the new defaults)."""
    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout, retries={"max_attempts": 3, "mode": "standard"},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def s3_guarded(fn):
    """An unreachable object store is ``Unavailable`` (503), like an unreachable Redis."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _DOWN as exc:
            raise Unavailable(UNREACHABLE) from exc

    return wrapper


def _missing(exc: botocore.exceptions.ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class S3Content(Content):
    """One object's bytes, streamed from the store when opened."""

    def __init__(self, s3, bucket: str, key: str, size: int):
        self.s3, self.bucket, self.key, self.size = s3, bucket, key, size

    @s3_guarded
    def _get(self, **kw) -> BinaryIO:
        try:
            return cast(BinaryIO, self.s3.get_object(Bucket=self.bucket, Key=self.key, **kw)["Body"])
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(self.key) from None
            raise

    def open(self) -> BinaryIO:
        return self._get()

    def head(self, n: int = 8192) -> bytes:
        if self.size == 0 or n <= 0:
            return b""
        with self._get(Range=f"bytes=0-{min(n, self.size) - 1}") as body:
            return body.read(n)


class S3Spool(RedisSpool):
    def __init__(self, client, s3, bucket: str, prefix: str = "", tag: str = "mm", *, ttl: float):
        super().__init__(client, tag, ttl=ttl, blob_max=0)
        self.s3, self.bucket = s3, bucket
        prefix = prefix.strip("/")
        self.object_prefix = f"{prefix}/{tag}/" if prefix else f"{tag}/"  # one deployment's objects (its sweep lists only these)

    def object_key(self, blob_id: str) -> str:
        return self.object_prefix + blob_id

    @s3_guarded
    def _upload(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write the object, one part of ``PART`` bytes in memory at a time; its size."""
        size, pending, upload_id = 0, bytearray(), None
        parts: list[dict] = []
        try:
            for chunk in chunks:
                size += len(chunk)
                pending += chunk
                while len(pending) >= PART:
                    if upload_id is None:
                        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
                    number = len(parts) + 1
                    answer = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(pending[:PART]))
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    del pending[:PART]
            if upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(pending))
                return size
            if pending:
                number = len(parts) + 1
                answer = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(pending))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
            return size
        except BaseException:
            if upload_id is not None:
                try:
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except Exception:  # noqa: BLE001  (the sweep and the bucket's lifecycle rules clean up)
                    pass
            raise

    @guarded
    def put(self, client: str, chunks: Iterable[bytes], filename: str) -> DataInfo:
        data_id, blob_id = new_id(), new_id()
        blob, upload = self.keys.blob(blob_id), self.keys.upload(client, data_id)
        size = self._upload(self.object_key(blob_id), chunks)  # the object first: a crash here leaves an orphan the sweep removes
        created_at = time.time()
        pipe = pipeline(self.r, self.keys.ver, transaction=True)
        pipe.hset(blob, mapping={"size": size, "refs": 0, "upload": upload})
        pipe.pexpire(blob, self._ttl_ms)
        pipe.hset(upload, mapping={"blob": blob_id, "size": size, "filename": filename, "created_at": repr(created_at)})
        pipe.pexpire(upload, self._ttl_ms)
        pipe.zadd(self.keys.uploads(client), {f"{data_id}:{size}": created_at})
        pipe.execute()
        return DataInfo(data_id, size, filename, created_at)

    def _content(self, blob_id: str) -> Content | None:
        size = self.r.hget(self.keys.blob(blob_id), "size")
        if size is None:
            return None
        return S3Content(self.s3, self.bucket, self.object_key(blob_id), int(size))

    @guarded
    def release(self, client: str, message_id: str) -> None:
        gone = self._release_ref(client, message_id)
        if gone:
            self._delete(gone)

    @s3_guarded
    def _delete(self, blob_id: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.object_key(blob_id))

    @guarded
    @s3_guarded
    def _rewrite_head(self, key, size: int, change) -> int:
        """An object cannot be changed in place: it is written again (streamed, part by part) with its new head."""
        blob_id = (key.decode() if isinstance(key, bytes) else key)[len(self.keys.blob_prefix):]
        content = self._content(blob_id)
        if content is None or content.size < size:
            return 0
        new = change(content.head(size))
        if new is None:
            return 0
        with content.open() as stream:
            stream.read(size)
            self._upload(self.object_key(blob_id), itertools.chain([new], iter(lambda: stream.read(PART), b"")))
        return 1

    @guarded
    @s3_guarded
    def sweep(self, now: float, live: Iterable[str] | None = None, older_than: float = 3600.0) -> int:
        """Release orphan message references (as ``RedisSpool``), then delete objects whose blob hash is gone.

        One object at a time (``delete_object``): Google Cloud Storage's S3
        endpoint has no multi-object delete.
        """
        removed = super().sweep(now, live, older_than)
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.object_prefix)
        for page in pages:
            old = [item["Key"] for item in page.get("Contents", []) if now - item["LastModified"].timestamp() > older_than]
            if not old:
                continue
            pipe = pipeline(self.r, self.keys.ver)
            for key in old:
                pipe.exists(self.keys.blob(key[len(self.object_prefix):]))
            for key, exists in zip(old, pipe.execute()):
                if not exists:
                    self.s3.delete_object(Bucket=self.bucket, Key=key)
                    removed += 1
        return removed
