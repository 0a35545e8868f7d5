"""The HTTP layer shared by every handler: content negotiation, errors, fields, identity.

``endpoint`` wraps a handler so that it only sees requests with an allowed
method, and so that every domain error becomes a 4xx with a one-line reason
(plain text, or ``{"error": ...}`` when the client accepts JSON). The mapping
from error types to status codes lives here and nowhere else.

``endpoint(..., identify=True)`` establishes who the client is (``client_of``,
the ``MULTIMSG_IDENTITY`` rule) before the handler runs, so that a missing
token is a 401 whatever the body; ``rate_limit=True`` also charges the client's
bucket (``multimsg.ratelimit``) before the body is read. Request bodies are
capped at ``SMALL_BODY`` bytes unless the handler raises
``request.max_content_length`` itself (``/data`` does, to MULTIMSG_MAX_UPLOAD).

Operator endpoints (``/drain``, ``/metrics``) call ``require_operator``: the
bearer ``MULTIMSG_DRAIN_TOKEN`` when it is set, else loopback callers only.
Client tokens are never accepted there.

Every rendered answer has the values of secret settings replaced by ``***``,
and a refused request's unread body is never read by the handler: the local
runner's waitress has already received it whole (within its header and body
timeouts) before any handler runs, and functions-framework's gunicorn reads
away at most 64 KB of it for at most 5 s itself, else closes the connection.
"""

from __future__ import annotations

import errno
import functools
import hmac
import json
import logging
import math
from dataclasses import dataclass
from typing import BinaryIO, Callable

import flask
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_accept_header

from .. import errors
from ..config import settings
from ..identity import TOKEN, identify, peer_address
from ..logs import Redactor
from ..metrics import count_request
from ..ratelimit import check_rate
from ..tokens import token_store
from . import formparser

formparser.install()  # uploads' boundaries found with bytes.find, not a regex compiled per request


def gateway():
    """The process's gateway, its module imported on the first request (not at a handler's import: cold start)."""
    from ..gateway import gateway as instance

    return instance()

__all__ = ["Reply", "endpoint", "wants_json", "fields", "once", "upload_parts", "client_of", "require_operator", "SMALL_BODY"]

SMALL_BODY = 64 * 1024  # every body but an upload's: a few short fields
MAX_WRAPPED_KEY = 4096
_CLIENT_KEY = "multimsg.client"  # where client_of caches its answer in the WSGI environ
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")

log = logging.getLogger("multimsg.http")

STATUS = {
    errors.InvalidInput: 400,
    errors.NotConfigured: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Replayed: 409,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.NotMultipart: 415,
    errors.Unprocessable: 422,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
    errors.StorageFull: 507,
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # OSErrors that mean "no room", not "broken": StorageFull


@dataclass
class Reply:
    """A successful answer: ``text`` by default, ``data`` as JSON when asked for."""

    text: str
    data: dict
    status: int = 200
    always_json: bool = False
    content_type: str | None = None  # a fixed type for ``text``, no negotiation (/metrics)
    headers: dict | None = None


def _header(request: flask.Request, name: str) -> str | None:
    """Request header ``name``'s value (None when absent), read from the WSGI environ as werkzeug's headers read it.

    ``request.headers`` answers a missing header by raising and catching an
    exception (``get``, ``in``), and ``getlist`` walks the whole environ; the
    identity, the idempotency key and the forwarding checks ask for several
    headers on every request, most of them absent. A WSGI server hands a
    repeated header over as one value joined by commas (PEP 3333).
    """
    return request.environ.get(_environ_name(name))


@functools.lru_cache(maxsize=64)
def _environ_name(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _header_list(request: flask.Request, name: str) -> list[str]:
    """``request.headers.getlist(name)``: the one joined value, or none."""
    value = _header(request, name)
    return [] if value is None else [value]


def wants_json(request: flask.Request) -> bool:
    return _prefers_json(_header(request, "Accept"))


@functools.lru_cache(maxsize=128)
def _prefers_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks JSON over plain text: worked out once per header value
    (clients send the same few; werkzeug parses it and matches both types against it on every request)."""
    accepted = parse_accept_header(accept, MIMEAccept)
    return accepted["application/json"] > accepted["text/plain"]


_redactor = Redactor()


def _without_secrets(body: str) -> str:
    """``body`` with the values of secret settings (platform tokens, ...) replaced by ``***``.

    Reasons and ``/cons`` reports can quote a platform's error text; a platform
    that echoes our credential must not hand it to a client. Only the exact
    values are replaced, also percent-encoded (the log redactor's shape rules
    would also mangle legitimate text, such as this API's own description).
    """
    return _redactor.scrub_secrets(body)


def _render(request: flask.Request, status: int, text: str, data: dict, headers: dict | None = None, always_json: bool = False) -> flask.Response:
    if always_json or wants_json(request):
        body, mimetype = json.dumps(data), "application/json"
    else:
        body, mimetype = text, "text/plain"
    return flask.Response(_without_secrets(body), status=status, mimetype=mimetype, headers=headers)


def _error(request: flask.Request, status: int, reason: str, headers: dict | None = None) -> flask.Response:
    reason = " ".join(reason.split())
    return _render(request, status, reason, {"error": reason}, headers)


def _error_headers(exc: errors.MultimsgError) -> dict | None:
    if isinstance(exc, errors.RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, errors.Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="multimsg"'}
    return None


def endpoint(*methods: str, identify: bool = False, rate_limit: bool = False) -> Callable:
    """Make ``handler(request) -> Reply`` a complete HTTP function.

    ``identify``: the client must be identified (401 in token mode) before the
    handler runs. ``rate_limit``: and it must be within its request rate (429).
    """

    def decorate(handler: Callable[[flask.Request], Reply]) -> Callable[[flask.Request], flask.Response]:
        def respond(request: flask.Request) -> flask.Response:
            if request.method not in methods:
                return _error(request, 405, f"use {' or '.join(methods)} on this endpoint", {"Allow": ", ".join(methods)})
            try:
                request.max_content_length = SMALL_BODY
                if identify or rate_limit:
                    client = client_of(request)
                    if rate_limit:
                        check_rate(client)
                reply = handler(request)
            except errors.MultimsgError as exc:
                status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
                return _error(request, status, exc.reason, _error_headers(exc))
            except HTTPException as exc:  # raised by werkzeug while parsing (413, bad multipart, ...)
                return _error(request, exc.code or 400, exc.description or exc.name)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    log.exception("internal error in %s", handler.__name__)
                    return _error(request, 500, "internal error; the server log has the details")
                log.error("%s: the data folder's disk is full (%s)", handler.__name__, exc.strerror)
                full = errors.StorageFull("the server's storage is full; this request stored nothing (what was stored before is kept); try again later")
                return _error(request, STATUS[errors.StorageFull], full.reason)
            except Exception:
                log.exception("internal error in %s", handler.__name__)
                return _error(request, 500, "internal error; the server log has the details")
            if reply.content_type:
                return flask.Response(reply.text, status=reply.status, content_type=reply.content_type)
            return _render(request, reply.status, reply.text, reply.data, reply.headers, always_json=reply.always_json)

        @functools.wraps(handler)
        def http_function(request: flask.Request) -> flask.Response:
            # functions-framework passes flask's request proxy: every attribute read through it costs a context lookup
            request = getattr(request, "_get_current_object", lambda: request)()
            response = respond(request)  # a refused request's unread body is left to the server (see the module's doc)
            count_request(handler.__name__, response.status_code)  # GET /metrics
            return response

        return http_function

    return decorate


def once(request: flask.Request, scope: str, run: Callable[..., Reply], fingerprint: Callable[[], str],
         creates_message: bool = False) -> Reply:
    """``run()``, or with an ``Idempotency-Key`` header the first answer to it (``multimsg.idempotency``).

    ``creates_message``: ``run(message_id)`` queues a message under the id the key's hold reserved.
    """
    from ..idempotency import HEADER, REPLAYED_HEADER, Answer, parse_key

    key = parse_key(_header(request, HEADER))
    if key is None:
        return run()
    client = client_of(request)

    def first(*reserved: str) -> Answer:
        reply = run(*reserved)
        return Answer(reply.status, reply.text, reply.data)

    def find(message_id: str) -> Answer | None:
        found = gateway().queued(client, message_id)
        return None if found is None else Answer(200, found, {"id": found})

    answer, replayed = gateway().once(client, scope, key, first, fingerprint, find if creates_message else None)
    return Reply(answer.text, answer.data, answer.status, headers={REPLAYED_HEADER: "true"} if replayed else None)


def fields(request: flask.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields from a form or a JSON object body, as strings."""
    if request.is_json:
        body = _json_object(request.get_data(cache=True))
        values = {}
        for name in names:
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise errors.InvalidInput(f"field '{name}' must be a string")
            values[name] = str(value)
        return values
    values = {}
    items = formparser.load_urlencoded(request)  # a urlencoded body read as werkzeug reads it, without its form-parser set-up
    if items is not None:  # no files in such a body: the fields as given, grouped by name
        given_by_name: dict[str, list[str]] = {}
        for name, value in items:
            given_by_name.setdefault(name, []).append(value)
        for name in names:
            given = given_by_name.get(name)
            if given is not None:
                if len(given) > 1:
                    raise errors.InvalidInput(f"field '{name}' was given {len(given)} times; give it once")
                values[name] = given[0]
        return values
    form, files = request.form, request.files  # each asked once: werkzeug's cached properties cost a lookup each time
    for name in names:
        given = form.getlist(name)
        if len(given) > 1:
            raise errors.InvalidInput(f"field '{name}' was given {len(given)} times; give it once")
        if given:
            values[name] = given[0]
        elif name in files:
            raise errors.InvalidInput(f"field '{name}' must be a text field, not a file")
    return values


def upload_parts(request: flask.Request) -> tuple[BinaryIO, str, bytes | None]:
    """An upload's file (field ``data``), its file name and the wrapped key (field ``key``, optional).

    The body may be up to MULTIMSG_MAX_UPLOAD bytes; the file parts may come
    before or after any text fields (POST /send has the message's fields too).
    """
    if request.mimetype != "multipart/form-data":
        raise errors.NotMultipart("send multipart/form-data with the file in field 'data' (and optionally 'key')")
    limit = settings().max_upload
    if request.content_length is not None and request.content_length > limit:
        raise errors.TooLarge(f"the upload is over the limit of {limit} bytes")
    request.max_content_length = limit
    if len(request.files.getlist("data")) != 1:
        raise errors.InvalidInput("send exactly one file in field 'data'" if "data" not in request.form else "'data' must be a file, not a text field")
    keys = request.files.getlist("key")
    if len(keys) > 1 or "key" in request.form:
        raise errors.InvalidInput("'key' must be one file")
    upload = request.files["data"]
    wrapped_key = keys[0].stream.read(MAX_WRAPPED_KEY + 1) if keys else None
    return upload.stream, upload.filename or "data", wrapped_key


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen = {}
    for name, value in pairs:
        if name in seen:
            raise errors.InvalidInput(f"field '{name}' was given more than once in the JSON body; give it once")
        seen[name] = value
    return seen


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError:
        raise errors.InvalidInput("the JSON body is not valid UTF-8") from None
    except RecursionError:
        raise errors.InvalidInput("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise errors.InvalidInput(f"the JSON body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(body, dict):
        raise errors.InvalidInput("the JSON body must be an object")
    return body


def client_of(request: flask.Request) -> str:
    """The requesting client's key under ``MULTIMSG_IDENTITY`` (see ``multimsg.identity``).

    Computed once per request (the MAC lookup or token check is not repeated).
    """
    client = request.environ.get(_CLIENT_KEY)
    if client is None:
        s = settings()
        client = identify(
            s.identity,
            request.remote_addr,
            _header_list(request, "X-Forwarded-For"),
            _header(request, "Authorization"),
            trust_proxy=s.trust_proxy,
            tokens=token_store() if s.identity == TOKEN else None,
            forwarded=_other_forwarding(request),
        )
        request.environ[_CLIENT_KEY] = client
    return client


def _other_forwarding(request: flask.Request) -> bool:
    """Whether the request carries a forwarding header besides X-Forwarded-For."""
    return any(_header(request, name) is not None for name in FORWARDING_HEADERS if name != "X-Forwarded-For")


def _from_loopback(request: flask.Request) -> bool:
    """A caller on this host. Through a proxy that is the address the trusted proxy saw;
    a loopback peer that forwards for someone else (a local proxy MULTIMSG_TRUST_PROXY
    does not know about, or a request with fewer hops than it says) is not."""
    s = settings()
    if not s.trust_proxy and any(_header(request, name) is not None for name in FORWARDING_HEADERS):
        return False
    try:
        return peer_address(request.remote_addr, _header_list(request, "X-Forwarded-For"), s.trust_proxy,
                            _other_forwarding(request)).is_loopback
    except errors.InvalidInput:
        return False


def require_operator(request: flask.Request) -> None:
    """Operator endpoints: the bearer MULTIMSG_DRAIN_TOKEN if set, else loopback callers only.

    Client tokens (token identity mode) never open these endpoints.
    """
    token = settings().drain_token
    if token:
        scheme, _, given = (_header(request, "Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode()):
            raise errors.Unauthorized("this endpoint needs 'Authorization: Bearer <MULTIMSG_DRAIN_TOKEN>'")
    elif not _from_loopback(request):
        raise errors.Unauthorized("this endpoint is open to loopback callers only unless MULTIMSG_DRAIN_TOKEN is set")
