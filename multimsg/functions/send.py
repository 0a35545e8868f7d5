"""POST /send: upload a file and queue a message for it in one request.

A multipart body with the file in ``data`` (optionally encrypted: ``key``, as
``/data`` takes it) and the fields of ``/msg`` but ``id`` (``serv``, ``dest``,
``type``; optional ``caption``, ``filename``, ``callback``, ``at``,
``convert``) as text fields, in any order. Every check of ``/data`` and
``/msg`` runs before anything is stored; answers the message id. An
``Idempotency-Key`` header makes a retry safe (``multimsg.idempotency``).
"""

import json

import functions_framework

from ..idempotency import Fingerprint
from .http import Reply, client_of, endpoint, fields, gateway, once, upload_parts


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def send(request):
    from ..gateway import MSG_AT, MSG_CALLBACK, MSG_CONVERT, MSG_FIELDS, MSG_OPTIONS

    data, filename, wrapped_key = upload_parts(request)
    message = fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK, MSG_AT, MSG_CONVERT))

    def queue(message_id: str | None = None) -> Reply:
        data.seek(0)  # the fingerprint may have read it first
        message_id = gateway().send(client_of(request), data, filename, wrapped_key, message, message_id)
        return Reply(message_id, {"id": message_id})

    def fingerprint() -> str:
        """The fields, the file name, the key and the file's bytes (read again from the request's spooled copy)."""
        digest = Fingerprint("send").add("fields", json.dumps(message, sort_keys=True).encode())
        digest.add("filename", filename.encode("utf-8", "surrogatepass")).add("key", wrapped_key or b"")
        data.seek(0)
        digest.reader(data)
        return digest.hexdigest()

    return once(request, "send", queue, fingerprint, creates_message=True)
