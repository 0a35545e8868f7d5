"""Signed status callbacks: events about a message POSTed to the client's callback URL.

Every state or receipt change of a message that has a callback URL (``/msg``
field ``callback``, else ``MULTIMSG_CALLBACK_URL``, else the token's default)
becomes an event in the store's outbox (``queue/outbox.py``) right after the
change is written; the drain pass delivers the due ones (``dispatch``).

- Body: ``{"type": "message.delivered" | "message.failed" | "message.read" |
  "message.receipt", "timestamp": ISO time, "data": <the /cons JSON answer>}``,
  fixed when the event is made.
- Signed as Standard Webhooks do it, with an asymmetric key: headers
  ``webhook-id`` (the same on every retry), ``webhook-timestamp`` (Unix seconds
  of the attempt) and ``webhook-signature: v1a,<base64 Ed25519 signature of
  "{id}.{timestamp}.{body}">``. The key pair is made on first use and kept in
  the data folder's ``keys/callback-ed25519.pem``; with the Redis backend it is
  kept in Redis (``mm:{T}:key:callback``), so that every gateway sharing it
  signs with one key. ``GET /callback-key`` serves the public key.
- Delivery: at least once. A 2xx ends it; anything else, a connection error or
  no answer within 5 s is retried after ``MULTIMSG_CALLBACK_BACKOFF`` (seconds
  between attempts; by default 8 attempts over about 24 h), then given up.
  Redirects are not followed, the response body is not read.
- Safe: only http and https; a host that resolves to a loopback, private,
  link-local, multicast, reserved or unspecified address is refused at
  ``/msg`` and again at connect time, where the gateway connects to the very
  address it checked (no DNS rebinding), unless ``MULTIMSG_CALLBACK_ALLOW_PRIVATE``.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from filelock import FileLock

from .errors import InvalidInput
from .fsutil import write_atomic
from .ids import new_id
from .layout import Layout
from .model import Message
from .queue.outbox import Event
from .queue.store import MessageStore

__all__ = ["CallbackKeys", "check_url", "check_syntax", "make_event", "report", "dispatch", "Dispatcher", "DEFAULT_BACKOFF", "TIMEOUT"]

log = logging.getLogger("multimsg.callbacks")

TIMEOUT = 5.0  # seconds a receiver has to connect and answer
DEFAULT_BACKOFF = (60.0, 300.0, 1800.0, 3600.0, 7200.0, 21600.0, 50400.0)  # 8 attempts over ~23.6 h
MAX_URL = 2048
WORKERS = 8  # callbacks posted at once
BATCH = 32  # events leased at a time
BUDGET = 20.0  # seconds one run keeps starting new deliveries (less than the lease)
TIME_FIELDS = ("created_at", "updated_at", "next_attempt_at", "scheduled_for")


# -- the /cons JSON answer (also the event's data) ------------------------------------------
def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report(message: Message) -> dict[str, Any]:
    """What ``/cons`` answers in JSON: ``Message.public`` with ISO times."""
    answer = message.public()
    answer.update({name: iso(answer[name]) for name in TIME_FIELDS})
    answer["receipt"] = {level: iso(at) for level, at in answer["receipt"].items()}
    return answer


def make_event(message: Message, kind: str, now: float) -> Event | None:
    """The outbox event for ``message`` after a change worth ``kind`` (None: it has no callback URL)."""
    if not message.callback:
        return None
    body = json.dumps({"type": kind, "timestamp": iso(now), "data": report(message)}, ensure_ascii=False)
    return Event(id="msg_" + new_id(), url=message.callback, body=body, message_id=message.id, created_at=now, next_at=now)


# -- the signing key -----------------------------------------------------------------------
class CallbackKeys:
    """The Ed25519 key pair callbacks are signed with (made on first use)."""

    def __init__(self, layout: Layout, store: MessageStore | None = None):
        self.layout = layout
        self.store = store
        self._lock = threading.Lock()
        self._key: Ed25519PrivateKey | None = None

    @staticmethod
    def _new_pem() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())

    def _load(self) -> Ed25519PrivateKey:
        pem = self.store.shared_key("callback", self._new_pem) if self.store is not None else None
        if pem is None:
            path = self.layout.keys / "callback-ed25519.pem"
            with FileLock(self.layout.lock("callback-key")):
                if not path.exists():
                    write_atomic(path, self._new_pem())
                pem = path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the callback signing key is not an Ed25519 key")
        return key

    @property
    def private_key(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._key is None:
                self._key = self._load()
            return self._key

    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def public_whpk(self) -> str:
        """Standard Webhooks' form of an asymmetric public key: ``whpk_`` + base64 of the raw 32 bytes."""
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "whpk_" + base64.b64encode(raw).decode()

    def headers(self, event: Event, now: float) -> dict[str, str]:
        timestamp = str(int(now))
        signature = self.private_key.sign(f"{event.id}.{timestamp}.{event.body}".encode())
        return {"webhook-id": event.id, "webhook-timestamp": timestamp,
                "webhook-signature": "v1a," + base64.b64encode(signature).decode()}


# -- where a callback may go -----------------------------------------------------------------
def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global)


def _split(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or len(url) > MAX_URL or any(c in url for c in "\r\n\t "):
        raise InvalidInput("callback must be an http or https URL of at most 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("callback must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InvalidInput("callback must not carry a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput("callback has an invalid port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def resolve(url: str, allow_private: bool) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, path, the address to connect to) for ``url``, or ``InvalidInput``.

    Every address the host resolves to must be public (unless ``allow_private``):
    one bad answer refuses the URL, so a name that mixes a public and a private
    address cannot be used to reach the private one.
    """
    scheme, host, port, path = _split(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"callback host {host!r} does not resolve ({exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise InvalidInput(f"callback host {host!r} does not resolve")
    if not allow_private and not all(_public(a) for a in addresses):
        raise InvalidInput(f"callback host {host!r} resolves to a loopback, private, link-local or multicast address; "
                           "callbacks go to public addresses only")
    return scheme, host, port, path, addresses[0]


def check_syntax(url: str) -> str:
    """``url`` if it is an http(s) URL a callback could go to (no resolution): ``InvalidInput`` if not."""
    _split(url)
    return url


def check_url(url: str, allow_private: bool) -> str:
    """``url`` if a callback may go there (``InvalidInput``, HTTP 400, if not)."""
    resolve(url, allow_private)
    return url


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with the URL's host for SNI and the certificate."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(url: str, body: bytes, headers: dict[str, str], allow_private: bool, timeout: float = TIMEOUT) -> int:
    """POST ``body`` to ``url`` (connecting to the address checked now); the status code. Raises on no answer."""
    scheme, host, port, path, address = resolve(url, allow_private)
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = _PinnedHTTPS(address, host, port, timeout)
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    default_port = 443 if scheme == "https" else 80
    host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default_port else f":{port}")
    try:
        connection.request("POST", path, body=body, headers={
            **headers, "Host": host_header, "Content-Type": "application/json", "User-Agent": "multimsg-callbacks",
        })
        response = connection.getresponse()
        return response.status  # the body is not read
    finally:
        connection.close()


# -- delivery ------------------------------------------------------------------------------------
class Dispatcher:
    """Delivers the due events of one store; run once per drain pass."""

    def __init__(self, store: MessageStore, keys: CallbackKeys, backoff: tuple[float, ...] = DEFAULT_BACKOFF,
                 allow_private: bool = False, clock: Callable[[], float] = time.time, lease: float = 60.0,
                 sender: Callable[..., int] = post):
        self.store = store
        self.keys = keys
        self.backoff = backoff
        self.allow_private = allow_private
        self.clock = clock
        self.lease = lease
        self.sender = sender

    def enqueue(self, message: Message | None, kind: str | None) -> None:
        """Put the event for this change in the outbox (a message without a callback URL has none)."""
        if message is None or kind is None:
            return
        event = make_event(message, kind, self.clock())
        if event is not None:
            self.store.enqueue_event(event)

    def run(self, budget: float = BUDGET) -> dict[str, int]:
        """Deliver what is due now, ``WORKERS`` at a time, for at most about ``budget`` seconds; this run's counts.

        The budget keeps a slow receiver (5 s per attempt) from holding up the
        drain pass that runs this; what is left is due at the next pass.
        """
        done = {"delivered": 0, "retried": 0, "given_up": 0}
        started, due_by, seen = time.monotonic(), self.clock(), set[str]()
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="multimsg-callback") as pool:
            while time.monotonic() - started < budget:
                batch = self.store.claim_events(due_by, self.lease, BATCH)  # due when the run began: one attempt per run
                if not batch or all(event.id in seen for event in batch):
                    break  # (a zero backoff only: those leases lapse and the next run takes them)
                seen.update(event.id for event in batch)
                for outcome in pool.map(self._deliver, batch):
                    done[outcome] += 1
        return done

    def _deliver(self, event: Event) -> str:
        now = self.clock()
        try:
            status = self.sender(event.url, event.body.encode(), self.keys.headers(event, now), self.allow_private)
            ok, why = 200 <= status < 300, f"HTTP {status}"
        except InvalidInput as exc:
            ok, why = False, exc.reason
        except (OSError, http.client.HTTPException) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        try:
            if ok:
                self.store.finish_event(event, None, True, self.clock())
                return "delivered"
            if event.attempts >= len(self.backoff):
                log.warning("callback %s for message %s given up after %d attempts (%s)", event.id, event.message_id,
                            event.attempts + 1, why)
                self.store.finish_event(event, None, False, self.clock())
                return "given_up"
            log.info("callback %s for message %s failed (%s); retried in %g s", event.id, event.message_id, why,
                     self.backoff[event.attempts])
            self.store.finish_event(event, self.clock() + self.backoff[event.attempts], False, self.clock())
        except Exception:  # the lease lapses and the event is tried again: at least once
            log.exception("callback %s: its outcome could not be written", event.id)
        return "retried"


def parse_backoff(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise SystemExit("MULTIMSG_CALLBACK_BACKOFF must be seconds between attempts, such as '60 300 1800'") from None
    if any(v < 0 for v in values):
        raise SystemExit("MULTIMSG_CALLBACK_BACKOFF must not be negative")
    return values


def dispatch(store: MessageStore, keys: CallbackKeys, **kw: Any) -> dict[str, int]:
    return Dispatcher(store, keys, **kw).run()
