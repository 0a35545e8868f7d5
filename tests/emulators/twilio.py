"""Twilio Programmable Messaging emulator: `POST /2010-04-01/Accounts/<sid>/Messages.json`.

Owns Twilio's documented wire format: HTTP Basic auth (account SID, auth token), form fields
`To`, `From` or `MessagingServiceSid`, `Body`, `MediaUrl` (repeatable); `201` with the Message
resource (`sid` "SM" + 32 hex, `status` "queued", ...); errors as
`{"code", "message", "more_info", "status"}` with the HTTP status of the error (20003 → 401,
20404 → 404, 20429 → 429, 21211/21614/21610/21617 → 400).

Run: `python -m tests.emulators.twilio --port 0 [--sid AC...] [--token T] [--sender +1...]`.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime, timezone
from typing import Any

from .common import EmulatorApp, Option, Reply, Request, Send, main

__all__ = ["TwilioApp", "twilio_error"]

MESSAGES = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource /2010-04-01/Accounts/{sid}/Messages.json was not found"),
    20429: (429, "Too Many Requests"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21614: (400, "'To' number is not a valid mobile number"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21606: (400, "The From phone number {sender} is not a valid, SMS-capable inbound phone number or short code for your account."),
    21602: (400, "Message body is required."),
}


def twilio_error(code: int, **values: Any) -> Reply:
    status, message = MESSAGES[code]
    message = message.format(**{"to": "", "sid": "", "sender": "", **values})
    return Reply(status, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
                 error=message)


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class TwilioApp(EmulatorApp):
    """Twilio Messages API emulator."""

    name = "twilio"
    OPTIONS = {
        "sid": Option("AC" + "0" * 31 + "1", "the account SID"),
        "token": Option("twilio-auth-token", "the auth token"),
        "sender": Option("+15005550006", "the account's phone number (From)"),
    }
    NAMED = {
        "too_many": lambda x: twilio_error(20429),
        "invalid_to": lambda x: twilio_error(21211, to=x.get("to", "")),
        "not_mobile": lambda x: twilio_error(21614),
        "unsubscribed": lambda x: twilio_error(21610),
        "auth": lambda x: twilio_error(20003),
        "server_error": lambda x: Reply(500, {"code": 20500, "message": "Internal Server Error", "status": 500}, error="500"),
        "bad_gateway": lambda x: Reply(503, raw="<html><body>503 Service Unavailable</body></html>", error="503 (HTML page)"),
    }

    def route(self, request: Request) -> Send | Reply:
        match = re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages\.json", request.path)
        if match is None or request.method != "POST":
            return twilio_error(20404, sid="")
        fields: dict[str, Any] = {key: request.form.getlist(key) if key == "MediaUrl" else value for key, value in request.form.items()}
        send = Send("Messages", dest=fields.get("To"), type="mms" if fields.get("MediaUrl") else "sms", fields=fields)
        auth = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(auth[len("Basic "):]).decode().partition(":") if auth.startswith("Basic ") else ("", "", "")
        except ValueError:
            user = password = ""
        if (user, password) != (self.config["sid"], self.config["token"]):
            send.denied = twilio_error(20003)
        elif match.group(1) != self.config["sid"]:
            send.denied = twilio_error(20404, sid=match.group(1))
        elif "MessagingServiceSid" not in fields and fields.get("From") != self.config["sender"]:
            send.denied = twilio_error(21606, sender=fields.get("From", ""))
        problem = None
        if not re.fullmatch(r"\+[1-9][0-9]{7,14}", str(fields.get("To") or "")):
            problem = twilio_error(21211, to=fields.get("To", ""))
        elif not fields.get("Body") and not fields.get("MediaUrl"):
            problem = twilio_error(21602)
        elif _utf16(str(fields.get("Body") or "")) > 1600:
            problem = twilio_error(21617)
        if problem is not None:
            send.invalid, send.problems = problem, [problem.error or ""]
        return send

    def deliver(self, send: Send) -> Reply:
        now = datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")
        sid, fields = "SM" + secrets.token_hex(16), send.fields
        media = fields.get("MediaUrl") or []
        return Reply(201, {
            "account_sid": self.config["sid"], "api_version": "2010-04-01", "body": fields.get("Body", ""),
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": fields.get("From"), "messaging_service_sid": fields.get("MessagingServiceSid"),
            "num_media": str(len(media)), "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "to": fields.get("To"), "uri": f"/2010-04-01/Accounts/{self.config['sid']}/Messages/{sid}.json",
        })


if __name__ == "__main__":
    main(TwilioApp)
