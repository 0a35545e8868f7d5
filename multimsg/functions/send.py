"""POST /send: upload a file and queue a message for it in one request.

A multipart body with the file in ``data`` (optionally encrypted: ``key``, as
``/data`` takes it) and the fields of ``/msg`` but ``id`` (``serv``, ``dest``,
``type``; optional ``caption``, ``filename``, ``callback``) as text fields,
in any order. Every check of ``/data`` and ``/msg`` runs before anything is
stored; answers the message id.
"""

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway, upload_parts


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def send(request):
    from ..gateway import MSG_CALLBACK, MSG_FIELDS, MSG_OPTIONS

    data, filename, wrapped_key = upload_parts(request)
    message = fields(request, MSG_FIELDS + MSG_OPTIONS + (MSG_CALLBACK,))
    message_id = gateway().send(client_of(request), data, filename, wrapped_key, message)
    return Reply(message_id, {"id": message_id})
