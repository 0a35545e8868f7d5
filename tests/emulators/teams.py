"""Microsoft Teams Workflows webhook emulator: ``POST /workflows/<id>/triggers/manual/paths/invoke?...&sig=S``.

Owns the wire format of the "When a Teams webhook request is received" trigger
(learn.microsoft.com, "Create incoming webhooks with Workflows for Microsoft Teams"): a JSON
``{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
"content": <AdaptiveCard>}]}``, answered 202 Accepted with an empty body and the run id in
``x-ms-workflow-run-id``; a wrong ``sig`` is 401 with the Logic Apps error envelope
``{"error": {"code", "message"}}``; a body over 28 KB is 413; 4 requests per second.

Records: method ``invoke``, dest ``-``, type ``text``, json the body, fields ``{"texts": [...]}``
(the TextBlocks' text).

Run: ``python -m tests.emulators.teams --port 0 [--workflow W] [--sig S] [--rate N]``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from .common import EmulatorApp, Limit, Option, Reply, Request, Send, main

__all__ = ["TeamsApp"]

CARD = "application/vnd.microsoft.card.adaptive"
MAX_BODY = 28 * 1024


def error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, headers=dict(headers), error=code)


class TeamsApp(EmulatorApp):
    """Teams Workflows webhook emulator."""

    name = "teams"
    OPTIONS = {
        "workflow": Option("0a1b2c3d4e5f", "the workflow id in the URL"),
        "sig": Option("emu-signature", "the sig query parameter the URL carries"),
        "rate": Option(4, "requests per sliding 1 s window; 0 = off"),
    }
    NAMED = {
        "rate_limited": lambda x: error(429, "WorkflowRequestsThrottled", "Rate limit is exceeded.", **{"Retry-After": str(x.get("retry_after", 2))}),
        "unauthorized": lambda x: error(401, "DirectApiAuthorizationRequired", "The request must be authenticated."),
        "not_found": lambda x: error(404, "WorkflowNotFound", "The workflow could not be found."),
        "bad_request": lambda x: error(400, "InvalidRequestContent", "The request content is not valid."),
        "server_error": lambda x: error(500, "InternalServerError", "Encountered an internal server error."),
        "bad_gateway": lambda x: error(502, "BadGateway", "Bad gateway."),
    }

    def __init__(self, **config: Any) -> None:
        self.runs = itertools.count(8585000000000001)
        super().__init__(**config)

    def route(self, request: Request) -> Send | Reply:
        match = re.fullmatch(r"/workflows/([^/]+)/triggers/manual/paths/invoke", request.path)
        if match is None or match.group(1) != self.config["workflow"] or request.method != "POST":
            return error(404, "WorkflowNotFound", "The workflow could not be found.")
        denied = None
        if request.args.get("sig") != self.config["sig"]:
            denied = error(401, "DirectApiAuthorizationRequired", "The request must be authenticated.")
        raw = request.get_data()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        texts = _texts(body)
        send = Send("invoke", dest="-", type="text", json=body, fields={"texts": texts}, denied=denied)
        problem = None
        if len(raw) > MAX_BODY:
            problem = error(413, "RequestEntityTooLarge", "The request is larger than 28 KB.")
        elif texts is None:
            problem = error(400, "InvalidRequestContent", "The body must be a message with an Adaptive Card attachment.")
        if problem is not None:
            send.problems, send.invalid = [problem.error or ""], problem
        return send

    def limits(self, send: Send) -> list[Limit]:
        return [Limit(self.log("workflow"), self.config["rate"], 1.0, "workflow")]

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        return error(429, "WorkflowRequestsThrottled", "Rate limit is exceeded.", **{"Retry-After": "1"})

    def deliver(self, send: Send) -> Reply:
        return Reply(202, raw="", headers={"x-ms-workflow-run-id": str(next(self.runs))})


def _texts(body: Any) -> list[str] | None:
    """The TextBlocks of a valid message's Adaptive Cards, or None when it is not one."""
    if not isinstance(body, dict) or body.get("type") != "message" or not isinstance(body.get("attachments"), list):
        return None
    texts = []
    for attachment in body["attachments"]:
        card = attachment.get("content") if isinstance(attachment, dict) else None
        if attachment.get("contentType") != CARD or not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return None
        if not isinstance(card.get("body"), list) or not card.get("version"):
            return None
        texts += [str(block.get("text")) for block in card["body"] if isinstance(block, dict) and block.get("type") == "TextBlock"]
    return texts or None


if __name__ == "__main__":
    main(TeamsApp)
