"""POST /msg: queue a message (``id``, ``serv``, ``dest``, ``type``) for an upload."""

import functions_framework

from ..gateway import MSG_FIELDS, gateway
from .http import Reply, client_of, endpoint, fields


@functions_framework.http
@endpoint("POST")
def msg(request):
    message_id = gateway().enqueue(client_of(request), fields(request, MSG_FIELDS))
    return Reply(message_id, {"id": message_id})
