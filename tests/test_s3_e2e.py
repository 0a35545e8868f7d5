"""A runner whose upload bytes live on a local S3-compatible server (moto) and whose store is a real redis-server.

Upload, queue and drain through the runner's HTTP API with ``MULTIMSG_BLOBS=s3://BUCKET/PREFIX``: the
bytes the Telegram emulator receives are the uploaded ones, byte for byte (a file over one multipart
part), nothing of them is in Redis, the bucket holds them sealed (``queue/sealed.py``), and the object is deleted once the message is reported and archived.
"""

from __future__ import annotations

import hashlib

from multimsg.queue.sealed import plain_size
from tests.gatewayproc import Gateway
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)
from tests.s3_support import S3_ENV, s3_bucket, s3_server  # noqa: F401  (fixtures)


def test_upload_msg_drain_with_blobs_on_s3_arrive_byte_for_byte(tmp_path, gateway_env, redis_url, s3_server, s3_bucket, telegram):
    import redis

    env = {**gateway_env, **S3_ENV, "MULTIMSG_BACKEND": redis_url, "MULTIMSG_BLOBS": f"s3://{s3_bucket}/media",
           "MULTIMSG_S3_ENDPOINT_URL": s3_server.url, "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0", "MULTIMSG_TELEGRAM_RATE": "0"}
    content = bytes(range(256)) * (9 * 1024 * 1024 // 256) + b"end"  # over one 8 MiB part: a multipart upload
    with Gateway(tmp_path / "a", env) as runner:
        message_id = runner.send(content, "telegram", "4343", type="document", filename="big.bin")
        s3 = s3_server.client()
        [item] = s3.list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert item["Key"].startswith("media/mm/") and plain_size(item["Size"]) == len(content)
        stored = s3.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()  # the bucket holds it sealed
        assert bytes(range(256)) not in stored and b"big.bin" not in stored
        client = redis.Redis.from_url(redis_url)
        assert sum(client.memory_usage(k) or 0 for k in client.keys("*")) < 1024 * 1024  # the bytes are not in Redis

        assert runner.wait_state(message_id)["state"] == "delivered"
        [sent] = telegram.wait_for(lambda r: str(r["dest"]) == "4343")
        upload = sent["files"]["document"]
        assert upload["sha256"] == hashlib.sha256(content).hexdigest() and upload["size"] == len(content)
        assert runner.cons(message_id).status_code == 404  # archived (no grace in these tests): its reference released
        assert client.keys("mm:{mm}:mref:*") == []
        [blob] = client.keys("mm:{mm}:blob:*")
        assert client.hget(blob, "refs") == b"0" and client.pttl(blob) > 0  # no reference left: it goes with its upload
