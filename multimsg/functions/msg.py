"""POST /msg: queue a message (``id``, ``serv``, ``dest``, ``type``; optional ``caption``, ``filename``, ``callback``, ``at``) for an upload."""

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def msg(request):
    from ..gateway import MSG_AT, MSG_CALLBACK, MSG_FIELDS, MSG_OPTIONS

    message_id = gateway().enqueue(client_of(request), fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK, MSG_AT)))
    return Reply(message_id, {"id": message_id})
