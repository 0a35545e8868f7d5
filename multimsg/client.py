"""``multimsg.Client``: the Python client of a multimsg server (the ``multimsg`` command uses it).

    from multimsg import Client

    client = Client("http://127.0.0.1:8080")          # or MULTIMSG_URL; token= or MULTIMSG_TOKEN
    message_id = client.send(Path("photo.jpg"), serv="telegram", dest="12345")
    status = client.wait(message_id, timeout=60)      # Status(state="delivered", ...)

``send`` uploads (encrypted by default: the server's ``/key`` wraps a fresh
AES-256 key, see ``multimsg.crypto``), queues, and returns the message id.
Content is ``bytes``, a ``pathlib.Path`` (or any ``os.PathLike``), a binary
file object, or a ``str``, which is the text itself (not a path). ``type`` is
inferred from the content when omitted (``infer_type``).

Every failure is a ``ClientError`` subclass whose ``str()`` is one line: the
server's own reason when it gave one. ``exit_code`` is what the CLI exits with.

**Key pinning.** The first ``/key`` fetch is only as trustworthy as the
connection (use https). ``key_fingerprint=`` (or ``MULTIMSG_KEY_FINGERPRINT``)
pins the key: ``SHA256:<base64>`` as ``multimsg keys show`` prints it, or 64
hex digits; any other key is refused with ``KeyMismatch``. Without a pin,
``known_keys=PATH`` trusts the first key seen per server URL and records it
there (``URL SHA256:...`` lines; the CLI uses ``default_known_keys()``,
``$XDG_CONFIG_HOME/multimsg/known_keys``); a different key later is
``KeyMismatch`` too, until its line is removed (after a rotation the operator
confirms).

**Retries without duplicates.** ``send``, ``upload`` and ``queue`` take an
``idempotency_key`` (the ``Idempotency-Key`` header: the server answers a
repeat with the first answer and creates nothing). With one, a client built
with ``retries=N`` tries again, with the same key, after a dropped
connection, a 5xx or a 409 (the first try still in progress); the CLI does so
with a fresh key per ``multimsg send``. ``Client.new_idempotency_key()`` makes one.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Union

import requests

from .crypto import encrypt_upload, fingerprint_digest, key_fingerprint, parse_fingerprint
from .model import FINAL_STATES, State
from .multipart import MultipartBody

DELIVERED, FAILED = State.DELIVERED, State.FAILED

__all__ = [
    "Client", "Status", "infer_type", "DEFAULT_URL", "FINAL_STATES",
    "ClientError", "ConnectionFailed", "RequestRejected", "TooLarge", "Unauthorized",
    "NotFound", "RateLimited", "ServerError", "WaitTimeout", "KeyMismatch", "EXIT_CODES", "CANCELLED_EXIT", "default_known_keys",
]

DEFAULT_URL = "http://127.0.0.1:8080"
Content = Union[bytes, bytearray, str, os.PathLike, IO[bytes]]
Progress = Callable[[int, int], None]
OCTET_STREAM = "application/octet-stream"
IDEMPOTENCY_HEADER = "Idempotency-Key"


# -- errors ----------------------------------------------------------------------
class ClientError(Exception):
    """Base of every client failure; ``str(error)`` is a one-line reason."""

    exit_code = 10

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(" ".join(str(reason).split()))
        self.status = status

    @property
    def reason(self) -> str:
        return str(self)


class ConnectionFailed(ClientError):
    """The server could not be reached (bad URL, refused, DNS, TLS, timeout)."""

    exit_code = 3


class RequestRejected(ClientError):
    """The server refused the request as invalid (400, 405, 413, 415)."""

    exit_code = 4


class TooLarge(RequestRejected):
    """The upload or its content is over a limit (413)."""


class Unauthorized(ClientError):
    """A credential is missing or wrong (401, 403)."""

    exit_code = 5


class NotFound(ClientError):
    """Unknown, expired, foreign or already-reported id (404)."""

    exit_code = 6


class ServerError(ClientError):
    """The server failed or cannot serve now (5xx)."""

    exit_code = 7


class RateLimited(ServerError):
    """Too many requests (429); ``retry_after`` is in seconds."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason, status)
        self.retry_after = retry_after


class WaitTimeout(ClientError):
    """``wait`` gave up before a final state; ``last`` is the last status seen."""

    exit_code = 8

    def __init__(self, reason: str, last: "Status | None" = None):
        super().__init__(reason)
        self.last = last


class KeyMismatch(ClientError):
    """The server's /key is not the pinned key (``--key-fingerprint``, or the one known_keys recorded)."""

    exit_code = 9


CANCELLED_EXIT = 11  # --wait saw the final state 'cancelled' (POST /cancel)

EXIT_CODES = {
    0: "success (with --wait: delivered)",
    1: "the message failed (final state 'failed')",
    2: "usage error, or a local file that cannot be read",
    ConnectionFailed.exit_code: "the server could not be reached",
    RequestRejected.exit_code: "the server rejected the request (bad input, too large)",
    Unauthorized.exit_code: "unauthorized (missing or wrong token)",
    NotFound.exit_code: "unknown, expired or already reported id",
    ServerError.exit_code: "server error, unavailable, or rate limited",
    WaitTimeout.exit_code: "--wait timed out before a final state",
    KeyMismatch.exit_code: "the server's key is not the pinned one (--key-fingerprint, or known_keys)",
    ClientError.exit_code: "unexpected answer from the server",
    CANCELLED_EXIT: "with --wait: the message was cancelled (final state 'cancelled')",
    130: "interrupted (Ctrl-C)",
}


def _error_for(response: requests.Response) -> ClientError:
    reason = None
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            reason = body["error"]
    except ValueError:
        pass
    if reason is None:
        text = (response.text or "").strip()
        first = text.splitlines()[0][:200] if text and not text.lstrip().startswith("<") else ""
        reason = first or f"HTTP {response.status_code} {response.reason or ''}".strip()
    status = response.status_code
    if status == 413:
        return TooLarge(reason, status)
    if status in (401, 403):
        return Unauthorized(reason, status)
    if status == 404:
        return NotFound(reason, status)
    if status == 429:
        try:
            after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            after = None
        return RateLimited(reason, status, after)
    if status >= 500:
        return ServerError(reason, status)
    if 400 <= status < 500:
        return RequestRejected(reason, status)
    return ClientError(f"unexpected answer: HTTP {status}", status)


def _root_reason(exc: BaseException) -> str:
    """The most specific one-line cause of a requests exception (e.g. 'Connection refused')."""
    seen, stack = set(), [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen or current is None:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for attr in ("reason", "__cause__", "__context__"):
            nxt = getattr(current, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc)
    return text.split(": ", 1)[-1][:200] if text else type(exc).__name__


# -- status ---------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """A message's state as ``/cons`` reported it."""

    id: str
    state: str
    serv: str | None = None
    dest: str | None = None
    type: str | None = None
    attempts: int = 0
    last_error: str | None = None
    platform_ids: list = field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    next_attempt_at: str | None = None
    scheduled_for: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict) -> "Status":
        names = set(cls.__dataclass_fields__) - {"raw"}
        values = {name: value for name, value in body.items() if name in names and value is not None}
        return cls(**{"id": "", "state": "", **values}, raw=dict(body))

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def delivered(self) -> bool:
        return self.state == DELIVERED

    @property
    def failed(self) -> bool:
        return self.state == FAILED


# -- content --------------------------------------------------------------------
def infer_type(head: bytes, serv: str | None = None) -> str:
    """The datatype that fits content starting with ``head`` (8 KiB is plenty).

    Uses the server's content sniffing (``multimsg.services.sniff``) and, when
    ``serv`` is a service this package knows, the formats it declares: an image
    it takes as a photo is ``image``, OGG/Opus is ``voice``, and so on; text is
    ``text``; anything else is ``document``.
    """
    try:
        from .services.sniff import OGG_OPUS, sniff_bytes
    except ImportError:  # no sniffing available: text or not
        return "text" if _is_utf8_text(head) else "document"
    mime = sniff_bytes(head)
    if mime is None:
        return "document"
    if mime == "text/plain":
        return "text"
    formats: dict = {}
    if serv:
        try:
            from .services import service_class

            formats = dict(getattr(service_class(serv), "formats", {}) or {})
        except Exception:
            formats = {}
    if formats:
        for datatype in ("voice", "image", "video", "audio"):
            allowed = formats.get(datatype)
            if allowed is not None and mime in allowed:
                return datatype
        return "document"
    family = mime.split("/", 1)[0]
    if mime == OGG_OPUS:
        return "voice"
    return {"image": "image", "video": "video", "audio": "audio"}.get(family, "document")


def _is_utf8_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # cut inside a character at the end


class _Source:
    """Where an upload's bytes come from: memory, or a file streamed in chunks."""

    def __init__(self, content: Content, filename: str | None):
        self.path: Path | None = None
        self.data: bytes | None = None
        if isinstance(content, (bytes, bytearray, memoryview)):
            self.data = bytes(content)
        elif isinstance(content, str):
            self.data = content.encode("utf-8")
        elif isinstance(content, os.PathLike):
            self.path = Path(content)
            self.size = self.path.stat().st_size
        elif hasattr(content, "read"):
            self.data = content.read()
            if isinstance(self.data, str):
                self.data = self.data.encode("utf-8")
        else:
            raise TypeError("content must be bytes, str (the text), a path, or a binary file object")
        if self.data is not None:
            self.size = len(self.data)
        default = self.path.name if self.path else ("text.txt" if isinstance(content, str) else "data")
        self.filename = filename or default

    def head(self, n: int = 8192) -> bytes:
        if self.data is not None:
            return self.data[:n]
        with open(self.path, "rb") as handle:
            return handle.read(n)

    def read_all(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


def _message_fields(serv: str, dest: str, type: str, caption: str | None, filename: str | None,
                    at: str | float | None = None, convert: bool | None = None) -> dict[str, str]:
    fields = {"serv": serv, "dest": str(dest), "type": type}
    if caption:
        fields["caption"] = caption
    if filename:
        fields["filename"] = filename
    if at is not None:
        fields["at"] = str(at)
    if convert is not None:
        fields["convert"] = "1" if convert else "0"
    return fields


# -- key pinning ------------------------------------------------------------------
def default_known_keys() -> Path:
    """``$XDG_CONFIG_HOME/multimsg/known_keys`` (``~/.config/multimsg/known_keys``)."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".config") / "multimsg" / "known_keys"


def _known_key(path: Path, url: str) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    for line in lines:
        words = line.split()
        if len(words) == 2 and words[0] == url:
            return words[1]
    return None


def _remember_key(path: Path, url: str, fingerprint: str) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write(f"{url} {fingerprint}\n")
    except OSError as exc:
        raise ClientError(f"cannot record the server's key in {path}: {exc.strerror}") from None


# -- the client ------------------------------------------------------------------
class Client:
    """A multimsg server, seen from a client.

    Args:
        url: the server's base URL (default: ``MULTIMSG_URL``, else http://127.0.0.1:8080).
        token: a client token for ``MULTIMSG_IDENTITY=token`` servers (default: ``MULTIMSG_TOKEN``).
        timeout: seconds for each HTTP request (uploads get ``timeout`` per chunk, not in total).
        key_fingerprint: the server key's fingerprint to insist on (default: ``MULTIMSG_KEY_FINGERPRINT``).
        known_keys: without a fingerprint, a file to pin the key in on first use (None: no pinning).
        retries: tries again (that many times) a request sent with an idempotency key after a dropped
            connection, a 5xx or a 409 in progress.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None, *, key_fingerprint: str | None = None,
                 known_keys: os.PathLike | str | None = None, retries: int = 0):
        self.url = (url or os.environ.get("MULTIMSG_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else (os.environ.get("MULTIMSG_TOKEN") or None)
        pin = key_fingerprint if key_fingerprint is not None else (os.environ.get("MULTIMSG_KEY_FINGERPRINT", "").strip() or None)
        try:
            self._pin = parse_fingerprint(pin) if pin else None
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        self.known_keys = Path(known_keys) if known_keys is not None else None
        self.timeout = timeout
        self.retries = max(0, retries)
        self.http = session or requests.Session()
        self.http.trust_env = False  # a loopback gateway is never reached through an HTTP proxy by accident
        self._public_pem: str | None = None
        self._has_send: bool | None = None  # POST /send: learned on the first send

    def __repr__(self) -> str:
        return f"Client({self.url!r}{', token=***' if self.token else ''})"

    def close(self) -> None:
        """Close pooled connections (also done by ``with Client(...) as client:``)."""
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.http.request(method, self.url + path, headers=headers, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.exceptions.InvalidURL as exc:
            raise ConnectionFailed(f"bad server URL {self.url!r}: {_root_reason(exc)}") from None
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise ConnectionFailed(f"bad server URL {self.url!r}: use http://host:port or https://host") from None
        except requests.RequestException as exc:
            raise ConnectionFailed(f"cannot reach the server at {self.url}: {_root_reason(exc)}") from None
        if response.status_code >= 400:
            raise _error_for(response)
        return response

    @staticmethod
    def new_idempotency_key() -> str:
        """A fresh ``Idempotency-Key`` value (a random UUID)."""
        return str(uuid.uuid4())

    def _idempotent(self, key: str | None, request: Callable[[dict], requests.Response]) -> requests.Response:
        """``request(headers)``; with ``key``, again with the same key after a dropped connection, a 5xx or a 409."""
        headers = {} if key is None else {IDEMPOTENCY_HEADER: key}
        tries = 1 + (self.retries if key else 0)
        for attempt in range(1, tries + 1):
            try:
                return request(headers)
            except (ConnectionFailed, ServerError, RequestRejected) as exc:
                retry = isinstance(exc, (ConnectionFailed, ServerError)) or exc.status == 409
                if attempt >= tries or not retry:
                    raise
                pause = getattr(exc, "retry_after", None) or min(5.0, 0.25 * 2 ** attempt)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _json(self, response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            raise ClientError(f"unexpected answer from {self.url}: not JSON (is this a multimsg server?)", response.status_code) from None
        if not isinstance(body, dict):
            raise ClientError(f"unexpected answer from {self.url}: not a JSON object", response.status_code)
        return body

    # -- the API ---------------------------------------------------------------
    def public_key(self, refresh: bool = False) -> str:
        """The server's RSA public key (PEM), fetched once per client unless ``refresh``."""
        if self._public_pem is None or refresh:
            pem = self._json(self._request("GET", "/key")).get("key")
            if not isinstance(pem, str) or "BEGIN PUBLIC KEY" not in pem:
                raise ClientError(f"unexpected answer from {self.url}/key: no public key")
            try:
                self._check_key(pem)
            except ValueError:
                raise ClientError(f"unexpected answer from {self.url}/key: not a public key") from None
            self._public_pem = pem
        return self._public_pem

    def _check_key(self, pem: str) -> None:
        """KeyMismatch unless ``pem`` is the pinned key; records it on first use with ``known_keys``."""
        seen = key_fingerprint(pem)
        if self._pin is not None:
            if fingerprint_digest(pem) != self._pin:
                raise KeyMismatch(f"the server at {self.url} presented key {seen}, not the pinned one; "
                                  "nothing was sent (check the fingerprint with the operator: multimsg keys show)")
            return
        if self.known_keys is None:
            return
        known = _known_key(self.known_keys, self.url)
        if known is None:
            _remember_key(self.known_keys, self.url, seen)
        elif known != seen:
            raise KeyMismatch(f"the server's key changed: {self.url} presented {seen} but {self.known_keys} has {known} "
                              "(trusted on first use); nothing was sent. If the operator rotated the key, confirm the new "
                              "fingerprint with them (multimsg keys show) and remove that line")

    def upload(self, content: Content, *, filename: str | None = None, encrypt: bool = True,
               progress: Progress | None = None, idempotency_key: str | None = None) -> str:
        """Upload content (``POST /data``), encrypted unless ``encrypt=False``; returns the data id."""
        return self._upload(_Source(content, filename), encrypt, progress, idempotency_key)

    def _upload(self, source: _Source, encrypt: bool, progress: Progress | None, key: str | None = None) -> str:
        return self._post_content("/data", source, encrypt, progress, key)

    def _post_content(self, path: str, source: _Source, encrypt: bool, progress: Progress | None, key: str | None,
                      fields: dict[str, str] | None = None) -> str:
        """POST the content (and ``fields``) as multipart to ``path``; returns the id answered."""
        for attempt in (1, 2):
            if encrypt:
                blob, wrapped = encrypt_upload(self.public_key(refresh=attempt > 1), source.read_all())
                files = [("data", source.filename, OCTET_STREAM, blob), ("key", "key.bin", OCTET_STREAM, wrapped)]
            else:
                files = [("data", source.filename, OCTET_STREAM, source.path if source.path else source.data)]

            def post(headers: dict, files: list = files) -> requests.Response:
                with MultipartBody(fields, files=files, progress=progress) as body:  # the same content on every retry
                    return self._request("POST", path, data=body, headers={"Content-Type": body.content_type, **headers})

            try:
                response = self._idempotent(key, post)
            except RequestRejected as exc:
                # The server's key was rotated since we fetched it (and its grace period is over): fetch it again.
                if encrypt and attempt == 1 and "fetch it again" in exc.reason:
                    continue
                raise
            answered = self._json(response).get("id")
            if not isinstance(answered, str):
                raise ClientError(f"unexpected answer from {self.url}{path}: no {'data' if path == '/data' else 'message'} id")
            return answered
        raise AssertionError("unreachable")

    def queue(self, data_id: str, serv: str, dest: str, type: str, *, caption: str | None = None,
              filename: str | None = None, at: str | float | None = None, idempotency_key: str | None = None,
              convert: bool | None = None) -> str:
        """Queue a message for an uploaded data id (``POST /msg``); returns the message id.

        ``at``: not sent before this time (RFC 3339 with an offset, or Unix seconds).
        ``convert``: True has voice and audio the platform refuses transcoded by the
        server, False never (None: the service instance's default).
        """
        fields = {"id": data_id, **_message_fields(serv, dest, type, caption, filename, at, convert)}
        response = self._idempotent(idempotency_key, lambda headers: self._request("POST", "/msg", data=fields, headers=headers))
        message_id = self._json(response).get("id")
        if not isinstance(message_id, str):
            raise ClientError(f"unexpected answer from {self.url}/msg: no message id")
        return message_id

    def send(self, content: Content, serv: str, dest: str, type: str | None = None, *,
             caption: str | None = None, filename: str | None = None, encrypt: bool = True,
             progress: Progress | None = None, at: str | float | None = None, idempotency_key: str | None = None,
             convert: bool | None = None) -> str:
        """Upload and queue in one call; returns the message id.

        One request (``POST /send``) when the server has it (its ``/openapi.json``
        lists it), else ``POST /data`` then ``POST /msg`` (older servers; also
        after a 404 or 405 from ``/send``, remembered for this client).
        ``filename`` names the upload (and, for documents, the file the recipient sees).
        ``idempotency_key`` goes with every request (the server keeps them apart by endpoint).
        """
        source = _Source(content, filename)
        datatype = type or infer_type(source.head(), serv)
        shown = filename if datatype == "document" else None
        if self.has_send():
            try:
                return self._post_content("/send", source, encrypt, progress, idempotency_key,
                                          _message_fields(serv, dest, datatype, caption, shown, at, convert))
            except (NotFound, RequestRejected) as exc:
                if exc.status not in (404, 405):
                    raise
                self._has_send = False  # a proxy or an older server without it: the two requests instead
        data_id = self._upload(source, encrypt, progress, idempotency_key)
        return self.queue(data_id, serv, dest, datatype, caption=caption, filename=shown, at=at,
                          idempotency_key=idempotency_key, convert=convert)

    def has_send(self) -> bool:
        """Whether the server takes ``POST /send`` (asked of its ``/openapi.json`` once per client)."""
        if self._has_send is None:
            try:
                paths = self._json(self._request("GET", "/openapi.json")).get("paths")
            except ConnectionFailed:
                raise
            except ClientError:  # no description (an older or a trimmed-down server): the two-request way
                paths = None
            self._has_send = isinstance(paths, dict) and "/send" in paths
        return self._has_send

    def cancel(self, message_id: str) -> Status:
        """Cancel a queued or scheduled message (``POST /cancel``); its status, now ``cancelled``.

        ``RequestRejected`` (409) if it is being sent now or is final already; ``NotFound`` if unknown.
        """
        return Status.from_json(self._json(self._request("POST", "/cancel", data={"id": message_id})))

    def status(self, message_id: str) -> Status:
        """The message's state (``POST /cons``). A final state is archived a grace period after it is first read; then the id is unknown."""
        return Status.from_json(self._json(self._request("POST", "/cons", data={"id": message_id})))

    def wait(self, message_id: str, timeout: float | None = None, *, interval: float = 0.2,
             max_interval: float = 2.0, on_poll: Callable[[Status], None] | None = None) -> Status:
        """Poll until the message is delivered or failed; returns that final status.

        ``on_poll`` sees every status polled. ``WaitTimeout`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            last = self.status(message_id)
            if on_poll:
                on_poll(last)
            if last.final:
                return last
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"message {message_id} is still {last.state} after {timeout:g} s", last)
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            interval = min(max_interval, interval * 1.5)

    def history(self, *, state: str | None = None, serv: str | None = None, since: float | str | None = None,
                limit: int | None = None, cursor: str | None = None) -> dict:
        """One page of this client's own messages, newest first (``GET /messages``): ``{"messages": [...],
        "next_cursor": ...}``; pass ``next_cursor`` back as ``cursor`` for the next page (None: the last page)."""
        params = {k: str(v) for k, v in {"state": state, "serv": serv, "since": since, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        return self._json(self._request("GET", "/messages", params=params))

    def health(self) -> dict:
        """``GET /health`` (ServerError when the server says it is unhealthy)."""
        return self._json(self._request("GET", "/health"))
