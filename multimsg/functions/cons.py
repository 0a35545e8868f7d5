"""POST /cons: a message's state (``queued``, ``delivered``, ``failed``); a reported final state is archived after a grace period."""

from datetime import datetime, timezone

import functions_framework

from .http import Reply, client_of, endpoint, fields, gateway

TIME_FIELDS = ("created_at", "updated_at", "next_attempt_at")


def _iso(epoch):
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def cons(request):
    message = gateway().consult(client_of(request), fields(request, ("id",)).get("id"))
    report = message.public()
    report.update({name: _iso(report[name]) for name in TIME_FIELDS})
    return Reply(str(message.state), report)
