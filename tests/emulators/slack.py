"""Slack Web API emulator: ``/api/<method>`` plus the external upload URL.

Owns the wire format (api.slack.com/methods): ``Authorization: Bearer <token>``; answers are
HTTP 200 with ``{"ok": true, ...}`` or ``{"ok": false, "error": "<code>"}`` (``invalid_auth``,
``not_authed``, ``channel_not_found``, ``not_in_channel``, ...); rate limits are HTTP 429 with
``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``. Methods:

- ``chat.postMessage`` (JSON or form: ``channel``, ``text``) -> ``{"ok", "channel", "ts", "message"}``;
- ``files.getUploadURLExternal`` (form or query: ``filename``, ``length``) ->
  ``{"ok", "upload_url", "file_id"}``;
- ``POST <upload_url>`` (the bytes raw, or multipart as ``file``) -> 200 ``OK - <length>``;
  the size must be the ``length`` announced;
- ``files.completeUploadExternal`` (JSON or form: ``files`` [{id, title}], ``channel_id``,
  ``initial_comment``) -> ``{"ok", "files": [{id, title}]}``; every file must be uploaded.

Records: method (the Web API method, or ``upload``), dest (the channel; the file id for
uploads), type ``text`` or ``file``, fields, files (``file``: the uploaded bytes' description,
on ``files.completeUploadExternal`` too).

Run: ``python -m tests.emulators.slack --port 0 [--token T] [--channel-rate N]``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from typing import Any

from .common import EmulatorApp, Limit, Option, Reply, Request, Send, describe_file, main

__all__ = ["SlackApp"]

_CHANNEL = re.compile(r"[CDG][A-Z0-9]{8,20}")


def failure(code: str, status: int = 200, **headers: str) -> Reply:
    return Reply(status, {"ok": False, "error": code}, headers=dict(headers), error=code)


class SlackApp(EmulatorApp):
    """Slack Web API emulator."""

    name = "slack"
    OPTIONS = {
        "token": Option("xoxb-emulator-token", "the bot token expected after Bearer"),
        "channel_rate": Option(0, "chat.postMessage per sliding 1 s window per channel; 0 = off"),
    }
    NAMED = {
        "ratelimited": lambda x: failure("ratelimited", 429, **{"Retry-After": str(x.get("retry_after", 2))}),
        "ratelimited_200": lambda x: failure("ratelimited", 200, **{"Retry-After": str(x.get("retry_after", 2))}),
        "invalid_auth": lambda x: failure("invalid_auth"),
        "not_authed": lambda x: failure("not_authed"),
        "account_inactive": lambda x: failure("account_inactive"),
        "channel_not_found": lambda x: failure("channel_not_found"),
        "not_in_channel": lambda x: failure("not_in_channel"),
        "msg_too_long": lambda x: failure("msg_too_long"),
        "server_error": lambda x: Reply(500, raw="Internal Server Error", error="500"),
        "bad_gateway": lambda x: Reply(502, raw="<html>502 Bad Gateway</html>", error="502"),
    }
    UNCOUNTED = frozenset({"files.getUploadURLExternal", "upload"})

    def __init__(self, **config: Any) -> None:
        self.counter = itertools.count(1)
        super().__init__(**config)

    def reset_platform(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}  # file id -> {filename, length, upload}

    def route(self, request: Request) -> Send | Reply:
        if request.method != "POST":
            return failure("method_not_supported_for_channel_type", 405)
        upload = re.fullmatch(r"/upload/v1/(F[A-Z0-9]+)", request.path)
        if upload:
            return self._upload(request, upload.group(1))
        match = re.fullmatch(r"/api/([A-Za-z.]+)", request.path)
        if match is None:
            return failure("unknown_method", 404)
        method = match.group(1)
        auth = request.headers.get("Authorization", "")
        denied = None
        if not auth.startswith("Bearer ") or not auth[len("Bearer "):].strip():
            denied = failure("not_authed")
        elif auth[len("Bearer "):] != self.config["token"]:
            denied = failure("invalid_auth")
        params: dict[str, Any] = dict(request.args.items())
        body = request.get_json(silent=True) if request.is_json else None
        params.update(body if isinstance(body, dict) else request.form.items())
        if method == "chat.postMessage":
            send = Send(method, dest=params.get("channel"), type="text", fields=params, json=body, denied=denied)
            problem = self._check_channel(send.dest) or (None if str(params.get("text") or "").strip() else failure("no_text"))
        elif method == "files.getUploadURLExternal":
            send = Send(method, dest=None, type="file", fields=params, denied=denied)
            length = str(params.get("length") or "")
            problem = None if params.get("filename") and length.isdigit() and int(length) > 0 else failure("invalid_arguments")
        elif method == "files.completeUploadExternal":
            files = params.get("files")
            if isinstance(files, str):
                try:
                    files = json.loads(files)
                except ValueError:
                    files = None
            send = Send(method, dest=params.get("channel_id"), type="file", fields={**params, "files": files}, json=body, denied=denied)
            problem = self._check_channel(send.dest) or self._check_files(send, files)
        else:
            return failure("unknown_method", 404)
        if problem is not None:
            send.problems, send.invalid = [problem.error or ""], problem
        return send

    def _upload(self, request: Request, file_id: str) -> Send:
        pending = self.pending.get(file_id)
        if request.files:
            described = describe_file(next(iter(request.files.values())))
        else:
            data = request.get_data()
            described = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "filename": None,
                         "content_type": request.content_type}
        send = Send("upload", dest=file_id, type="file", files={"file": described})
        if pending is None:
            send.invalid = Reply(404, raw="Not Found", error="unknown upload URL")
        elif described["size"] != pending["length"]:
            send.invalid = Reply(400, raw=f"length mismatch: {described['size']} != {pending['length']}", error="length mismatch")
        else:
            pending["upload"] = described
        return send

    @staticmethod
    def _check_channel(channel: Any) -> Reply | None:
        if not channel:
            return failure("channel_not_found")
        return None if _CHANNEL.fullmatch(str(channel)) else failure("channel_not_found")

    def _check_files(self, send: Send, files: Any) -> Reply | None:
        if not isinstance(files, list) or not files:
            return failure("invalid_arguments")
        for file in files:
            pending = self.pending.get(str(file.get("id") if isinstance(file, dict) else ""))
            if pending is None or "upload" not in pending:
                return failure("file_not_found")
            send.files = {"file": {**pending["upload"], "filename": pending["filename"]}}
        return None

    def limits(self, send: Send) -> list[Limit]:
        if send.method != "chat.postMessage":
            return []
        return [Limit(self.log("channel", send.dest), self.config["channel_rate"], 1.0, "channel")]

    def rate_limited(self, send: Send, reason: str, wait: float) -> Reply:
        return failure("ratelimited", 429, **{"Retry-After": "1"})

    def deliver(self, send: Send) -> Reply:
        n = next(self.counter)
        if send.method == "chat.postMessage":
            ts = f"{int(time.time())}.{n:06d}"
            return Reply(200, {"ok": True, "channel": send.dest, "ts": ts,
                               "message": {"type": "message", "text": send.fields.get("text"), "ts": ts, "bot_id": "B0EMULATOR"}})
        if send.method == "files.getUploadURLExternal":
            file_id = f"F{n:010d}"
            self.pending[file_id] = {"filename": send.fields["filename"], "length": int(send.fields["length"])}
            base = f"http://{self._host}"
            return Reply(200, {"ok": True, "upload_url": f"{base}/upload/v1/{file_id}", "file_id": file_id})
        if send.method == "upload":
            return Reply(200, raw=f"OK - {send.files['file']['size']}", content_type="text/plain")
        files = [{"id": str(file["id"]), "title": file.get("title") or ""} for file in send.fields["files"]]
        return Reply(200, {"ok": True, "files": files})

    def platform(self, request: Request):  # the upload URL names this server's own address
        self._host = request.host
        return super().platform(request)


if __name__ == "__main__":
    main(SlackApp)
