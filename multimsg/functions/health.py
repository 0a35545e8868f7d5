"""GET /health: 200 with a JSON report when the data folder and the store work, else 503 with the reason."""

import functions_framework

from ..health import check
from .http import Reply, endpoint


@functions_framework.http
@endpoint("GET", "HEAD")
def health(request):
    return Reply("ok", check(), always_json=True)
