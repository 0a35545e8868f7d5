"""Matrix client-server API emulator: the three endpoints multimsg uses, on 127.0.0.1.

- `GET /_matrix/client/v3/directory/room/<alias>`: `{"room_id", "servers"}`; an alias whose
  localpart starts with `missing` is `404 M_NOT_FOUND`; others resolve to `!<localpart>:<server>`;
- `PUT /_matrix/client/v3/rooms/<room>/send/m.room.message/<txnId>`: `{"event_id"}`; a
  transaction id seen before (per access token) gets the same event id again and is recorded
  with `"repeat": true` in `fields`, as homeservers do (the spec's idempotency);
- `POST /_matrix/media/v3/upload?filename=`: the body is the file; `{"content_uri": "mxc://..."}`.

Errors are `{"errcode", "error"}` (plus `retry_after_ms` for M_LIMIT_EXCEEDED); a missing or
wrong `Authorization: Bearer` token is `401 M_MISSING_TOKEN` / `M_UNKNOWN_TOKEN`; an unknown
path is `404 M_UNRECOGNIZED`.  Records: method `send` (dest = the room, json = the event,
fields = {txn, repeat}), `upload` (files.file), `directory` (dest = the alias).

Run: `python -m tests.emulators.matrix --port 0 [--token T] [--server-name S]`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from typing import Any
from urllib.parse import unquote

from .common import EmulatorApp, Option, Reply, Request, Send, main

__all__ = ["MatrixApp", "matrix_error"]


def matrix_error(status: int, errcode: str, error: str, **extra: Any) -> Reply:
    return Reply(status, {"errcode": errcode, "error": error, **extra}, error=f"{errcode}: {error}")


class MatrixApp(EmulatorApp):
    """Matrix client-server API emulator."""

    name = "matrix"
    OPTIONS = {
        "token": Option("syt_bXVsdGltc2c_emulatortoken_0001", "the access token accepted"),
        "server_name": Option("localhost", "the homeserver's name (in event ids and mxc URIs)"),
    }
    NAMED = {
        "limit": lambda x: matrix_error(429, "M_LIMIT_EXCEEDED", "Too Many Requests", retry_after_ms=int(x.get("retry_after_ms", 1500))),
        "forbidden": lambda x: matrix_error(403, "M_FORBIDDEN", "User @bot:localhost not in room !room:localhost"),
        "not_found": lambda x: matrix_error(404, "M_NOT_FOUND", "Unknown room"),
        "unknown_token": lambda x: matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token passed.", soft_logout=False),
        "too_large": lambda x: matrix_error(413, "M_TOO_LARGE", "Uploaded content is too large"),
        "server_error": lambda x: matrix_error(500, "M_UNKNOWN", "Internal server error"),
        "bad_gateway": lambda x: Reply(502, raw="<html><body><h1>502 Bad Gateway</h1></body></html>", error="502 (HTML page)"),
    }

    def __init__(self, **config: Any) -> None:
        self.counter = itertools.count(1)
        super().__init__(**config)

    def reset_platform(self) -> None:
        self.transactions: dict[tuple[str, str, str], str] = {}

    def route(self, request: Request) -> Send | Reply:
        path = request.path
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else request.args.get("access_token")
        denied = None
        if not token:
            denied = matrix_error(401, "M_MISSING_TOKEN", "Missing access token")
        elif token != self.config["token"]:
            denied = matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token passed.", soft_logout=False)
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or path
        raw = raw.split("?", 1)[0]
        if match := re.fullmatch(r"/_matrix/client/v3/rooms/([^/]+)/send/m\.room\.message/([^/]+)", raw):
            if request.method != "PUT":
                return matrix_error(405, "M_UNRECOGNIZED", "Unrecognized request")
            room, txn = unquote(match[1]), unquote(match[2])
            event = request.get_json(silent=True, force=True)
            send = Send("send", dest=room, type=(event or {}).get("msgtype") if isinstance(event, dict) else None, json=event,
                        fields={"txn": txn}, denied=denied)
            if not isinstance(event, dict) or not isinstance(event.get("msgtype"), str) or not isinstance(event.get("body"), str):
                send.invalid = matrix_error(400, "M_BAD_JSON", "msgtype and body are required")
                send.problems = [send.invalid.error or ""]
            elif len(request.get_data()) > 65536:
                send.invalid = matrix_error(413, "M_TOO_LARGE", "event too large")
            send.data["key"] = (str(token), room, txn)
            return send
        if match := re.fullmatch(r"/_matrix/client/v3/directory/room/([^/]+)", raw):
            alias = unquote(match[1])
            send = Send("directory", dest=alias, denied=denied)
            if not re.fullmatch(r"#[^:]+:.+", alias):
                send.invalid = matrix_error(400, "M_INVALID_PARAM", "Room alias invalid")
            elif alias[1:].startswith("missing"):
                send.invalid = matrix_error(404, "M_NOT_FOUND", f"Room alias {alias} not found")
            return send
        if path == "/_matrix/media/v3/upload" and request.method == "POST":
            body = request.get_data()
            file = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body), "filename": request.args.get("filename"),
                    "content_type": request.headers.get("Content-Type")}
            return Send("upload", files={"file": file}, denied=denied)
        return matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")

    def deliver(self, send: Send) -> Reply:
        server = self.config["server_name"]
        if send.method == "directory":
            localpart, _, host = str(send.dest)[1:].partition(":")
            return Reply(200, {"room_id": f"!{localpart}:{host}", "servers": [host]})
        if send.method == "upload":
            return Reply(200, {"content_uri": f"mxc://{server}/{secrets.token_urlsafe(18)}"})
        key = send.data["key"]
        repeat = key in self.transactions
        if not repeat:
            self.transactions[key] = f"${secrets.token_urlsafe(32)}"
        send.fields["repeat"] = repeat
        return Reply(200, {"event_id": self.transactions[key]})


if __name__ == "__main__":
    main(MatrixApp)
