"""POST /cons: a message's state (``queued``, ``delivered``, ``failed``); final states are reported once."""

from datetime import datetime, timezone

import functions_framework

from ..gateway import gateway
from ..queue.states import QUEUED
from .http import Reply, client_of, endpoint, fields

PUBLIC_FIELDS = ("id", "state", "serv", "dest", "type", "attempts", "last_error", "platform_ids")
TIME_FIELDS = ("created_at", "updated_at", "next_attempt_at")


def _iso(epoch):
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def cons(request):
    record = gateway().consult(client_of(request), fields(request, ("id",)).get("id"))
    report = {name: record.get(name) for name in PUBLIC_FIELDS}
    report.update({name: _iso(record.get(name)) for name in TIME_FIELDS})
    if record["state"] != QUEUED:
        report["next_attempt_at"] = None
    return Reply(record["state"], report)
