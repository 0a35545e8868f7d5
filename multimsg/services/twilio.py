"""SMS and MMS through Twilio's Programmable Messaging REST API.

``POST <api_url>/2010-04-01/Accounts/<account_sid>/Messages.json`` with HTTP
Basic auth (account SID, auth token) and form fields ``To``, ``From`` (or
``MessagingServiceSid`` when ``from`` is a Messaging Service SID, ``MG...``),
``Body`` and ``MediaUrl``.

Datatypes:

- text: ``Body``; UTF-8, parts of at most 1600 (UTF-16 code units, the stricter
  count; Twilio itself splits a Body into SMS segments and reassembles them on
  the handset where it can);
- image (JPEG, PNG, GIF), audio, video, document: MMS by ``MediaUrl``, ≤ 5 MB,
  with ``caption`` as the Body. Twilio fetches media from a **public** URL; multimsg's
  uploads are not public, so media are refused at /msg with the reason unless
  ``media_base_url`` (``MULTIMSG_<NAME>_MEDIA_BASE_URL``) names a public base
  URL under which the operator serves the message's content as
  ``<media_base_url>/<message id>/<file name>``.

Answers (a Twilio error is ``{"code", "message", "more_info", "status"}``):

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
201 with ``sid``                           delivered, with the message SID (``SM...``)
code 20429, HTTP 429                       retry later (``Retry-After`` if given); the whole service slows down
5xx, timeout, connection error             retry
201/200 without ``sid``                    retry
code 20003, HTTP 401                       misconfigured (account SID or auth token refused)
code 20404, HTTP 404                       misconfigured (account SID or API URL)
code 21212, 21606, 21659                   misconfigured (``from`` is not a number of this account)
code 21211, 21614 (invalid ``To``)         failed, with Twilio's message
code 21610 (recipient replied STOP), others failed, with Twilio's message
=========================================  ===========================================

"delivered" means Twilio accepted the message (status ``queued`` or
``accepted``); the carrier's delivery report arrives by status callback,
which multimsg does not receive.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import requests

from ..content import Content
from ..errors import InvalidInput, MultimsgError
from .base import MB, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none, seconds_or_none
from .datatypes import Datatypes
from .sniff import OGG_OPUS, sniff

__all__ = ["Twilio"]

MEDIA_TYPES = frozenset({Datatypes.IMAGE, Datatypes.AUDIO, Datatypes.VIDEO, Datatypes.DOCUMENT})
THROTTLE_CODES = frozenset({20429, 14107})
CONFIG_CODES = frozenset({20003, 20404, 21212, 21606, 21659})


class Twilio(ServiceBase):
    kind = "twilio"
    datatypes = frozenset({Datatypes.TEXT, *MEDIA_TYPES})
    dest_format = "a phone number in E.164 format, with '+': +14155551234"
    dest_pattern = re.compile(r"\+[1-9][0-9]{7,14}")
    rate = 1.0  # one message segment a second: a US long code's sending rate (toll-free and short codes send more)
    credentials = {
        "account_sid": "account_sid",
        "auth_token": "auth_token",
        "sender": "from",
    }
    options = {
        "api_url": ("api_url", "https://api.twilio.com"),
        "media_base_url": ("media_base_url", ""),
    }
    account_sid: str  # set from the ServiceConfig (base.ServiceBase.__init__)
    auth_token: str
    sender: str
    api_url = "https://api.twilio.com"
    media_base_url = ""  # defaults for a ServiceConfig that does not name them

    size_limits = {datatype: 5 * MB for datatype in MEDIA_TYPES}
    formats = {
        Datatypes.IMAGE: frozenset({"image/jpeg", "image/png", "image/gif"}),  # the types Twilio resizes for handsets
        Datatypes.AUDIO: frozenset({"audio/mpeg", "audio/mp4", "audio/ogg", OGG_OPUS, "audio/amr"}),
        Datatypes.VIDEO: frozenset({"video/mp4", "video/3gpp"}),
        Datatypes.DOCUMENT: frozenset({"application/pdf", "text/plain"}),
    }
    text_limit = 1600
    text_measure = "utf16_units"
    caption_limit = 1600
    caption_types = MEDIA_TYPES

    def check_content(self, datatype: str, content: Content, options: dict | None = None) -> dict:
        if datatype in MEDIA_TYPES and not (self.media_base_url or "").strip():
            raise InvalidInput(
                f"twilio sends {datatype} only as a public URL (MediaUrl) and multimsg's uploads are not public; "
                f"this server has no media_base_url for {self.name}, so it takes type text only")
        return super().check_content(datatype, content, options)

    def _url(self) -> str:
        return f"{self.api_url.rstrip('/')}/2010-04-01/Accounts/{quote(self.account_sid, safe='')}/Messages.json"

    def _fields(self, dest: str, body: str) -> dict:
        fields = {"To": dest, "Body": body}
        if self.sender.startswith("MG"):
            fields["MessagingServiceSid"] = self.sender
        else:
            fields["From"] = self.sender
        return fields

    def send(self, data: dict) -> Outcome:
        if data["type"] == Datatypes.TEXT:
            try:
                parts = [self._part(self._fields(data["dest"], text)) for text in self.text_parts(data["content"])]
            except MultimsgError as exc:
                return Outcome.failed(f"twilio: {exc.reason}")
            return self.send_parts(data, parts)
        if not (self.media_base_url or "").strip():  # queued before the setting was removed
            return Outcome.misconfigured(f"{self.name}: media need the media_base_url setting (a public URL of the content)")
        name = file_name(data, sniff(data["content"]))
        fields = self._fields(data["dest"], (data.get("options") or {}).get("caption") or "")
        fields["MediaUrl"] = f"{self.media_base_url.rstrip('/')}/{quote(data['id'], safe='')}/{quote(name, safe='')}"
        return self.send_parts(data, [self._part(fields)])

    def _part(self, fields: dict):
        return lambda pace: self.post(self._url(), self.classify, pace=pace, data=fields, auth=(self.account_sid, self.auth_token))

    @staticmethod
    def classify(response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        status = response.status_code
        code = body.get("code")
        code = code if isinstance(code, int) else None
        text = str(body.get("message") or f"HTTP {status} {response.reason or ''}".strip())
        reason = f"twilio: {text}" + (f" (error {code})" if code else "")
        if status in (200, 201):
            if body.get("sid"):
                return Outcome.delivered([str(body["sid"])])
            return Outcome.retry("twilio: an answer that is not a created message")
        if code in THROTTLE_CODES or status == 429:
            return Outcome.retry(reason, seconds_or_none(response.headers.get("Retry-After")), throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(reason)
        if code in CONFIG_CODES or status in (401, 404):
            return Outcome.misconfigured(reason)
        return Outcome.failed(reason)
