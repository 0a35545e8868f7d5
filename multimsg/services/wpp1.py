"""WhatsApp (``wpp1``), through Meta's WhatsApp Business Cloud API.

``POST <api_url>/<phone-number-id>/messages`` with ``Authorization: Bearer``.
Answers are classified by ``error.code``, not by HTTP status (Meta answers
rate limits with HTTP 400); facts: shared/docs/platform-apis.md §2.

=====================================  ==========================================
answer                                 outcome
=====================================  ==========================================
200 with ``messages[0].id``            delivered, with the wamid
code 130429, 131056, 80007, 4          retry later (rate limits)
code 131000, HTTP 5xx, timeout         retry
code 190, HTTP 401                     misconfigured (token): message stays queued
any other error code                   failed, with the platform's message
=====================================  ==========================================
"""

from __future__ import annotations

import re

import requests

from .base import Outcome, ServiceBase, json_or_none, read_text
from .datatypes import Datatypes

__all__ = ["WhatsApp"]

RATE_LIMIT_CODES = frozenset({130429, 131056, 80007, 4})
TRANSIENT_CODES = frozenset({131000})
TOKEN_CODES = frozenset({190})


class WhatsApp(ServiceBase):
    name = "wpp1"
    datatypes = frozenset({Datatypes.TEXT})
    dest_format = "an international phone number, digits only, without '+', spaces or dashes (8 to 15 digits)"
    dest_pattern = re.compile(r"[1-9][0-9]{7,14}")
    rate = 80.0  # Cloud API throughput: 80 messages per second per business phone number
    credentials = {"token": "MULTIMSG_WPP1_TOKEN", "phone_number_id": "MULTIMSG_WPP1_PHONE_NUMBER_ID"}
    options = {"api_url": ("MULTIMSG_WPP1_API_URL", "https://graph.facebook.com/v23.0")}

    def dest_limit(self, dest: str) -> tuple[int, float]:
        # Pair rate limit (error 131056): about one message every 6 s to the same recipient.
        return (1, 6.0)

    def _url(self, edge: str) -> str:
        return f"{self.api_url.rstrip('/')}/{self.phone_number_id}/{edge}"

    @property
    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def send(self, data: dict) -> Outcome:
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": data["dest"],
            "type": "text",
            "text": {"body": read_text(data["path"])},
        }
        return self.post(self._url("messages"), self.classify, json=body, headers=self._auth)

    @staticmethod
    def classify(response: requests.Response) -> Outcome:
        body = json_or_none(response) or {}
        if response.status_code == 200 and body.get("messages"):
            return Outcome.delivered([str(body["messages"][0]["id"])])
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = error.get("code")
        reason = f"wpp1: {error.get('message') or f'HTTP {response.status_code}'}" + (f" (code {code})" if code else "")
        if code in TOKEN_CODES or response.status_code == 401:
            return Outcome.misconfigured(reason)
        if code in RATE_LIMIT_CODES:
            return Outcome.retry(reason, _retry_after(response))
        if code in TRANSIENT_CODES or response.status_code >= 500 or not error:
            return Outcome.retry(reason)
        return Outcome.failed(reason)


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
