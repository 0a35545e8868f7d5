"""A plain HTTP receiver: any method and path on 127.0.0.1, for webhook-style plugins (Apprise's json://, form://).

Every request is recorded: method (the HTTP method), dest (the path's last segment), fields (form
fields and query parameters), json (a JSON body), files (multipart files: sha256, size, filename,
content_type), and `media` holds {"path", "content_type", "body_sha256"}. It answers 200 `{"ok": true}`.
Named answers: server_error (500), bad_request (400), unauthorized (401), too_many (429), not_found (404).

Run: `python -m tests.emulators.receiver --port 0`; prints `LISTENING <port>`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .common import EmulatorApp, Option, Reply, Request, Send, describe_file, main

__all__ = ["ReceiverApp"]


def _answer(status: int, text: str) -> Reply:
    return Reply(status, {"ok": False, "error": text}, error=text)


class ReceiverApp(EmulatorApp):
    """Plain HTTP receiver."""

    name = "receiver"
    OPTIONS = {"token": Option("", "unused")}
    NAMED = {
        "server_error": lambda x: _answer(500, "Internal Server Error"),
        "bad_request": lambda x: _answer(400, "Bad Request"),
        "unauthorized": lambda x: _answer(401, "Unauthorized"),
        "too_many": lambda x: _answer(429, "Too Many Requests"),
        "not_found": lambda x: _answer(404, "Not Found"),
    }

    def route(self, request: Request) -> Send | Reply:
        body = request.get_data(cache=True)
        fields: dict[str, Any] = dict(request.args.items())
        fields.update(request.form.items())
        files = {name: describe_file(upload) for name, upload in request.files.items()}
        media = {"path": request.path, "content_type": request.content_type, "body_sha256": hashlib.sha256(body).hexdigest()}
        return Send(request.method, dest=request.path.rstrip("/").rsplit("/", 1)[-1], type=request.mimetype or None,
                    fields=fields, json=request.get_json(silent=True) if request.is_json else None, files=files, media=media)

    def deliver(self, send: Send) -> Reply:
        return Reply(200, {"ok": True})


if __name__ == "__main__":
    main(ReceiverApp)
