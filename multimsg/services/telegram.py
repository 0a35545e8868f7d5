"""Telegram, through the Bot API (``https://api.telegram.org/bot<token>/<method>``).

Answers are classified by this table (facts: shared/docs/platform-apis.md §1):

====================================  =============================================
answer                                outcome
====================================  =============================================
200 ``ok: true``                      delivered, with ``result.message_id``
429                                   retry after ``parameters.retry_after`` (or ``Retry-After``)
5xx, non-JSON body, timeout, no link  retry
401, 404                              misconfigured (bad token): message stays queued
other 4xx (400, 403, 413)             failed, with the platform's ``description``
====================================  =============================================
"""

from __future__ import annotations

import re

import requests

from .base import Outcome, ServiceBase, json_or_none, read_text
from .datatypes import Datatypes

__all__ = ["Telegram"]


class Telegram(ServiceBase):
    name = "telegram"
    datatypes = frozenset({Datatypes.TEXT})
    dest_format = "a chat id (an integer, negative for groups) or @channelusername"
    dest_pattern = re.compile(r"-?[1-9][0-9]{0,19}|@[A-Za-z][A-Za-z0-9_]{3,31}")
    rate = 30.0  # Bots FAQ: about 30 messages per second for bulk notifications
    credentials = {"token": "MULTIMSG_TELEGRAM_TOKEN"}
    options = {"api_url": ("MULTIMSG_TELEGRAM_API_URL", "https://api.telegram.org")}

    def dest_limit(self, dest: str) -> tuple[int, float]:
        # Bots FAQ: about 1 message per second in one chat, 20 per minute in a group.
        if dest.startswith("-") or dest.startswith("@"):
            return (20, 60.0)
        return (1, 1.0)

    def _url(self, method: str) -> str:
        return f"{self.api_url.rstrip('/')}/bot{self.token}/{method}"

    def send(self, data: dict) -> Outcome:
        text = read_text(data["path"])
        return self.post(self._url("sendMessage"), self.classify, data={"chat_id": data["dest"], "text": text})

    @staticmethod
    def classify(response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        description = str(body.get("description") or f"HTTP {response.status_code}")
        if response.status_code == 200 and body.get("ok") is True:
            return Outcome.delivered([str(body["result"]["message_id"])])
        if response.status_code == 429:
            parameters = body.get("parameters") or {}
            after = parameters.get("retry_after") or response.headers.get("Retry-After")
            return Outcome.retry(f"telegram: {description}", _seconds(after))
        if response.status_code >= 500 or not body:
            return Outcome.retry(f"telegram: {description}")
        if response.status_code in (401, 404):
            return Outcome.misconfigured(f"telegram: the bot token was refused ({description})")
        return Outcome.failed(f"telegram: {description}")


def _seconds(value) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None
