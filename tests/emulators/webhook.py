"""A webhook receiver that checks Standard Webhooks signatures with the ``standardwebhooks`` package.

Owns the receiving side of a signed webhook (www.standardwebhooks.com): every request's
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are verified by
``standardwebhooks.Webhook(secret).verify(body, headers)`` (the reference library, not our
code); a request that does not verify gets 401 and is recorded with ``verified: false``.
The Python package verifies ``str`` bodies only (it decodes the body as UTF-8 and signs the
re-encoded text), so a multipart body carrying binary bytes cannot go through ``verify``: for
those the receiver takes the package's own decoded key and timestamp check and computes the
HMAC-SHA256 over the raw bytes, as the specification defines it (``verified_by`` says which).
Bodies are JSON (``{"type", "timestamp", "data"}``) or multipart (a ``payload`` field with that
JSON, and ``file``).

Records: method ``receive``, dest ``data.dest``, type ``data.datatype``, fields the payload,
files (``file``), media ``{"verified", "webhook_id", "error"}``.

Run: ``python -m tests.emulators.webhook --port 0 [--secret whsec_...]``.
"""

from __future__ import annotations

import json
from typing import Any

from .common import EmulatorApp, Option, Reply, Request, Send, describe_file, main

__all__ = ["WebhookApp", "SECRET"]

SECRET = "whsec_bXVsdGltc2ctZW11bGF0b3Itc2VjcmV0LTAxMjM0NTY="  # base64 of b"multimsg-emulator-secret-0123456"


def status(code: int, **headers: str) -> Reply:
    return Reply(code, {"error": f"HTTP {code}"}, headers=dict(headers), error=str(code))


class WebhookApp(EmulatorApp):
    """Standard Webhooks receiver."""

    name = "webhook"
    OPTIONS = {"secret": Option(SECRET, "the signing secret (whsec_ and base64)")}
    NAMED = {
        "gone": lambda x: status(410),
        "too_many": lambda x: status(429, **{"Retry-After": str(x.get("retry_after", 2))}),
        "bad_gateway": lambda x: status(502, **{"Retry-After": str(x.get("retry_after", 1))}),
        "gateway_timeout": lambda x: status(504),
        "bad_request": lambda x: status(400),
        "server_error": lambda x: status(500),
    }

    def route(self, request: Request) -> Send | Reply:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        if request.method != "POST" or request.path != "/hook":
            return status(404)
        raw = request.get_data(cache=True)
        headers = {key.lower(): value for key, value in request.headers.items()}
        hook = Webhook(self.config["secret"])
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            verified_by = "hmac over the raw bytes, with the package's key"
        else:
            verified_by = "standardwebhooks"
        try:
            if verified_by == "standardwebhooks":
                hook.verify(raw, headers)
            else:
                _verify_bytes(hook, raw, headers)
            verified, problem = True, None
        except WebhookVerificationError as exc:
            verified, problem = False, str(exc)
        if request.mimetype == "application/json":
            payload, files = json.loads(raw), {}
        else:
            payload = json.loads(request.form.get("payload") or "{}")
            files = {name: describe_file(upload) for name, upload in request.files.items()}
        data = payload.get("data") or {} if isinstance(payload, dict) else {}
        send = Send("receive", dest=data.get("dest"), type=data.get("datatype"), fields=payload, files=files,
                    media={"verified": verified, "verified_by": verified_by, "webhook_id": headers.get("webhook-id"), "error": problem,
                           "content_type": request.mimetype})
        if not verified:
            send.problems, send.invalid = [problem or ""], status(401)
        return send

    def deliver(self, send: Send) -> Reply:
        return Reply(200, {"received": send.media["webhook_id"]})


def _verify_bytes(hook: Any, raw: bytes, headers: dict[str, str]) -> None:
    """The specification's check for a body that is not UTF-8: the package's key and timestamp rule, HMAC over the bytes."""
    import base64
    import hashlib
    import hmac

    from standardwebhooks.webhooks import WebhookVerificationError

    try:
        msg_id, timestamp, signatures = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    except KeyError:
        raise WebhookVerificationError("Missing required headers") from None
    hook._Webhook__verify_timestamp(timestamp)
    expected = base64.b64encode(hmac.new(hook._whsecret, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()).decode()
    for signature in signatures.split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("No matching signature found")


if __name__ == "__main__":
    main(WebhookApp)
