"""Platform webhooks in: WhatsApp's verification handshake, its signature, and its status notifications.

Meta calls ``GET /webhook/wpp1?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C``
once when the webhook is set up: the answer is ``C`` when ``T`` is
``MULTIMSG_WPP1_VERIFY_TOKEN`` (compared in constant time), else 403. Every
notification is a POST signed with ``X-Hub-Signature-256: sha256=<hex
HMAC-SHA256 of the raw body, keyed with MULTIMSG_WPP1_APP_SECRET>``; the HMAC
is computed over the bytes received, before any parsing (Meta escapes non-ASCII
characters such as emoji as ``\\uXXXX`` in the JSON it signs: re-serialising
would break the signature).

``statuses`` picks the receipts out of a notification, leniently: anything
that is not a well-formed status is skipped, never an error (a well-signed
notification always gets 200, or Meta retries it for days).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from .errors import Forbidden, Unauthorized
from .queue.receipts import STATUSES, Receipt

__all__ = ["handshake", "verify_signature", "statuses", "Forbidden"]


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def handshake(args: Any, verify_token: str) -> str:
    """The challenge to answer, or ``Forbidden``."""
    if args.get("hub.mode") != "subscribe" or not _same(args.get("hub.verify_token") or "", verify_token):
        raise Forbidden("the verify token does not match")
    return args.get("hub.challenge") or ""


def verify_signature(raw: bytes, header: str | None, app_secret: str) -> None:
    """``Unauthorized`` (401) without a signature, ``Forbidden`` (403) with a wrong one."""
    if not header:
        raise Unauthorized("X-Hub-Signature-256 is missing")
    scheme, _, given = header.strip().partition("=")
    expected = hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
    if not app_secret or scheme != "sha256" or not hmac.compare_digest(given.strip().lower().encode("ascii", "replace"), expected.encode()):
        raise Forbidden("X-Hub-Signature-256 does not match the body")


def statuses(raw: bytes) -> list[tuple[str, Receipt]]:
    """(our message id, receipt) for every well-formed status in the notification."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    found: list[tuple[str, Receipt]] = []
    for entry in _list(body.get("entry") if isinstance(body, dict) else None):
        for change in _list(entry.get("changes")):
            value = change.get("value")
            for status in _list(value.get("statuses") if isinstance(value, dict) else None):
                parsed = _status(status)
                if parsed is not None:
                    found.append(parsed)
    return found


def _list(value: Any) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _status(status: dict) -> tuple[str, Receipt] | None:
    wamid, kind, ours = status.get("id"), status.get("status"), status.get("biz_opaque_callback_data")
    if not (isinstance(wamid, str) and wamid and isinstance(ours, str) and ours and kind in STATUSES):
        return None
    stamp = status.get("timestamp")
    if not isinstance(stamp, (str, int, float)) or isinstance(stamp, bool):
        return None
    try:
        at = float(stamp)
    except ValueError:
        return None
    if at != at or at in (float("inf"), float("-inf")):
        return None
    error = None
    errors = _list(status.get("errors"))
    if errors:
        first = errors[0]
        error = {k: first[k] for k in ("code", "title", "message", "error_data", "href") if k in first}
    return ours, Receipt(wamid, kind, at, error)
