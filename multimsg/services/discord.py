"""Discord, through a channel's webhook (kind ``discord``; setting ``webhook_url``).

``POST <webhook_url>?wait=true`` (``wait`` makes Discord answer with the
message, so its id is known), plus ``&thread_id=<dest>`` for a thread. ``dest``
is ``-`` (the webhook's own channel) or a thread id (a snowflake, 17 to 20
digits). The webhook URL holds the webhook's token: it is a secret.

- text: JSON ``{"content"}``, parts of 2000 characters;
- image, document, audio, video, voice: ``multipart/form-data`` with the file
  as ``files[0]`` and ``payload_json`` (``content`` = the caption,
  ``attachments: [{id: 0, filename}]``); any format, 10 MiB per file (the
  limit of a server without boosts).

Mentions are never parsed (``allowed_mentions: {parse: []}``): a message
cannot ping ``@everyone``. Webhooks are limited to about 5 requests per 2 s.

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
200 with the message's ``id``              delivered, with the message id
429                                        retry after the body's ``retry_after`` (or ``Retry-After``); the service slows down
5xx, timeout, connection error             retry
200 without an id                          retry
401, 403, 404 ``Unknown Webhook`` (10015)  misconfigured: the webhook URL was refused
404 ``Unknown Channel`` (a thread)         failed, with Discord's message
400, 413, any other 4xx                    failed, with Discord's message (or the HTTP status)
=========================================  ===========================================
"""

from __future__ import annotations

import json
import re

import requests

from ..multipart import MultipartBody
from .base import CONTENT_REFUSED, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none, seconds_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, sniff

__all__ = ["Discord"]

MIB = 1024 * 1024
UNKNOWN_WEBHOOK = 10015
NO_MENTIONS: dict[str, list[str]] = {"parse": []}


class Discord(ServiceBase):
    kind = "discord"
    webhook_url: str  # the settings, set from the ServiceConfig
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES})
    dest_format = "'-' (the webhook's channel) or a thread id (17 to 20 digits)"
    dest_pattern = re.compile(r"-|[1-9][0-9]{16,19}")
    rate = 2.5  # webhooks: 5 requests per 2 seconds
    credentials = {"webhook_url": "webhook_url"}
    secrets = frozenset({"webhook_url"})
    size_limits = {datatype: 10 * MIB for datatype in Datatypes.FILES}
    formats = {datatype: None for datatype in Datatypes.FILES}
    text_limit = 2000
    caption_limit = 2000
    caption_types = frozenset(Datatypes.FILES)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (5, 2.0)

    def _url(self, dest: str) -> str:
        url = self.webhook_url.strip()
        url += ("&" if "?" in url else "?") + "wait=true"
        return url if dest == "-" else f"{url}&thread_id={dest}"

    def send(self, data: dict) -> Outcome:
        url = self._url(data["dest"])
        if data["type"] == Datatypes.TEXT:
            try:
                texts = self.text_parts(data["content"])
            except CONTENT_REFUSED as exc:
                return Outcome.failed(f"{self.name}: {exc.reason}")
            parts = [self._text_part(url, text) for text in texts]
        else:
            parts = [lambda pace: self._send_file(url, data, pace)]
        return self.send_parts(data, parts)

    def _text_part(self, url: str, text: str):
        return lambda pace: self.post(url, self.classify, pace=pace, json={"content": text, "allowed_mentions": NO_MENTIONS})

    def _send_file(self, url: str, data: dict, pace) -> Outcome:
        mime = (sniff(data["content"]) or OCTET_STREAM).split(";")[0]
        filename = file_name(data, mime)
        payload = {"content": (data.get("options") or {}).get("caption") or "", "allowed_mentions": NO_MENTIONS,
                   "attachments": [{"id": 0, "filename": filename}]}
        with MultipartBody({"payload_json": json.dumps(payload, ensure_ascii=False)}, [("files[0]", filename, mime, data["content"])]) as body:
            return self.post(url, self.classify, pace=pace, data=body, headers={"Content-Type": body.content_type})

    def classify(self, response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        status = response.status_code
        message = str(body.get("message") or f"HTTP {status} {response.reason or ''}".strip())
        reason = f"{self.name}: {message}" + (f" (code {body['code']})" if "code" in body else "")
        if status == 200:
            if body.get("id"):
                return Outcome.delivered([str(body["id"])])
            return Outcome.retry(f"{self.name}: an answer without a message id")
        if status == 429:
            after = seconds_or_none(body.get("retry_after"))
            if after is None:
                after = seconds_or_none(response.headers.get("Retry-After"))
            return Outcome.retry(reason, after, throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(reason)
        if status in (401, 403) or (status == 404 and body.get("code", UNKNOWN_WEBHOOK) == UNKNOWN_WEBHOOK):
            return Outcome.misconfigured(f"{reason}: check the webhook URL")
        return Outcome.failed(reason)
