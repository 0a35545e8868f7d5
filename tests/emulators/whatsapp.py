"""WhatsApp Cloud API emulator: `POST /<version>/<phone_number_id>/{messages,media}`.

Owns the WhatsApp wire format (the Cloud API documentation): Bearer-token and phone-number
checks, `/messages` bodies validated against Meta's OpenAPI spec (openapi.py) and basic
semantics, media uploads, the Graph error envelope, the throughput limit (130429) and the pair
rate limit (131056), both answered with HTTP 400 as Meta does, and the named scripted answers.

Status webhooks, the way Meta sends them: `POST /_emu/statuses` {"url": the webhook, "app_secret",
"message": our message id (its wamid is looked up in the records) | "wamid", "statuses": ["sent",
"delivered", "read", "failed", ...] (in this order: out-of-order is just another order),
"duplicates": N (each notification sent N more times), "batch": true (all statuses in one
notification), "errors": [...] (for failed), "signature": "good" | "bad" | "none", "retries": N
(a non-200 answer is retried, as Meta does, here after 0.1 s, 0.2 s, ...), "ascii": true (non-ASCII
escaped as \\uXXXX, as Meta does; false: raw UTF-8)}; every body carries an emoji in the contact's
profile name. Answers {"wamid", "attempts": [[http status or 0, ...] per notification]}.

Run: `python -m tests.emulators.whatsapp --port 0 [--token T] [--phone-id ID] [--latency S]
[--rate N] [--pair-interval S]`; it prints `LISTENING <port>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from typing import Any, Callable

from . import openapi
from .common import EmulatorApp, Limit, Option, Reply, Request, Send, main

__all__ = ["WhatsAppApp", "CODES", "graph_error", "wa_id"]

MAX_TEXT, MAX_CAPTION = 4096, 1024
_MIB = 1024 * 1024
# Supported media and sizes (the Cloud API documentation); other MIME types are taken as documents.
_MEDIA_LIMITS = {
    "image/jpeg": 5 * _MIB, "image/png": 5 * _MIB, "image/webp": 500 * 1024,
    **{t: 16 * _MIB for t in ("audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg", "video/mp4", "video/3gpp")},
}
_DOCUMENT_LIMIT = 100 * _MIB
_MEDIA_TYPES = {  # message type -> uploaded MIME types it can carry (document: any)
    "image": {"image/jpeg", "image/png"}, "sticker": {"image/webp"}, "video": {"video/mp4", "video/3gpp"},
    "audio": {"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"},
}
_CAPTIONED = {"image", "video", "document"}

# code -> (HTTP status, title, error_data.details); titles and statuses from the Cloud API documentation.
CODES: dict[int, tuple[int, str, str]] = {
    130429: (400, "Rate limit hit", "Cloud API message throughput has been reached."),
    131056: (400, "(Business Account, Consumer Account) pair rate limit hit",
             "Message failed to send because there were too many messages sent from this phone number "
             "to the same phone number in a short period of time."),
    80007: (400, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    4: (400, "API Too Many Calls", "Application request limit reached."),
    131000: (500, "Something went wrong", "Message failed to send due to an unknown error."),
    131026: (400, "Message undeliverable",
             "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp "
             "phone number; the recipient has not accepted the new Terms of Service."),
    131047: (400, "Re-engagement message",
             "Message failed to send because more than 24 hours have passed since the customer last replied "
             "to this number."),
    100: (400, "Invalid Parameter", "Invalid parameter."),
    131053: (400, "Media upload error", "Unable to upload the media used in the message."),
}


def graph_error(status: int, code: int, message: str, details: str | None = None, **extra: Any) -> Reply:
    """The Graph API error envelope (`error_subcode` left out, as since v16.0)."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error.update(extra)
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)[:22]
    return Reply(status, {"error": error}, error=message)


def _coded(code: int, specifics: str | None = None, status: int | None = None) -> Reply:
    default_status, title, details = CODES[code]
    message = f"(#{code}) {title}" + (f": {specifics}" if specifics else "")
    return graph_error(status or default_status, code, message, specifics or details)


def _token_error(reason: str) -> Reply:
    return graph_error(401, 190, f"Error validating access token: {reason}")


def _named(code: int) -> Callable[[dict[str, Any]], Reply]:
    return lambda x: _coded(code, x.get("details"), x.get("status"))


def wa_id(number: Any) -> str:
    """The digits-only form WhatsApp answers with in `contacts[].wa_id`."""
    text = str(number)
    return re.sub(r"\D", "", text) if re.fullmatch(r"\+?[\d\s().-]+", text) else text


class WhatsAppApp(EmulatorApp):
    """WhatsApp Cloud API emulator."""

    name = "whatsapp"
    OPTIONS = {
        "token": Option("TESTTOKEN", "access token expected in 'Authorization: Bearer <token>'"),
        "phone_id": Option("106540352242922", "the phone number id in /<version>/<phone_id>/messages"),
        "rate": Option(80, "messages per sliding 1 s window for the phone number (code 130429); 0 = off"),
        "pair_interval": Option(0.0, "seconds between two messages to one recipient (code 131056); 0 = off", on=6.0),
    }
    NAMED = {
        **{str(code): _named(code) for code in CODES},
        "190": lambda x: _token_error(x.get("details", "Session has expired.")),
        "server_error": lambda x: graph_error(500, 2, "An unexpected error has occurred. Please retry your request later.",
                                              is_transient=True),
    }
    UNCOUNTED = frozenset({"media"})

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        threading.Thread(target=openapi.message_schemas, daemon=True).start()  # warm the spec cache

    def reset_platform(self) -> None:
        self.media: dict[str, dict[str, Any]] = {}

    def dest_key(self, dest: Any) -> str:
        return wa_id(dest)

    # ---- parsing and validation ----------------------------------------------------------
    def route(self, request: Request) -> Send | Reply:
        match = re.fullmatch(r"(?:/v\d+\.\d+)?/([^/]+)/(messages|media)", request.path)
        if match is None or request.method != "POST":
            object_id = request.path.strip("/").split("/")[-1] or "/"
            return graph_error(400, 100, f"Unsupported {request.method.lower()} request. Object with ID "
                               f"'{object_id}' does not exist, cannot be loaded due to missing permissions, "
                               "or does not support this operation.")
        phone_id, endpoint = match.groups()
        send = self._upload(request) if endpoint == "media" else self._message(request)
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else request.args.get("access_token")
        if not token:
            send.denied = _token_error("An access token is required to request this resource.")
        elif token != self.config["token"]:
            send.denied = _token_error("Invalid OAuth access token - Cannot parse access token")
        elif phone_id != self.config["phone_id"]:
            send.denied = graph_error(400, 100, f"Unsupported post request. Object with ID '{phone_id}' does not "
                                      "exist, cannot be loaded due to missing permissions, or does not support "
                                      "this operation.", error_subcode=33)
        return send

    def _message(self, request: Request) -> Send:
        body = request.get_json(silent=True, force=True)
        send = Send("messages", json=body)
        if not isinstance(body, dict):
            send.problems = ["(body): the request body must be a JSON object"]
            send.invalid = _coded(100, send.problems[0])
            return send
        send.dest, send.type = body.get("to"), body.get("type")
        invalid, media_errors = self._semantics(body, send)
        invalid += openapi.validate_message(body)  # after ours: their wording is less direct
        send.problems = invalid + media_errors
        if invalid:
            send.invalid = _coded(100, invalid[0])
        elif media_errors:
            send.invalid = _coded(131053, media_errors[0])
        return send

    def _semantics(self, body: dict[str, Any], send: Send) -> tuple[list[str], list[str]]:
        """Checks the spec's schema cannot express: (code-100 problems, code-131053 problems)."""
        invalid: list[str] = []
        if body.get("messaging_product") != "whatsapp":
            invalid.append("messaging_product: must be 'whatsapp'")
        if "to" in body and not str(body["to"]).strip():
            invalid.append("to: must not be empty")
        kind = body.get("type") if isinstance(body.get("type"), str) else None
        content = body.get(kind) if kind else None
        if kind == "text" and isinstance(content, dict):
            text = content.get("body")
            if not isinstance(text, str) or not text.strip():
                invalid.append("text/body: is required and must not be empty")
            elif len(text) > MAX_TEXT:
                invalid.append(f"text/body: {len(text)} characters, more than {MAX_TEXT}")
        if kind not in _MEDIA_TYPES and kind != "document" or not isinstance(content, dict):
            return invalid, []
        if ("id" in content) == ("link" in content):
            invalid.append(f"{kind}: exactly one of 'id' or 'link' is required")
        caption = content.get("caption")
        if caption is not None and kind not in _CAPTIONED:
            invalid.append(f"{kind}/caption: {kind} messages have no caption")
        elif isinstance(caption, str) and len(caption) > MAX_CAPTION:
            invalid.append(f"{kind}/caption: {len(caption)} characters, more than {MAX_CAPTION}")
        if "link" in content:
            send.media = {"link": content["link"]}
        if "id" not in content:
            return invalid, []
        uploaded = self.media.get(str(content["id"]))
        if uploaded is None:
            return invalid, [f"{kind}/id: media {content['id']!r} was not uploaded to this phone number"]
        send.media = uploaded
        allowed = _MEDIA_TYPES.get(kind)
        if allowed and uploaded["content_type"] not in allowed:
            return invalid, [f"{kind}/id: media {content['id']!r} is {uploaded['content_type']}, "
                             f"not one of {sorted(allowed)}"]
        return invalid, []

    def _upload(self, request: Request) -> Send:
        form, upload = request.form, request.files.get("file")
        files = {name: self.describe(storage) for name, storage in request.files.items()}
        mime = (form.get("type") or (upload.mimetype if upload else "") or "").split(";")[0].strip().lower()
        send = Send("media", type=mime or None, fields=dict(form.items()), files=files)
        invalid = [problem for problem, bad in (
            ("messaging_product: must be 'whatsapp'", form.get("messaging_product") != "whatsapp"),
            ("file: a file part named 'file' is required", upload is None),
            ("type: the MIME type is required", not form.get("type")),
        ) if bad]
        if invalid:
            send.problems, send.invalid = invalid, _coded(100, invalid[0])
            return send
        size, limit = files["file"]["size"], _MEDIA_LIMITS.get(mime, _DOCUMENT_LIMIT)
        if size > limit:
            send.problems = [f"file: {size} bytes, more than the {limit} bytes allowed for {mime}"]
            send.invalid = _coded(131053, send.problems[0])
        return send

    # ---- status webhooks -----------------------------------------------------------------
    def control(self, request: Request) -> Any:
        if (request.method, request.path.rstrip("/")) != ("POST", "/_emu/statuses"):
            return super().control(request)
        payload = request.get_json(silent=True) or {}
        try:
            result = self.send_statuses(payload)
        except (ValueError, TypeError, KeyError) as exc:
            return Reply(400, {"error": str(exc)}).response()
        return Reply(200, result).response()

    def _wamid_of(self, message_id: str) -> tuple[str, str]:
        with self.lock:
            for record in self.records:
                body, answer = record.get("json"), record.get("response")
                if (isinstance(body, dict) and body.get("biz_opaque_callback_data") == message_id
                        and record["status"] == 200 and isinstance(answer, dict) and answer.get("messages")):
                    return answer["messages"][0]["id"], wa_id(body.get("to"))
        raise ValueError(f"no message with biz_opaque_callback_data {message_id!r} was accepted")

    def send_statuses(self, spec: dict[str, Any]) -> dict[str, Any]:
        message_id = spec.get("message")
        wamid, recipient = (spec["wamid"], str(spec.get("recipient", "5491100000000"))) if spec.get("wamid") else self._wamid_of(message_id)
        now = int(time.time())
        statuses = []
        for n, kind in enumerate(spec.get("statuses") or ["sent", "delivered", "read"]):
            status: dict[str, Any] = {"id": wamid, "status": kind, "timestamp": str(now + n), "recipient_id": recipient}
            if message_id is not None:
                status["biz_opaque_callback_data"] = spec.get("biz", message_id)
            if kind == "failed":
                status["errors"] = spec.get("errors") or [{"code": 131026, "title": "Message undeliverable",
                                                           "message": "Message undeliverable",
                                                           "error_data": {"details": "Message Undeliverable."}}]
            elif kind in ("sent", "delivered"):
                status["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "utility"}}
                status["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility"}
            statuses.append(status)
        groups = [statuses] if spec.get("batch") else [[s] for s in statuses]
        attempts = []
        for group in groups:
            body = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": self.config["phone_id"]},
                "contacts": [{"profile": {"name": "Ana 🎉 Müller"}, "wa_id": recipient}],
                "statuses": group}}]}]}
            raw = json.dumps(body, ensure_ascii=bool(spec.get("ascii", True))).encode()
            for _ in range(1 + int(spec.get("duplicates", 0))):
                attempts.append(self._post_webhook(spec["url"], raw, str(spec.get("app_secret", "")), spec.get("signature", "good"),
                                                   int(spec.get("retries", 3))))
        return {"wamid": wamid, "attempts": attempts}

    @staticmethod
    def _post_webhook(url: str, raw: bytes, secret: str, signature: str, retries: int) -> list[int]:
        import urllib.error  # here: 40 ms of CPU to import, and most emulators never send a webhook
        import urllib.request

        headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
        if signature != "none":
            key = secret if signature == "good" else secret + "wrong"
            headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()
        answers = []
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for attempt in range(retries + 1):
            try:
                with opener.open(urllib.request.Request(url, data=raw, headers=headers, method="POST"), timeout=10) as response:
                    answers.append(response.status)
            except urllib.error.HTTPError as exc:
                answers.append(exc.code)
            except OSError:
                answers.append(0)
            if answers[-1] == 200:
                break
            time.sleep(0.1 * (attempt + 1))
        return answers

    # ---- limits and answers --------------------------------------------------------------
    def limits(self, send: Send) -> list[Limit]:
        if send.method != "messages":
            return []
        interval = self.config["pair_interval"]
        return [Limit(self.log("number"), self.config["rate"], 1.0, "throughput"),
                Limit(self.log("pair", wa_id(send.dest)), 1 if interval > 0 else 0, interval, "pair")]

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        return _coded(131056 if reason == "pair" else 130429)

    def deliver(self, send: Send) -> Reply:
        if send.method == "media":
            media_id = str(secrets.randbelow(9 * 10**15) + 10**15)
            send.media = {"id": media_id, **send.files["file"], "content_type": send.type}
            self.media[media_id] = send.media
            return Reply(200, {"id": media_id})
        wamid = "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(18)).decode()
        return Reply(200, {"messaging_product": "whatsapp",
                           "contacts": [{"input": send.dest, "wa_id": wa_id(send.dest)}],
                           "messages": [{"id": wamid}]})


if __name__ == "__main__":
    main(WhatsAppApp)
