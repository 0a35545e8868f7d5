"""POST /msg: queue a message (``id``, ``serv``, ``dest``, ``type``; optional ``caption``, ``filename``, ``callback``) for an upload."""

import functions_framework

from ..gateway import MSG_CALLBACK, MSG_FIELDS, MSG_OPTIONS, gateway
from .http import Reply, client_of, endpoint, fields


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def msg(request):
    message_id = gateway().enqueue(client_of(request), fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK,)))
    return Reply(message_id, {"id": message_id})
