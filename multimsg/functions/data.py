"""POST /data: upload a file (field ``data``), optionally encrypted (field ``key``).

An ``Idempotency-Key`` header makes a retry safe (``multimsg.idempotency``).
"""

import functions_framework

from ..config import settings
from ..errors import InvalidInput, NotMultipart, TooLarge
from ..idempotency import Fingerprint
from .http import Reply, client_of, endpoint, gateway, once

MAX_WRAPPED_KEY = 4096


@functions_framework.http
@endpoint("POST", identify=True, rate_limit=True)
def data(request):
    if request.mimetype != "multipart/form-data":
        raise NotMultipart("send multipart/form-data with the file in field 'data' (and optionally 'key')")
    limit = settings().max_upload
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the upload is over the limit of {limit} bytes")
    request.max_content_length = limit
    if len(request.files.getlist("data")) != 1:
        raise InvalidInput("send exactly one file in field 'data'" if "data" not in request.form else "'data' must be a file, not a text field")
    keys = request.files.getlist("key")
    if len(keys) > 1 or "key" in request.form:
        raise InvalidInput("'key' must be one file")
    upload = request.files["data"]
    wrapped_key = keys[0].stream.read(MAX_WRAPPED_KEY + 1) if keys else None
    filename = upload.filename or "data"
    fingerprint = Fingerprint("data").add("filename", filename.encode("utf-8", "surrogatepass")).add("key", wrapped_key or b"")
    stream = fingerprint.reader(upload.stream)  # hashed as the spool reads it

    def store() -> Reply:
        data_id = gateway().upload(client_of(request), stream, filename, wrapped_key)
        return Reply(data_id, {"id": data_id})

    return once(request, "data", store, fingerprint.hexdigest)
