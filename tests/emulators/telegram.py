"""Telegram Bot API emulator: `/bot<token>/<method>` on 127.0.0.1.

Owns the Telegram wire format (the Bot API documentation): token and method checks,
parameters from query string / urlencoded / JSON / multipart, sendMessage and the media send
methods, the `{"ok": ...}` envelopes, the flood limits (bot-wide per second, per private chat
per second, per group per minute) and Telegram's named scripted answers.

Run: `python -m tests.emulators.telegram --port 0 [--token T] [--latency S] [--rate N]
[--chat-rate N] [--group-rate N]`; it prints `LISTENING <port>`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
import zlib
from typing import Any

from .common import EmulatorApp, Limit, Option, Reply, Request, Send, main

__all__ = ["TelegramApp", "MEDIA_METHODS", "error", "utf16_len"]

# method (lower case) -> (canonical name, file parameter, upload limit in bytes); sizes as in
# python-telegram-bot's constants.FileSizeLimit (PHOTOSIZE_UPLOAD = 10e6, FILESIZE_UPLOAD = 50e6).
MEDIA_METHODS: dict[str, tuple[str, str, int]] = {
    "sendphoto": ("sendPhoto", "photo", 10_000_000),
    "senddocument": ("sendDocument", "document", 50_000_000),
    "sendaudio": ("sendAudio", "audio", 50_000_000),
    "sendvideo": ("sendVideo", "video", 50_000_000),
    "sendvoice": ("sendVoice", "voice", 50_000_000),
}
_METHODS = {"sendmessage": "sendMessage", "getme": "getMe", **{k: v[0] for k, v in MEDIA_METHODS.items()}}
_TOKEN = re.compile(r"[1-9][0-9]{0,19}:[A-Za-z0-9_-]+")  # tdlib/telegram-bot-api ClientManager.cpp
_FILE_ID_PREFIX = {"photo": "AgACAgIAAxkBAA", "document": "BQACAgIAAxkBAA", "audio": "CQACAgIAAxkBAA",
                   "video": "BAACAgIAAxkBAA", "voice": "AwACAgIAAxkBAA"}
_PARSE_MODES = {"html", "markdown", "markdownv2"}
MAX_TEXT, MAX_CAPTION = 4096, 1024


def error(code: int, description: str, **parameters: Any) -> Reply:
    """The Bot API error envelope; HTTP status = error_code, Retry-After header on 429."""
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    headers = {"Retry-After": str(parameters["retry_after"])} if "retry_after" in parameters else {}
    return Reply(code, body, headers=headers, error=description)


def _retry_after(seconds: int) -> Reply:
    return error(429, f"Too Many Requests: retry after {seconds}", retry_after=seconds)


def _nginx_page(status: int, title: str) -> Reply:
    page = (f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n")
    return Reply(status, raw=page, error=f"{status} {title} (HTML page)")


def utf16_len(text: str, parse_mode: str | None = None) -> int:
    """Length in UTF-16 code units, after entity parsing for HTML (other modes counted raw)."""
    if parse_mode and parse_mode.lower() == "html":
        import html  # here: most texts are plain, and its entity table takes a while to import

        text = html.unescape(re.sub(r"<[^>]*>", "", text))
    return len(text.encode("utf-16-le")) // 2


class TelegramApp(EmulatorApp):
    """Telegram Bot API emulator."""

    name = "telegram"
    OPTIONS = {
        "token": Option("123456:TEST", "bot token expected in /bot<token>/<method>"),
        "rate": Option(30, "bot-wide messages per sliding 1 s window; 0 = off"),
        "chat_rate": Option(1, "messages per sliding 1 s window to one private chat; 0 = off"),
        "group_rate": Option(20, "messages per sliding 60 s window to one group (negative or @name chat id); 0 = off"),
    }
    NAMED = {
        "retry_after": lambda x: _retry_after(int(x.get("retry_after", 3))),
        "chat_not_found": lambda x: error(400, "Bad Request: chat not found"),
        "blocked": lambda x: error(403, "Forbidden: bot was blocked by the user"),
        "deactivated": lambda x: error(403, "Forbidden: user is deactivated"),
        "too_long": lambda x: error(400, "Bad Request: message is too long"),
        "migrated": lambda x: error(400, "Bad Request: group chat was upgraded to a supergroup chat",
                                    migrate_to_chat_id=int(x.get("migrate_to_chat_id", -1001234567890))),
        "unauthorized": lambda x: error(401, "Unauthorized"),
        "server_error": lambda x: error(500, "Internal Server Error"),
        "bad_gateway": lambda x: _nginx_page(502, "Bad Gateway"),
        "html_413": lambda x: _nginx_page(413, "Request Entity Too Large"),
    }

    def __init__(self, **config: Any) -> None:
        self.message_ids = itertools.count(1)
        super().__init__(**config)

    # ---- parsing and validation ----------------------------------------------------------
    def route(self, request: Request) -> Send | Reply:
        if not request.path.startswith("/bot"):
            return error(404, "Not Found")
        match = re.fullmatch(r"/bot([^/]*)/([^/]*)", request.path)
        if match is None:
            return error(404, "Not Found")
        token, method = match.groups()
        canonical = _METHODS.get(method.lower())
        denied = None
        if len(token) > 80 or not _TOKEN.fullmatch(token):
            denied = error(401, "Unauthorized: invalid token specified")
        elif token != self.config["token"]:
            denied = error(401, "Unauthorized")
        elif canonical is None:
            denied = error(404, "Not Found: method not found")
        if canonical in (None, "getMe"):
            return denied or Reply(200, {"ok": True, "result": self._bot_user(full=True)})

        params: dict[str, Any] = dict(request.args.items())
        body = request.get_json(silent=True) if request.is_json else None
        params.update(body if isinstance(body, dict) else request.form.items())
        files = {name: self.describe(upload) for name, upload in request.files.items()}
        send = Send(canonical, dest=self._chat_id(params.get("chat_id")), fields=params, json=body,
                    files=files, denied=denied)
        problem = self._check(send)
        if problem is not None:
            send.problems = [problem.error or ""]
            send.invalid = problem
        return send

    @staticmethod
    def _chat_id(raw: Any) -> Any:
        if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
            return int(raw)
        return raw

    def _check(self, send: Send) -> Reply | None:
        params, kind = send.fields, MEDIA_METHODS.get(send.method.lower())
        send.type = kind[1] if kind else "text"
        if kind:
            field, limit = kind[1], kind[2]
            reference = str(params.get(field) or "")
            upload = field if field in send.files else reference[len("attach://"):]
            if reference.startswith("attach://") or field in send.files:
                if upload not in send.files:
                    return error(400, f"Bad Request: there is no {field} in the request")
                if send.files[upload]["size"] > limit:
                    return error(413, "Request Entity Too Large")
                send.data["file"] = send.files[upload]
            elif not reference:
                return error(400, f"Bad Request: there is no {field} in the request")
            send.data["reference"] = reference
        chat = send.dest
        if chat is None or chat == "":
            return error(400, "Bad Request: chat_id is empty")
        if not isinstance(chat, int) and not (isinstance(chat, str) and re.fullmatch(r"@\w{4,}", chat)):
            return error(400, "Bad Request: chat not found")
        parse_mode = params.get("parse_mode") or None
        if parse_mode and str(parse_mode).lower() not in _PARSE_MODES:
            return error(400, "Bad Request: unsupported parse_mode")
        if kind is None:
            text = str(params.get("text") or "")
            length = utf16_len(text, parse_mode)
            if length == 0 or not text.strip():
                return error(400, "Bad Request: message text is empty")
            if length > MAX_TEXT:
                return error(400, "Bad Request: message is too long")
        elif utf16_len(str(params.get("caption") or ""), parse_mode) > MAX_CAPTION:
            return error(400, "Bad Request: message caption is too long")
        return None

    # ---- limits and answers --------------------------------------------------------------
    def limits(self, send: Send) -> list[Limit]:
        chat, config = send.dest, self.config
        per_chat = (Limit(self.log("chat", chat), config["chat_rate"], 1.0, "chat")
                    if isinstance(chat, int) and chat > 0
                    else Limit(self.log("group", str(chat)), config["group_rate"], 60.0, "group"))
        return [Limit(self.log("bot"), config["rate"], 1.0, "bot"), per_chat]

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        return _retry_after(max(1, math.ceil(wait)))

    def _bot_user(self, full: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {"id": int(str(self.config["token"]).split(":")[0] or 0), "is_bot": True,
                                "first_name": "multimsg emulator", "username": "multimsg_emulator_bot"}
        if full:
            user.update(can_join_groups=True, can_read_all_group_messages=False, supports_inline_queries=False)
        return user

    @staticmethod
    def _chat(chat: Any) -> dict[str, Any]:
        if isinstance(chat, int) and chat > 0:
            return {"id": chat, "type": "private", "first_name": "Test", "username": f"user{chat}"}
        if isinstance(chat, int):
            kind = "supergroup" if str(chat).startswith("-100") else "group"
            return {"id": chat, "type": kind, "title": f"Test {kind} {chat}"}
        name = str(chat)[1:]
        return {"id": -(10**12 + zlib.crc32(name.encode()) % 10**9), "type": "channel", "title": name, "username": name}

    def deliver(self, send: Send) -> Reply:
        message_id = next(self.message_ids)
        message: dict[str, Any] = {"message_id": message_id, "from": self._bot_user(), "chat": self._chat(send.dest),
                                   "date": int(time.time())}
        params = send.fields
        if send.type == "text":
            message["text"] = str(params["text"])
        else:
            message[send.type] = self._media(send, message_id)
            if params.get("caption"):
                message["caption"] = str(params["caption"])
        return Reply(200, {"ok": True, "result": message})

    @staticmethod
    def _media(send: Send, message_id: int) -> Any:
        kind, upload, reference = send.type or "", send.data.get("file"), send.data["reference"]
        seed = upload["sha256"] if upload else hashlib.sha256(reference.encode()).hexdigest()
        is_file_id = upload is None and not reference.startswith(("http://", "https://"))
        file: dict[str, Any] = {
            "file_id": reference if is_file_id else f"{_FILE_ID_PREFIX[kind]}{message_id:X}{seed[:32]}",
            "file_unique_id": f"AgAD{seed[:12]}",
        }
        if upload:
            file["file_size"] = upload["size"]
        if kind == "photo":
            small = {"file_id": file["file_id"] + "s", "file_unique_id": file["file_unique_id"] + "s",
                     "width": 90, "height": 68}
            return [small, {**file, "width": 1280, "height": 960}]
        if upload and kind in ("document", "audio", "video"):
            file["file_name"] = upload["filename"]
        if upload and upload["content_type"]:
            file["mime_type"] = upload["content_type"]
        if kind in ("audio", "video", "voice"):
            file["duration"] = 1
        if kind == "video":
            file.update(width=640, height=360)
        return file


if __name__ == "__main__":
    main(TelegramApp)
