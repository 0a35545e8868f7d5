"""WhatsApp (``wpp1``), through Meta's WhatsApp Business Cloud API.

``POST <api_url>/<phone-number-id>/messages`` with ``Authorization: Bearer``
(facts: the Cloud API documentation). Datatypes, the body each becomes,
what its content must be (sniffed) and its size limit:

- text: ``type: text``, ``text: {body}``; UTF-8, parts of 4096 characters;
- image: ``type: image``, ``image: {id, caption?}``; JPEG, PNG; 5 MB;
- document: ``type: document``, ``document: {id, caption?, filename}``; PDF,
  plain text, Word, Excel, PowerPoint (.doc/.docx/.xls/.xlsx/.ppt/.pptx); 100 MB;
- audio: ``type: audio``, ``audio: {id}`` (WhatsApp audio takes no caption);
  AAC, AMR, MP3, M4A, OGG/Opus; 16 MB;
- video: ``type: video``, ``video: {id, caption?}``; MP4, 3GPP; 16 MB;
- voice: ``type: audio``, ``audio: {id, voice: true}``; OGG/Opus; 16 MB;
- template: ``type: template``, ``template: {name, language: {code}, components?}``
  from an uploaded JSON document (services/template.py); 64 KB.

Files are first uploaded to ``POST <api_url>/<phone-number-id>/media``
(multipart: ``messaging_product=whatsapp``, ``type`` = the sniffed MIME type,
``file``); the message then names the returned media id. An upload is
remembered for a day per message, so a retry (after a rate limit, say) does
not upload the file again.

Answers (of the upload and of the send) are classified by ``error.code``, not
by HTTP status: Meta answers rate limits with HTTP 400.

=========================================  ==========================================
answer                                     outcome
=========================================  ==========================================
200 with ``messages[0].id``                delivered, with the wamid
code 130429, 80007, 4                      retry later; the whole service slows down (rate limits)
code 131056 (pair rate limit)              retry later; that recipient waits
code 131000, 1, 2, 131016, 131057          retry (temporary errors)
HTTP 5xx or 429, timeout, no connection    retry
code 190, 0, 10, 200–299                   misconfigured (token, permissions): message stays queued
code 100 "Unsupported post request" (33)   misconfigured (phone number id): message stays queued
HTTP 401 or 404 without an error object    misconfigured (token, phone number id, URL)
code 131026, 131047, 100, 131053           failed, with the platform's message and details
any other error code                       failed, with the platform's message and details
other 4xx without an error object          failed, with the HTTP status
=========================================  ==========================================

A media upload's answer is classified by the same table (a refused upload
fails the message before any message is sent).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict

import requests

from ..config import ServiceConfig
from ..content import Content
from ..errors import MultimsgError
from ..multipart import MultipartBody
from .base import MB, THROTTLE_DEST, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, OGG_OPUS, sniff
from .template import TEMPLATE_MAX_BYTES, load_template

__all__ = ["WhatsApp"]

# Rate limits, and what must slow down: the phone number's throughput (130429),
# the WhatsApp Business Account (80007) or the app (4) is the whole service;
# the pair rate limit (131056) is one recipient only.
RATE_LIMIT_CODES = {130429: THROTTLE_SERVICE, 131056: THROTTLE_DEST, 80007: THROTTLE_SERVICE, 4: THROTTLE_SERVICE}
TRANSIENT_CODES = frozenset({131000, 1, 2, 131016, 131057})
CONFIG_CODES = frozenset({190, 0, 10, *range(200, 300)})

DOCUMENT_MIMES = frozenset({
    "text/plain",
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
})

MEDIA_ID_TTL = 24 * 3600.0  # uploads last 30 days at Meta; a day covers a message's retries
MEDIA_ID_CACHE = 1024


class WhatsApp(ServiceBase):
    kind = "whatsapp"
    default_name = "wpp1"
    datatypes = frozenset({Datatypes.TEXT, *Datatypes.FILES, Datatypes.TEMPLATE})
    dest_format = "an international phone number, digits only, without '+', spaces or dashes (8 to 15 digits)"
    dest_pattern = re.compile(r"[1-9][0-9]{7,14}")
    rate = 80.0  # Cloud API throughput: 80 messages per second per business phone number
    credentials = {"token": "token", "phone_number_id": "phone_number_id"}
    options = {"api_url": ("api_url", "https://graph.facebook.com/v23.0"),
               # status webhooks (multimsg/webhooks.py): the handshake's token, the key of X-Hub-Signature-256
               "verify_token": ("verify_token", ""), "app_secret": ("app_secret", "")}

    size_limits = {
        Datatypes.IMAGE: 5 * MB,
        Datatypes.DOCUMENT: 100 * MB,
        Datatypes.AUDIO: 16 * MB,
        Datatypes.VIDEO: 16 * MB,
        Datatypes.VOICE: 16 * MB,
        Datatypes.TEMPLATE: TEMPLATE_MAX_BYTES,
    }
    formats = {
        Datatypes.IMAGE: frozenset({"image/jpeg", "image/png"}),
        Datatypes.DOCUMENT: DOCUMENT_MIMES,
        Datatypes.AUDIO: frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", OGG_OPUS}),
        Datatypes.VIDEO: frozenset({"video/mp4", "video/3gpp"}),
        Datatypes.VOICE: frozenset({OGG_OPUS}),
    }
    text_limit = 4096
    text_measure = "characters"
    caption_limit = 1024
    caption_types = frozenset({Datatypes.IMAGE, Datatypes.VIDEO, Datatypes.DOCUMENT})

    def __init__(self, config: ServiceConfig | None = None, session: requests.Session | None = None):
        super().__init__(config, session)
        self._media_ids: OrderedDict[str, tuple[str, float]] = OrderedDict()  # message id -> (media id, when)
        self._media_lock = threading.Lock()

    def dest_limit(self, dest: str) -> tuple[int, float]:
        # Pair rate limit (error 131056): about one message every 6 s to the same recipient.
        return (1, 6.0)

    def check_template(self, content: Content) -> None:
        load_template(content)

    def _url(self, edge: str) -> str:
        return f"{self.api_url.rstrip('/')}/{self.phone_number_id}/{edge}"

    @property
    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    # -- sending -----------------------------------------------------------
    def send(self, data: dict) -> Outcome:
        datatype = data["type"]
        try:
            if datatype == Datatypes.TEXT:
                parts = [self._message_part(data, "text", {"body": text}) for text in self.text_parts(data["content"])]
            elif datatype == Datatypes.TEMPLATE:
                parts = [self._message_part(data, "template", load_template(data["content"]))]
            else:
                parts = [lambda pace: self._send_media(data, pace)]
        except MultimsgError as exc:  # the stored content no longer passes (it did at /msg)
            return Outcome.failed(f"{self.name}: {exc.reason}")
        return self.send_parts(data, parts)

    def _message_part(self, data: dict, kind: str, payload: dict):
        return lambda pace: self._send_message(data["dest"], kind, payload, pace, data["id"])

    def _send_message(self, dest: str, kind: str, payload: dict, pace, message_id: str) -> Outcome:
        # biz_opaque_callback_data: our message id, echoed in the status webhooks, so a
        # status maps to its message, and a message whose answer was lost can be recognised.
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": dest, "type": kind, kind: payload,
                "biz_opaque_callback_data": message_id}
        return self.post(self._url("messages"), self.classify, pace=pace, json=body, headers=self._auth)

    def _send_media(self, data: dict, pace) -> Outcome:
        datatype = data["type"]
        mime = sniff(data["content"]) or OCTET_STREAM
        filename = file_name(data, mime)
        media_id = self._cached_media_id(data["id"])
        if media_id is None:
            uploaded = self._upload(data["content"], filename, mime)
            if isinstance(uploaded, Outcome):
                return uploaded
            media_id = uploaded
            self._remember_media_id(data["id"], media_id)
        media: dict = {"id": media_id}
        caption = (data.get("options") or {}).get("caption")
        if caption and datatype in self.caption_types:
            media["caption"] = caption
        if datatype == Datatypes.DOCUMENT:
            media["filename"] = filename
        kind = datatype
        if datatype == Datatypes.VOICE:
            kind, media["voice"] = Datatypes.AUDIO, True
        outcome = self._send_message(data["dest"], kind, media, pace, data["id"])
        if outcome.kind != "retry":  # delivered or given up: the upload is not needed again
            self._forget_media_id(data["id"])
        return outcome

    def _upload(self, content: Content, filename: str, mime: str) -> str | Outcome:
        """Upload a file to /media; returns its media id, or the Outcome of a failed upload."""
        mime = mime.split(";")[0]
        fields = {"messaging_product": "whatsapp", "type": mime}
        with MultipartBody(fields, [("file", filename, mime, content)]) as body:
            outcome_or_id = self.post(self._url("media"), self._classify_upload, data=body,
                                      headers={**self._auth, "Content-Type": body.content_type})
        return outcome_or_id

    def _classify_upload(self, response: requests.Response):
        body = json_or_none(response) or {}
        if response.status_code == 200 and isinstance(body.get("id"), (str, int)) and "error" not in body:
            return str(body["id"])
        outcome = self.classify(response)
        return outcome if outcome.kind != "delivered" else Outcome.retry(f"{self.name}: the media upload answer had no id")

    # -- media id cache (the drain sends from several threads) --------------
    def _cached_media_id(self, message_id: str) -> str | None:
        with self._media_lock:
            entry = self._media_ids.get(message_id)
            if entry is None or time.time() - entry[1] > MEDIA_ID_TTL:
                return None
            return entry[0]

    def _remember_media_id(self, message_id: str, media_id: str) -> None:
        with self._media_lock:
            self._media_ids[message_id] = (media_id, time.time())
            self._media_ids.move_to_end(message_id)
            while len(self._media_ids) > MEDIA_ID_CACHE:
                self._media_ids.popitem(last=False)

    def _forget_media_id(self, message_id: str) -> None:
        with self._media_lock:
            self._media_ids.pop(message_id, None)

    # -- answers -----------------------------------------------------------
    def classify(self, response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        status = response.status_code
        messages = body.get("messages")
        if status == 200 and isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
            return Outcome.delivered([str(messages[0]["id"])])
        error = body.get("error") if isinstance(body.get("error"), dict) else None
        if error is None:
            reason = f"{self.name}: HTTP {status} {response.reason or ''}".strip()
            if status == 200:
                return Outcome.retry(f"{self.name}: an answer without a message id")
            if status >= 500 or status == 429:
                return Outcome.retry(reason, _retry_after(response))
            if status in (401, 404):
                return Outcome.misconfigured(f"{reason} (check {', '.join(self.config.variables.values())})")
            return Outcome.failed(reason)
        code = _int_or_none(error.get("code"))
        details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
        reason = (f"{self.name}: {error.get('message') or f'HTTP {status}'}" + (f": {details}" if details else "")
                  + (f" (code {code})" if code is not None else ""))
        if code in CONFIG_CODES or _unknown_object(code, error):
            return Outcome.misconfigured(reason)
        if code in RATE_LIMIT_CODES:
            return Outcome.retry(reason, _retry_after(response), throttle=RATE_LIMIT_CODES[code])
        if code in TRANSIENT_CODES or status >= 500:
            return Outcome.retry(reason, _retry_after(response))
        return Outcome.failed(reason)



def _unknown_object(code: int | None, error: dict) -> bool:
    """Graph's answer for a phone number id that does not exist (or is not ours): a setting is wrong.

    It is code 100 like a bad parameter, but with ``error_subcode`` 33 (Graph
    still sends it for this generic error) and an "Unsupported post request".
    """
    return code == 100 and (error.get("error_subcode") == 33 or str(error.get("message", "")).startswith("Unsupported post request"))


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None
