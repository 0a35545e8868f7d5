"""The HTTP layer shared by every handler: content negotiation, errors, fields, identity.

``endpoint`` wraps a handler so that it only sees requests with an allowed
method, and so that every domain error becomes a 4xx with a one-line reason
(plain text, or ``{"error": ...}`` when the client accepts JSON). The mapping
from error types to status codes lives here and nowhere else.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Callable

import flask
from werkzeug.exceptions import HTTPException

from .. import errors
from ..config import settings
from ..identity import client_for_address

__all__ = ["Reply", "endpoint", "wants_json", "fields", "client_of", "require_operator"]

log = logging.getLogger("multimsg.http")

STATUS = {
    errors.InvalidInput: 400,
    errors.NotConfigured: 400,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.TooLarge: 413,
    errors.NotMultipart: 415,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
}


@dataclass
class Reply:
    """A successful answer: ``text`` by default, ``data`` as JSON when asked for."""

    text: str
    data: dict
    status: int = 200
    always_json: bool = False


def wants_json(request: flask.Request) -> bool:
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/plain"]


def _render(request: flask.Request, status: int, text: str, data: dict, headers: dict | None = None, always_json: bool = False) -> flask.Response:
    if always_json or wants_json(request):
        body, mimetype = json.dumps(data), "application/json"
    else:
        body, mimetype = text, "text/plain"
    return flask.Response(body, status=status, mimetype=mimetype, headers=headers)


def _error(request: flask.Request, status: int, reason: str, headers: dict | None = None) -> flask.Response:
    reason = " ".join(reason.split())
    return _render(request, status, reason, {"error": reason}, headers)


def endpoint(*methods: str) -> Callable:
    """Make ``handler(request) -> Reply`` a complete HTTP function."""

    def decorate(handler: Callable[[flask.Request], Reply]) -> Callable[[flask.Request], flask.Response]:
        @functools.wraps(handler)
        def http_function(request: flask.Request) -> flask.Response:
            if request.method not in methods:
                return _error(request, 405, f"use {' or '.join(methods)} on this endpoint", {"Allow": ", ".join(methods)})
            try:
                reply = handler(request)
            except errors.MultimsgError as exc:
                status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
                headers = {"Retry-After": str(int(exc.retry_after + 0.999))} if isinstance(exc, errors.RateLimited) else None
                return _error(request, status, exc.reason, headers)
            except HTTPException as exc:  # raised by werkzeug while parsing (413, bad multipart, ...)
                return _error(request, exc.code or 400, exc.description or exc.name)
            except Exception:
                log.exception("internal error in %s", handler.__name__)
                return _error(request, 500, "internal error; the server log has the details")
            return _render(request, reply.status, reply.text, reply.data, always_json=reply.always_json)

        return http_function

    return decorate


def fields(request: flask.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named fields from a form or a JSON object body, as strings."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise errors.InvalidInput("the JSON body must be an object")
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
    for name in names:
        given = request.form.getlist(name)
        if len(given) > 1:
            raise errors.InvalidInput(f"field '{name}' was given {len(given)} times; give it once")
        if given:
            values[name] = given[0]
    return values


def client_of(request: flask.Request) -> str:
    """The requesting client's key (see ``multimsg.identity``)."""
    return client_for_address(request.remote_addr)


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def require_operator(request: flask.Request) -> None:
    """Operator endpoints: the bearer MULTIMSG_DRAIN_TOKEN if set, else loopback callers only."""
    token = settings().drain_token
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise errors.Unauthorized("this endpoint needs 'Authorization: Bearer <MULTIMSG_DRAIN_TOKEN>'")
    elif not _is_loopback(request.remote_addr):
        raise errors.Unauthorized("this endpoint is open to loopback callers only unless MULTIMSG_DRAIN_TOKEN is set")
