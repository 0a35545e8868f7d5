"""Signal, through a self-hosted signal-cli-rest-api (``POST <api_url>/v2/send``).

signal-cli-rest-api (github.com/bbernhard/signal-cli-rest-api) runs signal-cli
linked to, or registered as, one Signal account: the instance's ``number``.
A message is one JSON body::

    {"message": "...", "number": "+4915...", "recipients": ["+4917..."],
     "base64_attachments": ["data:image/png;filename=photo.png;base64,iVBOR..."]}

Datatypes, and what their content must be (sniffed); the limit is Signal's
attachment limit (100 MiB, stated as 100 MB here: the stricter reading):

- text: ``message``; UTF-8, parts of 2000 characters (Signal clients send a
  longer text as a "long text" attachment; multimsg sends ordered parts instead);
- image: JPEG, PNG, GIF, WebP; document: any file; audio: MP3, M4A, OGG, AAC;
  video: MP4, 3GPP; each one attachment, with ``caption`` as the message text.

Attachments are sent as data URIs with their MIME type and file name; the
JSON body is streamed (base64 encoded block by block as the socket takes it),
never held in memory whole.

Answers are classified by this table:

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
200/201 with ``timestamp``                 delivered, with the timestamp (Signal's message id)
429 with ``challenge_tokens``              misconfigured: the account needs a captcha
                                           (signal-cli ``submitRateLimitChallenge``); the message waits
429 without challenge                      retry later; the whole service slows down
5xx, timeout, connection error             retry
200/201 without a timestamp                retry
400 "Specified account does not exist"     misconfigured (``number`` is not an account of this API)
404                                        misconfigured (``api_url`` is not a signal-cli-rest-api)
400 unregistered / unknown recipient       failed, with the API's ``error``
any other 4xx                              failed, with the API's ``error`` (or the HTTP status)
=========================================  ===========================================

"delivered" means signal-cli handed the message to Signal's servers for every
recipient device it knows; Signal's delivery receipts are not read.
"""

from __future__ import annotations

import base64
import json
import re
from typing import BinaryIO

import requests

from ..content import Content
from .base import CONTENT_REFUSED, MB, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, OGG_OPUS, sniff

__all__ = ["Signal", "Base64JsonBody"]

CHUNK = 3 * 64 * 1024  # a multiple of 3: each block encodes to base64 without padding


class Base64JsonBody:
    """A JSON object whose last member is a list holding one base64 data URI of ``content``.

    ``prefix`` + quote + URI head + base64 of the content (streamed) + quote + ``suffix``;
    a plain readable object with ``__len__``, as ``multipart.MultipartBody`` is.
    """

    def __init__(self, fields: dict, key: str, uri_head: str, content: Content):
        opening = json.dumps(fields, ensure_ascii=False)[:-1]
        separator = ", " if fields else ""
        self.prefix = f"{opening}{separator}{json.dumps(key)}: [\"{uri_head}".encode()
        self.suffix = b"\"]}"
        self.content = content
        self.encoded = 4 * ((content.size + 2) // 3)
        self.total = len(self.prefix) + self.encoded + len(self.suffix)
        self._stage = 0  # 0 prefix, 1 content, 2 suffix, 3 done
        self._stream: BinaryIO | None = None
        self._pending = b""

    def __len__(self) -> int:
        return self.total

    def read(self, size: int = -1) -> bytes:
        if self._stage == 0:
            self._stage = 1
            self._stream = self.content.open()
            return self.prefix
        if self._stage == 1:
            assert self._stream is not None
            block = self._stream.read(CHUNK)
            if block:
                return base64.b64encode(block)
            self._stream.close()
            self._stage = 2
        if self._stage == 2:
            self._stage = 3
            return self.suffix
        return b""

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> "Base64JsonBody":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Signal(ServiceBase):
    kind = "signal"
    datatypes = frozenset({Datatypes.TEXT, Datatypes.IMAGE, Datatypes.DOCUMENT, Datatypes.AUDIO, Datatypes.VIDEO})
    dest_format = ("a phone number in international format with '+' (+4915112345678), "
                   "a Signal user's UUID, or a group id as signal-cli-rest-api lists it (group.<base64>)")
    dest_pattern = re.compile(
        r"\+[1-9][0-9]{6,14}"
        r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        r"|group\.[A-Za-z0-9+/=]{4,200}"
    )
    # Signal publishes no rate; its servers answer 429 (with a captcha challenge) to bursts.
    # One message a second for the account, one per second per chat, is what signal-cli users run.
    rate = 1.0
    credentials = {"api_url": "api_url", "number": "number"}
    api_url: str  # set from the ServiceConfig (base.ServiceBase.__init__)
    number: str

    size_limits = {datatype: 100 * MB for datatype in (Datatypes.IMAGE, Datatypes.DOCUMENT, Datatypes.AUDIO, Datatypes.VIDEO)}
    formats = {
        Datatypes.IMAGE: frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"}),
        Datatypes.DOCUMENT: None,
        Datatypes.AUDIO: frozenset({"audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", OGG_OPUS}),
        Datatypes.VIDEO: frozenset({"video/mp4", "video/3gpp"}),
    }
    text_limit = 2000
    text_measure = "characters"
    caption_limit = 2000
    caption_types = frozenset({Datatypes.IMAGE, Datatypes.DOCUMENT, Datatypes.AUDIO, Datatypes.VIDEO})

    def _url(self) -> str:
        return f"{self.api_url.rstrip('/')}/v2/send"

    def send(self, data: dict) -> Outcome:
        if data["type"] == Datatypes.TEXT:
            try:
                parts = [self._text_part(data["dest"], text) for text in self.text_parts(data["content"])]
            except CONTENT_REFUSED as exc:
                return Outcome.failed(f"signal: {exc.reason}")
        else:
            parts = [lambda pace: self._send_file(data, pace)]
        return self.send_parts(data, parts)

    def _fields(self, dest: str, message: str) -> dict:
        return {"message": message, "number": self.number, "recipients": [dest]}

    def _text_part(self, dest: str, text: str):
        body = json.dumps(self._fields(dest, text), ensure_ascii=False).encode("utf-8")
        return lambda pace: self.post(self._url(), self.classify, pace=pace, data=body, headers={"Content-Type": "application/json"})

    def _send_file(self, data: dict, pace) -> Outcome:
        mime = (sniff(data["content"]) or OCTET_STREAM).split(";")[0]
        name = file_name(data, mime)
        # The data URI's parameters are separated by ';' and end at ','; neither may be in the name.
        safe_name = re.sub(r"[;,\"\\\x00-\x1f]", "_", name)
        caption = (data.get("options") or {}).get("caption") or ""
        with Base64JsonBody(self._fields(data["dest"], caption), "base64_attachments",
                            f"data:{mime};filename={safe_name};base64,", data["content"]) as body:
            return self.post(self._url(), self.classify, pace=pace, data=body, headers={"Content-Type": "application/json"})

    @staticmethod
    def classify(response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        status = response.status_code
        error = str(body.get("error") or f"HTTP {status} {response.reason or ''}".strip())
        if status in (200, 201):
            timestamp = body.get("timestamp")
            if timestamp:
                return Outcome.delivered([str(timestamp)])
            return Outcome.retry("signal: an answer that is not a sent message")
        if status == 429:
            if body.get("challenge_tokens"):
                return Outcome.misconfigured(
                    "signal: the account needs a captcha (Signal rate limit challenge); solve it and submit it with "
                    f"signal-cli submitRateLimitChallenge, then the messages go out ({error})")
            return Outcome.retry(f"signal: {error}", throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(f"signal: {error}")
        if status == 404:
            return Outcome.misconfigured(f"signal: the API URL was refused ({error})")
        if status == 400 and "account does not exist" in error.lower():
            return Outcome.misconfigured(f"signal: the number is not an account of this signal-cli-rest-api ({error})")
        return Outcome.failed(f"signal: {error}")
