"""GET /metrics: every multimsg figure in the Prometheus text format (loopback, or the operator token)."""

import functions_framework

from ..metrics import CONTENT_TYPE, render
from .http import Reply, endpoint, require_operator


@functions_framework.http
@endpoint("GET")
def metrics(request):
    require_operator(request)
    return Reply(render().decode(), {}, content_type=CONTENT_TYPE)
