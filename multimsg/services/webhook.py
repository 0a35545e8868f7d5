"""A signed webhook (kind ``webhook``): each message is POSTed to the instance's ``url``.

Settings: ``url`` (where to POST; treated as a secret, as URLs often carry a
token) and ``secret`` (``whsec_`` followed by base64, as Standard Webhooks
writes them). ``dest`` is a label handed to the receiver (letters, digits and
``. _ : @ + -``, at most 128; ``-`` when there is nothing to say).

Bodies (the Standard Webhooks payload shape, ``{"type", "timestamp", "data"}``):

- text: ``application/json``, ``data: {id, serv, dest, datatype, text}``; one
  request whatever its length (at most 512 KB);
- image, document, audio, video, voice: ``multipart/form-data`` with a
  ``payload`` field (the same JSON, with ``caption``, ``filename``, ``size``)
  and the file as ``file`` (its file name and sniffed MIME type); 25 MB.

Every request carries the Standard Webhooks headers: ``webhook-id``
(``msg_<message id>``: the same on every retry, so a receiver can drop a
repeat), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed by the
secret's decoded bytes).

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
2xx                                        delivered, with the webhook-id
410 Gone                                   misconfigured: the receiver disabled this endpoint
429, 502, 504                              retry after ``Retry-After``; the whole service slows down
other 5xx, timeout, connection error       retry
any other 4xx                              failed, with the HTTP status
a secret that is not ``whsec_<base64>``    misconfigured
=========================================  ===========================================
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time

import requests

from ..errors import MultimsgError
from ..multipart import MultipartBody
from .base import MB, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, read_text, seconds_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, sniff

__all__ = ["Webhook", "sign"]

THROTTLING = frozenset({429, 502, 504})


def sign(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    digest = hmac.new(secret, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Webhook(ServiceBase):
    kind = "webhook"
    url: str  # the settings, set from the ServiceConfig
    secret: str
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES})
    dest_format = "a label for the receiver: letters, digits, '.', '_', ':', '@', '+' or '-' (at most 128)"
    dest_pattern = re.compile(r"[A-Za-z0-9._:@+-]{1,128}")
    rate = 50.0  # a receiver of our own choosing: pace it gently
    credentials = {"url": "url", "secret": "secret"}
    secrets = frozenset({"url", "secret"})
    size_limits = {datatype: 25 * MB for datatype in Datatypes.FILES}
    formats = {datatype: None for datatype in Datatypes.FILES}
    text_limit = 512 * 1024  # one request: a text is never split
    max_text_parts = 1
    caption_types = frozenset(Datatypes.FILES)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (50, 1.0)

    def _key(self) -> bytes | None:
        secret = (self.secret or "").strip()
        if not secret.startswith("whsec_"):
            return None
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True) or None
        except (binascii.Error, ValueError):
            return None

    def send(self, data: dict) -> Outcome:
        return self.send_parts(data, [lambda pace: self._post(data, pace)])

    def _payload(self, data: dict) -> dict:
        return {"type": f"message.{data['type']}", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "data": {"id": data["id"], "serv": self.name, "dest": data["dest"], "datatype": data["type"]}}

    def _post(self, data: dict, pace) -> Outcome:
        key = self._key()
        if key is None:
            return Outcome.misconfigured(f"{self.name}: the secret must be whsec_ followed by base64 (as Standard Webhooks writes it)")
        payload = self._payload(data)
        try:
            if data["type"] == Datatypes.TEXT:
                payload["data"]["text"] = read_text(data["content"])
                body, content_type = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
            else:
                mime = (sniff(data["content"]) or OCTET_STREAM).split(";")[0]
                filename = file_name(data, mime)
                payload["data"].update(caption=(data.get("options") or {}).get("caption"), filename=filename, size=data["content"].size)
                with MultipartBody({"payload": json.dumps(payload, ensure_ascii=False)}, [("file", filename, mime, data["content"])]) as multipart:
                    body, content_type = _read_all(multipart), multipart.content_type
        except MultimsgError as exc:
            return Outcome.failed(f"{self.name}: {exc.reason}")
        webhook_id, timestamp = f"msg_{data['id']}", int(time.time())
        headers = {"Content-Type": content_type, "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(key, webhook_id, timestamp, body)}
        return self.post(self.url, lambda response: self.classify(response, webhook_id), pace=pace, data=body, headers=headers)

    def classify(self, response: requests.Response, webhook_id: str = "") -> Outcome:
        status = response.status_code
        reason = f"{self.name}: HTTP {status} {response.reason or ''}".strip()
        if 200 <= status < 300:
            return Outcome.delivered([webhook_id or str(status)])
        if status == 410:
            return Outcome.misconfigured(f"{reason}: the receiver disabled this endpoint")
        if status in THROTTLING:
            return Outcome.retry(reason, seconds_or_none(response.headers.get("Retry-After")), throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(reason, seconds_or_none(response.headers.get("Retry-After")))
        return Outcome.failed(reason)


def _read_all(body: MultipartBody) -> bytes:
    chunks = []
    while chunk := body.read():
        chunks.append(chunk)
    return b"".join(chunks)
