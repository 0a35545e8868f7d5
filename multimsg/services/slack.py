"""Slack, through the Web API with a bot token (kind ``slack``; settings ``token``, ``api_url``).

``dest`` is a channel id (``C…``, ``G…`` or a DM's ``D…``); the bot must be a
member of the channel. Every call carries ``Authorization: Bearer <token>``.

- text: ``chat.postMessage`` (JSON ``{channel, text}``), parts of 4000
  characters (Slack's advice; it truncates at 40,000);
- image, document, audio, video, voice: the external upload flow, any format,
  up to 1 GB: ``files.getUploadURLExternal`` (``filename``, ``length``) gives an
  ``upload_url`` and a ``file_id``; the bytes are POSTed to ``upload_url``
  (multipart, field ``file``); ``files.completeUploadExternal`` (JSON
  ``{files: [{id, title}], channel_id, initial_comment}``, the caption as the
  comment) shares it in the channel. The file id is kept with the message as
  soon as the bytes are up (as its platform id), so a retry after a failed
  completion completes that file rather than uploading it again.

Slack answers HTTP 200 with ``ok: false`` and an ``error`` for most failures:

==============================================  ===========================================
answer                                          outcome
==============================================  ===========================================
``ok: true``                                    delivered, with the message ``ts`` (text) or the file id
``file_not_found`` completing a file an         the file is uploaded again (once) and completed
earlier attempt uploaded
HTTP 429                                        retry after ``Retry-After``; the whole service slows down
``ratelimited``                                 retry after ``Retry-After``; the whole service slows down
HTTP 5xx, timeout, connection error             retry
a 200 that is not JSON, a failed byte upload    retry
``invalid_auth``, ``not_authed``,               misconfigured: the message stays queued
``account_inactive``, ``token_revoked``,
``token_expired``, ``missing_scope``
``channel_not_found``, ``not_in_channel``,      failed, with Slack's error
``is_archived``, any other error
==============================================  ===========================================
"""

from __future__ import annotations

import re

import requests

from ..errors import MultimsgError
from ..multipart import MultipartBody
from .base import MB, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none, seconds_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, sniff

__all__ = ["Slack"]

CONFIG_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                           "missing_scope", "not_allowed_token_type", "no_permission", "team_access_not_granted"})
RATE_ERRORS = frozenset({"ratelimited", "rate_limited"})


class Slack(ServiceBase):
    kind = "slack"
    token: str  # the settings, set from the ServiceConfig
    api_url: str
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES})
    dest_format = "a channel id (C…, G… or D… and 8 to 20 capital letters and digits)"
    dest_pattern = re.compile(r"[CDG][A-Z0-9]{8,20}")
    rate = 10.0  # chat.postMessage: a special tier, about 1 per second per channel with short bursts
    credentials = {"token": "token"}
    options = {"api_url": ("api_url", "https://slack.com/api")}
    size_limits = {datatype: 1000 * MB for datatype in Datatypes.FILES}
    formats = {datatype: None for datatype in Datatypes.FILES}
    text_limit = 4000
    caption_limit = 4000
    caption_types = frozenset(Datatypes.FILES)

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (1, 1.0)

    def _method(self, method: str) -> str:
        return f"{self.api_url.rstrip('/')}/{method}"

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def send(self, data: dict) -> Outcome:
        if data["type"] == Datatypes.TEXT:
            try:
                texts = self.text_parts(data["content"])
            except MultimsgError as exc:
                return Outcome.failed(f"{self.name}: {exc.reason}")
            return self.send_parts(data, [self._text_part(data["dest"], text) for text in texts])
        # Two parts: the upload's platform id is the file id, kept with the message like any
        # part's, so a retry after a failed completion completes that file instead of uploading again.
        uploaded = list(data.get("platform_ids") or ())
        resumed = bool(uploaded)
        parts = [lambda pace: self._upload(data, uploaded), lambda pace: self._complete(data, uploaded, pace, resumed)]
        return self.send_parts(data, parts)

    def _text_part(self, channel: str, text: str):
        return lambda pace: self.post(self._method("chat.postMessage"), lambda r: self.classify(r, "ts"), pace=pace,
                                      json={"channel": channel, "text": text}, headers=self._auth)

    def _upload(self, data: dict, uploaded: list[str]) -> Outcome:
        """files.getUploadURLExternal, then the bytes to its upload_url: delivered with the file id (not yet shared)."""
        content = data["content"]
        filename, mime = self._file(data)
        answer: dict = {}  # the ticket's body (a service is shared by the drain's threads: nothing on self)

        def classify_ticket(response: requests.Response) -> Outcome:
            answer.update(json_or_none(response) or {})
            outcome = self.classify(response, "file_id")
            if outcome.kind == "delivered" and not answer.get("upload_url"):
                return Outcome.retry(f"{self.name}: files.getUploadURLExternal gave no upload URL")
            return outcome

        ticket = self.post(self._method("files.getUploadURLExternal"), classify_ticket,
                           data={"filename": filename, "length": str(content.size)}, headers=self._auth)
        if ticket.kind != "delivered":
            return ticket
        with MultipartBody({}, [("file", filename, mime, content)]) as body:
            sent = self.post(str(answer["upload_url"]), self._classify_upload, data=body, headers={"Content-Type": body.content_type})
        if sent.kind != "delivered":
            return sent
        uploaded.append(ticket.platform_ids[0])
        return Outcome.delivered(ticket.platform_ids)

    def _complete(self, data: dict, uploaded: list[str], pace, resumed: bool) -> Outcome:
        """files.completeUploadExternal of the uploaded file: shares it in the channel, with the caption as its comment.

        ``resumed``: the file was uploaded by an earlier attempt. If Slack no
        longer has it (``file_not_found``), it is uploaded again, once.
        """
        share = {"files": [{"id": uploaded[-1], "title": self._file(data)[0]}], "channel_id": data["dest"]}
        caption = (data.get("options") or {}).get("caption")
        if caption:
            share["initial_comment"] = caption
        done = self.post(self._method("files.completeUploadExternal"), lambda r: self.classify(r, None), pace=pace, json=share, headers=self._auth)
        if done.kind == "delivered":
            return Outcome.delivered([])
        if resumed and done.kind == "failed" and done.reason == f"{self.name}: file_not_found":
            again = self._upload(data, uploaded)
            if again.kind != "delivered":
                return again
            shared = self._complete(data, uploaded, pace, resumed=False)
            # Delivered: both file ids stay (the parts count). Not: the new upload is left, and the next attempt redoes it.
            return Outcome.delivered(again.platform_ids) if shared.kind == "delivered" else shared
        return done

    def _file(self, data: dict) -> tuple[str, str]:
        """The file name and MIME type the upload goes with."""
        mime = (sniff(data["content"]) or OCTET_STREAM).split(";")[0]
        return file_name(data, mime), mime

    def _classify_upload(self, response: requests.Response) -> Outcome:
        if response.status_code == 200:
            return Outcome.delivered(["uploaded"])
        return self.classify(response, None)

    def classify(self, response: requests.Response, id_field: str | None) -> Outcome:
        status = response.status_code
        body = json_or_none(response)
        if status == 429:
            return Outcome.retry(f"{self.name}: rate limited (HTTP 429)", seconds_or_none(response.headers.get("Retry-After")), throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(f"{self.name}: HTTP {status} {response.reason or ''}".strip())
        if body is None:
            if status == 200:
                return Outcome.retry(f"{self.name}: an answer that is not JSON")
            return Outcome.failed(f"{self.name}: HTTP {status} {response.reason or ''}".strip())
        if body.get("ok") is True:
            value = body.get(id_field) if id_field else "ok"
            if not value:
                return Outcome.retry(f"{self.name}: an answer without {id_field}")
            return Outcome.delivered([str(value)])
        error = str(body.get("error") or f"HTTP {status}")
        reason = f"{self.name}: {error}"
        if error in RATE_ERRORS:
            return Outcome.retry(reason, seconds_or_none(response.headers.get("Retry-After")), throttle=THROTTLE_SERVICE)
        if error in CONFIG_ERRORS or status in (401, 403):
            return Outcome.misconfigured(reason)
        return Outcome.failed(reason)
