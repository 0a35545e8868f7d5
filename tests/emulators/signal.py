"""signal-cli-rest-api emulator: `POST /v2/send` on 127.0.0.1.

Owns the wire format of bbernhard/signal-cli-rest-api's send endpoint: a JSON body with
`message`, `number` (the account), `recipients` and `base64_attachments` (data URIs, either
bare base64 or `data:<mime>;filename=<name>;base64,<data>`), answered `201 {"timestamp": "<ms>"}`;
errors as `{"error": "..."}` (400), rate limits as `429 {"error", "challenge_tokens", "account"}`.
Attachments are decoded and recorded as files (`attachment0`, ...: sha256, size, filename,
content_type).

Run: `python -m tests.emulators.signal --port 0 [--number +N] [--latency S]`; prints `LISTENING <port>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import time
from typing import Any

from .common import EmulatorApp, Option, Reply, Request, Send, main

__all__ = ["SignalApp"]

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]+)(?:;filename=(?P<name>[^;,]*))?;base64,(?P<data>.*)", re.S)


def _error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": message, **extra}, error=message)


class SignalApp(EmulatorApp):
    """signal-cli-rest-api emulator."""

    name = "signal"
    OPTIONS = {
        "number": Option("+4915100000001", "the account signal-cli is registered with"),
        "token": Option("", "unused (signal-cli-rest-api has no authentication)"),
    }
    NAMED = {
        "captcha": lambda x: _error(429, "Failed to send message due to rate limiting: "
                                    "[429] Rate limit exceeded: 413 - proof required", challenge_tokens=["5c9c0d8e-0a9b-4b4f-8d0f-2d6b5f3c1a11"],
                                    account=x.get("account", "+4915100000001")),
        "rate_limited": lambda x: _error(429, "Failed to send message due to rate limiting"),
        "unregistered": lambda x: _error(400, 'Failed to send message: Unregistered user "' + str(x.get("who", "+4917000000000")) + '"'),
        "no_account": lambda x: _error(400, "User " + str(x.get("account", "+4915100000001")) + " is not registered. Specified account does not exist"),
        "server_error": lambda x: _error(500, "Internal Server Error"),
        "bad_gateway": lambda x: Reply(502, raw="<html><body><h1>502 Bad Gateway</h1></body></html>", error="502 (HTML page)"),
    }

    def __init__(self, **config: Any) -> None:
        self.counter = itertools.count(1)
        super().__init__(**config)

    def route(self, request: Request) -> Send | Reply:
        if request.path != "/v2/send" or request.method != "POST":
            return Reply(404, raw="404 page not found", content_type="text/plain", error="404")
        body = request.get_json(silent=True, force=True)
        send = Send("send", json=body)
        if not isinstance(body, dict):
            send.invalid = _error(400, "Couldn't process request - invalid request")
            send.problems = ["the body is not a JSON object"]
            return send
        recipients = body.get("recipients")
        send.dest = recipients[0] if isinstance(recipients, list) and len(recipients) == 1 else recipients
        send.fields = {k: v for k, v in body.items() if k != "base64_attachments"}
        problems = []
        if body.get("number") != self.config["number"]:
            send.denied = _error(400, f"User {body.get('number')} is not registered. Specified account does not exist")
        if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
            problems.append("recipients must be a non-empty list of strings")
        attachments = body.get("base64_attachments") or []
        for index, uri in enumerate(attachments):
            match = _DATA_URI.fullmatch(uri) if isinstance(uri, str) else None
            raw = match["data"] if match else uri
            try:
                decoded = base64.b64decode(raw, validate=True)
            except (binascii.Error, TypeError, ValueError):
                problems.append(f"base64_attachments[{index}] is not base64")
                continue
            send.files[f"attachment{index}"] = {
                "sha256": hashlib.sha256(decoded).hexdigest(), "size": len(decoded),
                "filename": match["name"] if match else None, "content_type": match["mime"] if match else None,
            }
        send.type = "attachment" if attachments else "text"
        if not attachments and not str(body.get("message") or "").strip():
            problems.append("message is empty")
        if problems:
            send.problems = problems
            send.invalid = _error(400, "Couldn't process request - invalid request: " + "; ".join(problems))
        return send

    def deliver(self, send: Send) -> Reply:
        return Reply(201, {"timestamp": str(int(time.time() * 1000) * 1000 + next(self.counter) % 1000)})


if __name__ == "__main__":
    main(SignalApp)
