"""POST /drain: run one drain pass (for Cloud Scheduler or cron) and answer its summary."""

import functions_framework

from .http import Reply, endpoint, gateway, require_operator


@functions_framework.http
@endpoint("POST")
def drain(request):
    require_operator(request)
    summary = gateway().drain()
    return Reply("", summary, always_json=True)
