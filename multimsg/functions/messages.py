"""GET /messages: the requesting client's own messages of the last MULTIMSG_HISTORY_DAYS, newest first (JSON).

Filters ``state``, ``serv``, ``since``; pages of ``limit`` (at most 500, 50 by
default) with an opaque ``cursor`` (``next_cursor`` of the previous page).
Reported and archived messages are included; reading changes nothing ``/cons`` reports.
"""

import functions_framework

from .http import Reply, client_of, endpoint, gateway


@functions_framework.http
@endpoint("GET", identify=True, rate_limit=True)
def messages(request):
    page = gateway().history(client_of(request), request.args.to_dict(flat=True))
    return Reply("", {"messages": [m.report() for m in page.messages], "next_cursor": page.next_cursor}, always_json=True)
