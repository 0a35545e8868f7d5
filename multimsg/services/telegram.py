"""Telegram, through the Bot API (``https://api.telegram.org/bot<token>/<method>``).

Datatypes, the method each goes out with (and its file field), what its
content must be (sniffed) and its size limit (facts: the Bot API documentation):

- text: ``sendMessage``; UTF-8, parts of 4096 UTF-16 code units;
- image: ``sendPhoto`` (``photo``); JPEG, PNG, WebP; 10 MB;
- document: ``sendDocument`` (``document``); any file; 50 MB;
- audio: ``sendAudio`` (``audio``); MP3, M4A; 50 MB;
- video: ``sendVideo`` (``video``); MP4; 50 MB;
- voice: ``sendVoice`` (``voice``); OGG/Opus; 50 MB.

Files go as ``multipart/form-data`` with ``chat_id``, the file part (named
after the method's parameter, with the file name) and ``caption`` if given.

Answers are classified by this table:

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
200 ``ok: true``                           delivered, with ``result.message_id``
429                                        retry after ``parameters.retry_after`` (or ``Retry-After``)
5xx, timeout, connection error             retry
200 that is not ``ok`` or not JSON         retry
401, 404 (the token or the URL)            misconfigured: the message stays queued
400 ``chat not found``                     failed, with the platform's ``description``
403 ``bot was blocked by the user``        failed, with the platform's ``description``
400 ``message is too long``                failed, with the platform's ``description``
any other 4xx (413 too, even as HTML)      failed, with the ``description`` (or the HTTP status)
=========================================  ===========================================
"""

from __future__ import annotations

import re

import requests

from ..multipart import MultipartBody
from .base import CONTENT_REFUSED, MB, Outcome, ServiceBase, file_name, json_or_none, seconds_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, OGG_OPUS, sniff

__all__ = ["Telegram"]

# datatype -> (method, file field)
METHODS = {
    Datatypes.IMAGE: ("sendPhoto", "photo"),
    Datatypes.DOCUMENT: ("sendDocument", "document"),
    Datatypes.AUDIO: ("sendAudio", "audio"),
    Datatypes.VIDEO: ("sendVideo", "video"),
    Datatypes.VOICE: ("sendVoice", "voice"),
}



class Telegram(ServiceBase):
    kind = "telegram"
    datatypes = frozenset({Datatypes.TEXT, *METHODS})
    dest_format = "a chat id (an integer, negative for groups) or @channelusername"
    dest_pattern = re.compile(r"-?[1-9][0-9]{0,19}|@[A-Za-z][A-Za-z0-9_]{3,31}")
    rate = 30.0  # Bots FAQ: about 30 messages per second for bulk notifications
    credentials = {"token": "token"}
    options = {"api_url": ("api_url", "https://api.telegram.org")}

    size_limits = {
        Datatypes.IMAGE: 10 * MB,  # multipart photo uploads
        Datatypes.DOCUMENT: 50 * MB,
        Datatypes.AUDIO: 50 * MB,
        Datatypes.VIDEO: 50 * MB,
        Datatypes.VOICE: 50 * MB,
    }
    formats = {
        Datatypes.IMAGE: frozenset({"image/jpeg", "image/png", "image/webp"}),
        Datatypes.DOCUMENT: None,
        Datatypes.AUDIO: frozenset({"audio/mpeg", "audio/mp4"}),  # "must be in the .MP3 or .M4A format"
        Datatypes.VIDEO: frozenset({"video/mp4"}),  # clients play MPEG-4; other formats go as documents
        Datatypes.VOICE: frozenset({OGG_OPUS}),  # only OGG/Opus shows as a voice note
    }
    text_limit = 4096
    text_measure = "utf16_units"
    caption_limit = 1024
    caption_types = frozenset(METHODS)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        # Bots FAQ: about 1 message per second in one chat, 20 per minute in a group.
        if dest.startswith("-") or dest.startswith("@"):
            return (20, 60.0)
        return (1, 1.0)

    def _url(self, method: str) -> str:
        return f"{self.api_url.rstrip('/')}/bot{self.token}/{method}"

    def send(self, data: dict) -> Outcome:
        if data["type"] == Datatypes.TEXT:
            try:
                parts = [self._text_part(data["dest"], text) for text in self.text_parts(data["content"])]
            except CONTENT_REFUSED as exc:  # the stored text no longer passes (it did at /msg)
                return Outcome.failed(f"{self.name}: {exc.reason}")
        else:
            parts = [lambda pace: self._send_file(data, pace)]
        return self.send_parts(data, parts)

    def _text_part(self, dest: str, text: str):
        return lambda pace: self.post(self._url("sendMessage"), self.classify, pace=pace, data={"chat_id": dest, "text": text})

    def _send_file(self, data: dict, pace) -> Outcome:
        method, file_field = METHODS[data["type"]]
        mime = sniff(data["content"]) or OCTET_STREAM
        fields = {"chat_id": data["dest"]}
        caption = (data.get("options") or {}).get("caption")
        if caption:
            fields["caption"] = caption
        filename = file_name(data, mime)
        with MultipartBody(fields, [(file_field, filename, mime.split(";")[0], data["content"])]) as body:
            return self.post(self._url(method), self.classify, pace=pace, data=body, headers={"Content-Type": body.content_type})

    def classify(self, response: requests.Response) -> Outcome:
        body = json_or_none(response)
        status = response.status_code
        description = str((body or {}).get("description") or f"HTTP {status} {response.reason or ''}".strip())
        if status == 200:
            result = (body or {}).get("result")
            if (body or {}).get("ok") is True and isinstance(result, dict) and "message_id" in result:
                return Outcome.delivered([str(result["message_id"])])
            return Outcome.retry(f"{self.name}: an answer that is not a sent message")
        if status == 429:
            parameters = (body or {}).get("parameters") or {}
            after = parameters.get("retry_after") or response.headers.get("Retry-After")
            return Outcome.retry(f"{self.name}: {description}", seconds_or_none(after))
        if status >= 500:
            return Outcome.retry(f"{self.name}: {description}")
        if status == 401:
            return Outcome.misconfigured(f"{self.name}: the bot token was refused ({description})")
        if status == 404:  # Telegram's answer to a malformed token, or a wrong MULTIMSG_TELEGRAM_API_URL
            return Outcome.misconfigured(f"{self.name}: the bot token or the API URL was refused ({description})")
        return Outcome.failed(f"{self.name}: {description}")

