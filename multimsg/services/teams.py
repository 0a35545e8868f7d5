"""Microsoft Teams, through a Workflows webhook (kind ``teams``; setting ``url``).

The URL a "Post to a channel when a webhook request is received" workflow
gives (it carries a signature: a secret). ``dest`` is ``-``: the channel is
the workflow's. Only text: files are refused at ``/msg`` with the reason
(a Workflows webhook takes no attachments).

- text: ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": <Adaptive Card 1.4 with
  one wrapping TextBlock>}]}``, parts of 6000 characters (a Teams message is
  at most about 28 KB).

=========================================  ===========================================
answer                                     outcome
=========================================  ===========================================
200, 202                                   delivered (the workflow run id when given)
429                                        retry after ``Retry-After``; the service slows down
5xx, timeout, connection error             retry
401, 403, 404                              misconfigured: the workflow URL was refused
400, 413, any other 4xx                    failed, with the HTTP status and the answer's message
=========================================  ===========================================
"""

from __future__ import annotations

import re

import requests

from ..errors import MultimsgError
from .base import THROTTLE_SERVICE, Outcome, ServiceBase, json_or_none, seconds_or_none
from .datatypes import Datatypes

__all__ = ["Teams", "card"]


def card(text: str) -> dict:
    """The message a Workflows webhook posts: one Adaptive Card with the text."""
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [{"type": "TextBlock", "text": text, "wrap": True}],
            },
        }],
    }


class Teams(ServiceBase):
    kind = "teams"
    url: str  # the settings, set from the ServiceConfig
    datatypes = frozenset({Datatypes.TEXT})
    dest_format = "'-' (the workflow's channel)"
    dest_pattern = re.compile(r"-")
    rate = 4.0  # Teams webhooks: about 4 requests per second
    credentials = {"url": "url"}
    secrets = frozenset({"url"})
    text_limit = 6000

    def dest_limit(self, dest: str) -> tuple[int, float]:
        return (4, 1.0)

    def send(self, data: dict) -> Outcome:
        try:
            texts = self.text_parts(data["content"])
        except MultimsgError as exc:
            return Outcome.failed(f"{self.name}: {exc.reason}")
        return self.send_parts(data, [self._part(text) for text in texts])

    def _part(self, text: str):
        return lambda pace: self.post(self.url.strip(), self.classify, pace=pace, json=card(text))

    def classify(self, response: requests.Response) -> Outcome:
        status = response.status_code
        body = json_or_none(response) or {}
        detail = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else body.get("message")
        reason = f"{self.name}: HTTP {status} {response.reason or ''}".strip() + (f": {detail}" if detail else "")
        if status in (200, 202):
            return Outcome.delivered([response.headers.get("x-ms-workflow-run-id") or f"accepted-{status}"])
        if status == 429:
            return Outcome.retry(reason, seconds_or_none(response.headers.get("Retry-After")), throttle=THROTTLE_SERVICE)
        if status >= 500:
            return Outcome.retry(reason)
        if status in (401, 403, 404):
            return Outcome.misconfigured(f"{reason}: check the workflow URL")
        return Outcome.failed(reason)
