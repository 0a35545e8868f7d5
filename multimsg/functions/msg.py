"""POST /msg: queue a message (``id``, ``serv``, ``dest``, ``type``; optional ``caption``, ``filename``, ``callback``, ``convert``) for an upload."""

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def msg(request):
    from ..gateway import MSG_CALLBACK, MSG_CONVERT, MSG_FIELDS, MSG_OPTIONS

    message_id = gateway().enqueue(client_of(request), fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK, MSG_CONVERT)))
    return Reply(message_id, {"id": message_id})
