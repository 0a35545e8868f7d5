"""POST /data: upload a file (field ``data``), optionally encrypted (field ``key``).

An ``Idempotency-Key`` header makes a retry safe (``multimsg.idempotency``).
"""

import functions_framework

from ..idempotency import Fingerprint
from .http import Reply, client_of, endpoint, gateway, once, upload_parts


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def data(request):
    upload, filename, wrapped_key = upload_parts(request)
    fingerprint = Fingerprint("data").add("filename", filename.encode("utf-8", "surrogatepass")).add("key", wrapped_key or b"")
    stream = fingerprint.reader(upload)  # hashed as the spool reads it

    def store() -> Reply:
        data_id = gateway().upload(client_of(request), stream, filename, wrapped_key)
        return Reply(data_id, {"id": data_id})

    return once(request, "data", store, fingerprint.hexdigest)
