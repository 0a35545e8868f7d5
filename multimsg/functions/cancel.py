"""POST /cancel: take a queued or scheduled message (``id``) out of the queue; it becomes ``cancelled`` and is never sent.

409 (with its state) for a message a drain pass is sending now or one already
final; 404 for an unknown id or another client's. ``/cons`` then reports
``cancelled`` once, like any final state.
"""

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def cancel(request):
    message = gateway().cancel(client_of(request), fields(request, ("id",)).get("id"))
    return Reply(str(message.state), message.report())
