"""Matrix, through the client-server API of the account's homeserver.

Settings: ``homeserver`` (its base URL, ``https://matrix.example.org``) and
``access_token`` (of the account that sends; it must have joined the rooms).
``dest`` is a room id (``!abc:example.org``; room version 12 ids have no
server part) or an alias (``#room:example.org``), resolved with
``GET /_matrix/client/v3/directory/room/<alias>`` (remembered for an hour).

Every message is ``PUT /_matrix/client/v3/rooms/<room>/send/m.room.message/<txnId>``
with a transaction id made from our message id and the part's index: the
homeserver answers a repeated transaction with the event it already made, so
a retry (after a timeout, say) is never a duplicate.

Datatypes (size limit: Synapse's default ``max_upload_size``, 50 MB):

- text: ``m.text``; UTF-8, parts of 8000 characters (an event must fit in
  65536 bytes of canonical JSON);
- image: ``m.image`` (JPEG, PNG, GIF, WebP); video: ``m.video`` (MP4, WebM);
  audio: ``m.audio`` (MP3, M4A, OGG, AAC); voice: ``m.audio`` with
  ``org.matrix.msc3245.voice`` (OGG/Opus); document: ``m.file`` (any file).

Files are uploaded first (``POST /_matrix/media/v3/upload``, not paced; the
``mxc://`` URI is remembered for a day per message, so a retry does not upload
again); the event's ``body`` is the caption (or the file name), ``filename``
the file name, ``info`` the MIME type and size.

Answers (errors are ``{"errcode", "error"}``):

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
200 with ``event_id``                      delivered, with the event id
``M_LIMIT_EXCEEDED`` (429)                 retry after ``retry_after_ms`` (or ``Retry-After``); the whole service slows down
5xx, timeout, connection error             retry
200 without ``event_id`` / ``content_uri`` retry
``M_UNKNOWN_TOKEN``, ``M_MISSING_TOKEN``   misconfigured (the access token): the message stays queued
``M_UNRECOGNIZED``, 404 without errcode    misconfigured (``homeserver`` is not a Matrix client-server API)
``M_FORBIDDEN`` (not in the room)          failed, with the homeserver's error
``M_NOT_FOUND`` (no such room or alias)    failed, with the homeserver's error
``M_TOO_LARGE``, any other 4xx             failed, with the homeserver's error
=========================================  ===========================================

"delivered" means the homeserver accepted the event into the room; whether
other members' clients received (or can decrypt) it is not known. Rooms with
end-to-end encryption are not supported: events are sent in clear.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from urllib.parse import quote

import requests

from .base import CONTENT_REFUSED, MB, THROTTLE_SERVICE, Outcome, ServiceBase, file_name, json_or_none, seconds_or_none
from .datatypes import Datatypes
from .sniff import OCTET_STREAM, OGG_OPUS, sniff

__all__ = ["Matrix"]

MSGTYPES = {
    Datatypes.IMAGE: "m.image",
    Datatypes.VIDEO: "m.video",
    Datatypes.AUDIO: "m.audio",
    Datatypes.VOICE: "m.audio",
    Datatypes.DOCUMENT: "m.file",
}
CONFIG_ERRORS = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_UNRECOGNIZED"})
CACHE_SIZE = 4096
ALIAS_TTL = 3600.0
UPLOAD_TTL = 24 * 3600.0


class Matrix(ServiceBase):
    kind = "matrix"
    datatypes = frozenset({Datatypes.TEXT, *MSGTYPES})
    dest_format = "a room id (!room:example.org) or a room alias (#room:example.org)"
    _server = r"(?:[A-Za-z0-9.-]{1,255}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
    dest_pattern = re.compile(rf"![A-Za-z0-9._~+/=-]{{1,255}}(?::{_server})?|#[^\s:#/]{{1,255}}:{_server}")
    # Synapse's default rc_message: 0.2 messages a second per user, bursts of 10. Accounts
    # exempted by the homeserver's admin (override_ratelimit) can raise MULTIMSG_MATRIX_RATE.
    rate = 0.2
    credentials = {"homeserver": "homeserver", "access_token": "access_token"}
    homeserver: str  # set from the ServiceConfig (base.ServiceBase.__init__)
    access_token: str

    size_limits = {datatype: 50 * MB for datatype in MSGTYPES}
    formats = {
        Datatypes.IMAGE: frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"}),
        Datatypes.VIDEO: frozenset({"video/mp4", "video/webm"}),
        Datatypes.AUDIO: frozenset({"audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", OGG_OPUS}),
        Datatypes.VOICE: frozenset({OGG_OPUS}),
        Datatypes.DOCUMENT: None,
    }
    text_limit = 8000
    text_measure = "characters"
    caption_limit = 4096
    caption_types = frozenset(MSGTYPES)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._aliases: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._uploads: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (1, 1.0)

    # -- requests ------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.homeserver.rstrip('/')}{path}"

    @property
    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}"}

    def _request(self, method: str, url: str, pace=None, **kwargs) -> requests.Response | Outcome:
        if pace is not None:
            pace()
        try:
            return self.session.request(method, url, timeout=self.timeout, headers={**self._auth, **kwargs.pop("headers", {})}, **kwargs)
        except requests.Timeout:
            return Outcome.retry("matrix: the homeserver did not answer in time")
        except requests.RequestException as exc:
            return Outcome.retry(f"matrix: could not reach the homeserver ({type(exc).__name__})")

    # -- sending ---------------------------------------------------------------
    def send(self, data: dict) -> Outcome:
        room = self._room(data["dest"])
        if isinstance(room, Outcome):
            return room
        if data["type"] == Datatypes.TEXT:
            try:
                texts = self.text_parts(data["content"])
            except CONTENT_REFUSED as exc:
                return Outcome.failed(f"matrix: {exc.reason}")
            parts = [self._event_part(room, f"{data['id']}.{index}", {"msgtype": "m.text", "body": text}) for index, text in enumerate(texts)]
            return self.send_parts(data, parts)
        return self.send_parts(data, [lambda pace: self._send_file(room, data, pace)])

    def _event_part(self, room: str, txn: str, content: dict):
        return lambda pace: self._send_event(room, txn, content, pace)

    def _send_event(self, room: str, txn: str, content: dict, pace) -> Outcome:
        url = self._url(f"/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/{quote('multimsg.' + txn, safe='')}")
        body = json.dumps(content, ensure_ascii=False).encode("utf-8")
        response = self._request("PUT", url, pace, data=body, headers={"Content-Type": "application/json"})
        if isinstance(response, Outcome):
            return response
        outcome = classify(response)
        if outcome is None:
            event_id = (json_or_none(response) or {}).get("event_id")
            return Outcome.delivered([str(event_id)]) if event_id else Outcome.retry("matrix: an answer that is not a sent event")
        return outcome

    def _send_file(self, room: str, data: dict, pace) -> Outcome:
        content = data["content"]
        mime = (sniff(content) or OCTET_STREAM).split(";")[0]
        name = file_name(data, mime)
        uri = self._upload(data["id"], content, mime, name)
        if isinstance(uri, Outcome):
            return uri
        caption = (data.get("options") or {}).get("caption") or ""
        event: dict = {"msgtype": MSGTYPES[data["type"]], "body": caption or name, "filename": name, "url": uri,
                       "info": {"mimetype": mime, "size": content.size}}
        if data["type"] == Datatypes.VOICE:
            event["org.matrix.msc3245.voice"] = {}
            event["org.matrix.msc1767.audio"] = {}
        return self._send_event(room, f"{data['id']}.file", event, pace)

    def _upload(self, message_id: str, content, mime: str, name: str) -> str | Outcome:
        with self._lock:
            cached = self._uploads.get(message_id)
            if cached and cached[0] > time.monotonic():
                return cached[1]
        with content.open() as stream:
            response = self._request("POST", self._url("/_matrix/media/v3/upload"), params={"filename": name}, data=_Sized(stream, content.size),
                                     headers={"Content-Type": mime})
        if isinstance(response, Outcome):
            return response
        outcome = classify(response)
        if outcome is not None:
            return outcome
        uri = (json_or_none(response) or {}).get("content_uri")
        if not isinstance(uri, str) or not uri.startswith("mxc://"):
            return Outcome.retry("matrix: an upload answer without a content_uri")
        with self._lock:
            self._uploads[message_id] = (time.monotonic() + UPLOAD_TTL, uri)
            while len(self._uploads) > CACHE_SIZE:
                self._uploads.popitem(last=False)
        return uri

    def _room(self, dest: str) -> str | Outcome:
        if not dest.startswith("#"):
            return dest
        with self._lock:
            cached = self._aliases.get(dest)
            if cached and cached[0] > time.monotonic():
                return cached[1]
        response = self._request("GET", self._url(f"/_matrix/client/v3/directory/room/{quote(dest, safe='')}"))
        if isinstance(response, Outcome):
            return response
        outcome = classify(response)
        if outcome is not None:
            return outcome
        room = (json_or_none(response) or {}).get("room_id")
        if not isinstance(room, str) or not room.startswith("!"):
            return Outcome.retry(f"matrix: the alias {dest} did not resolve to a room id")
        with self._lock:
            self._aliases[dest] = (time.monotonic() + ALIAS_TTL, room)
            while len(self._aliases) > CACHE_SIZE:
                self._aliases.popitem(last=False)
        return room


def classify(response: requests.Response) -> Outcome | None:
    """None for a 200 (the caller reads its body), else the outcome of an error answer."""
    status = response.status_code
    if status == 200:
        return None
    body = json_or_none(response) or {}
    errcode = str(body.get("errcode") or "")
    error = str(body.get("error") or f"HTTP {status} {response.reason or ''}".strip())
    reason = f"matrix: {errcode + ': ' if errcode else ''}{error}"
    if errcode == "M_LIMIT_EXCEEDED" or status == 429:
        after = body.get("retry_after_ms")
        seconds = after / 1000 if isinstance(after, (int, float)) else seconds_or_none(response.headers.get("Retry-After"))
        return Outcome.retry(reason, seconds, throttle=THROTTLE_SERVICE)
    if status >= 500:
        return Outcome.retry(reason)
    if errcode in CONFIG_ERRORS or (status in (401, 404, 405) and not errcode):
        return Outcome.misconfigured(reason)
    return Outcome.failed(reason)


class _Sized:
    """A body stream whose length requests takes from ``len()``: a stream that cannot tell its own size
    (content sealed at rest, a conversion's output) would otherwise go chunked, which the media API refuses."""

    def __init__(self, stream, size: int):
        self.read, self.size = stream.read, size

    def __len__(self) -> int:
        return self.size
