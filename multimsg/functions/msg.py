"""POST /msg: queue a message (``id``, ``serv``, ``dest``, ``type``; optional ``caption``, ``filename``, ``callback``, ``at``, ``convert``) for an upload.

An ``Idempotency-Key`` header makes a retry safe (``multimsg.idempotency``).
"""

import functions_framework

from ..idempotency import Fingerprint
from .http import Reply, client_of, endpoint, fields, gateway, once


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def msg(request):
    from ..gateway import MSG_AT, MSG_CALLBACK, MSG_CONVERT, MSG_FIELDS, MSG_OPTIONS

    given = fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK, MSG_AT, MSG_CONVERT))

    def queue(message_id: str | None = None) -> Reply:
        message_id = gateway().enqueue(client_of(request), given, message_id)
        return Reply(message_id, {"id": message_id})

    return once(request, "msg", queue, lambda: Fingerprint.of_fields("msg", given), creates_message=True)
