"""Discord webhook emulator: ``POST /api/webhooks/<id>/<token>[?wait=true][&thread_id=N]``.

Owns Discord's "Execute Webhook" wire format (discord.com/developers/docs/resources/webhook):
JSON ``{"content"}`` or ``multipart/form-data`` with ``payload_json`` and ``files[n]``; the
message object answered with ``wait=true`` (204 without it); the error envelope
``{"message", "code"}`` (10015 Unknown Webhook, 50027 Invalid Webhook Token, 50035 Invalid
Form Body, 40005 Request entity too large, 10003 Unknown Channel); the 429 body
``{"message", "retry_after" (seconds, a float), "global"}`` with ``Retry-After`` and the
``X-RateLimit-*`` headers; 2000 characters of content, 10 MiB per file; 5 requests per 2 s
per webhook.

Records: method ``execute``, dest the thread id or ``-``, type ``text`` or ``file``, fields
the payload (JSON or ``payload_json``), files, media ``{"wait"}``.

Run: ``python -m tests.emulators.discord --port 0 [--webhook-id N] [--token T] [--rate N]``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from .common import EmulatorApp, Limit, Option, Reply, Request, Send, describe_file, main

__all__ = ["DiscordApp"]

MAX_CONTENT, MAX_FILE = 2000, 10 * 1024 * 1024


def error(status: int, message: str, code: int, **extra: Any) -> Reply:
    return Reply(status, {"message": message, "code": code, **extra}, error=message)


def limited(retry_after: float, header: bool = True, body: bool = True) -> Reply:
    payload = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False} if body else {"message": "429"}
    headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(retry_after),
               "X-RateLimit-Scope": "user"}
    if header:
        headers["Retry-After"] = str(math.ceil(retry_after))
    return Reply(429, payload, headers=headers, error="rate limited")


class DiscordApp(EmulatorApp):
    """Discord webhook emulator."""

    name = "discord"
    OPTIONS = {
        "webhook_id": Option("112233445566778899", "the webhook's id in the URL"),
        "token": Option("emu-webhook-token", "the webhook's token in the URL"),
        "rate": Option(5, "requests per sliding 2 s window per webhook; 0 = off"),
    }
    NAMED = {
        "rate_limited": lambda x: limited(float(x.get("retry_after", 1.5))),
        "rate_limited_body_only": lambda x: limited(float(x.get("retry_after", 1.5)), header=False),
        "rate_limited_header_only": lambda x: limited(float(x.get("retry_after", 2)), body=False),
        "unknown_webhook": lambda x: error(404, "Unknown Webhook", 10015),
        "invalid_token": lambda x: error(401, "Invalid Webhook Token", 50027),
        "unknown_channel": lambda x: error(404, "Unknown Channel", 10003),
        "invalid_form": lambda x: error(400, "Invalid Form Body", 50035),
        "too_large": lambda x: error(413, "Request entity too large", 40005),
        "server_error": lambda x: error(500, "500: Internal Server Error", 0),
        "bad_gateway": lambda x: Reply(502, raw="<html><body>502 Bad Gateway</body></html>", error="502"),
    }

    def __init__(self, **config: Any) -> None:
        self.ids = itertools.count(1_300_000_000_000_000_001)
        super().__init__(**config)

    def route(self, request: Request) -> Send | Reply:
        match = re.fullmatch(r"/api(?:/v10)?/webhooks/([0-9]+)/([^/]+)", request.path)
        if match is None or request.method != "POST":
            return error(404, "404: Not Found", 0)
        denied = None
        if match.group(1) != self.config["webhook_id"]:
            denied = error(404, "Unknown Webhook", 10015)
        elif match.group(2) != self.config["token"]:
            denied = error(401, "Invalid Webhook Token", 50027)
        files = {name: describe_file(upload) for name, upload in request.files.items()}
        if request.is_json:
            payload = request.get_json(silent=True)
        else:
            try:
                payload = json.loads(request.form.get("payload_json") or "{}")
            except ValueError:
                payload = None
        send = Send("execute", dest=request.args.get("thread_id") or "-", type="file" if files else "text",
                    fields=payload if isinstance(payload, dict) else {}, files=files, denied=denied,
                    media={"wait": request.args.get("wait") == "true"})
        problem = self._check(send, payload)
        if problem is not None:
            send.problems, send.invalid = [problem.error or ""], problem
        return send

    @staticmethod
    def _check(send: Send, payload: Any) -> Reply | None:
        if not isinstance(payload, dict):
            return error(400, "Invalid Form Body", 50035)
        content = str(payload.get("content") or "")
        if len(content) > MAX_CONTENT:
            return error(400, "Invalid Form Body", 50035, errors={"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}})
        if not content.strip() and not send.files:
            return error(400, "Cannot send an empty message", 50006)
        if any(file["size"] > MAX_FILE for file in send.files.values()):
            return error(413, "Request entity too large", 40005)
        if any(not re.fullmatch(r"files\[[0-9]+\]", name) for name in send.files):
            return error(400, "Invalid Form Body", 50035)
        return None

    def limits(self, send: Send) -> list[Limit]:
        return [Limit(self.log("webhook"), self.config["rate"], 2.0, "webhook")]

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        return limited(round(max(wait, 0.05), 3))

    def deliver(self, send: Send) -> Reply:
        if not send.media["wait"]:
            return Reply(204, raw="")
        message_id = str(next(self.ids))
        attachments = [{"id": str(next(self.ids)), "filename": file["filename"], "size": file["size"],
                        "content_type": file["content_type"]} for file in send.files.values()]
        return Reply(200, {"id": message_id, "type": 0, "channel_id": send.dest if send.dest != "-" else "998877665544332211",
                           "content": send.fields.get("content") or "", "attachments": attachments,
                           "webhook_id": self.config["webhook_id"]})


if __name__ == "__main__":
    main(DiscordApp)
