"""POST /cons: a message's state (``queued``, ``delivered``, ``failed``); a reported final state is archived after a grace period.

The JSON answer also carries the platform's ``receipt`` levels as far as known
(``sent``, ``delivered``, ``read``, ``failed``: ISO times) and the ``failure``
detail a failed receipt gave; the plain-text answer is the state alone.
"""

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def cons(request):
    message = gateway().consult(client_of(request), fields(request, ("id",)).get("id"))
    return Reply(str(message.state), message.report())
