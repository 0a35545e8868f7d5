"""POST /data: upload a file (field ``data``), optionally encrypted (field ``key``)."""

import functions_framework

from .http import Reply, client_of, endpoint, gateway, upload_parts


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def data(request):
    data_id = gateway().upload(client_of(request), *upload_parts(request))
    return Reply(data_id, {"id": data_id})
