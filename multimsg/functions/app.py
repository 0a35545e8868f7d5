"""One Flask app that mounts every handler on its own path (for the local runner).

Handlers are called with ``flask.request`` exactly as functions-framework
calls them, so a handler behaves the same here and deployed alone. Every
answer names the process that gave it (``X-Multimsg-Worker``: its pid), as the
runner may serve from several (``MULTIMSG_WORKERS``).
"""

from __future__ import annotations

import os

import flask

from ..errors import NotFound
from . import HANDLERS
from .http import endpoint

__all__ = ["create_app", "WORKER_HEADER"]

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
WORKER_HEADER = "X-Multimsg-Worker"


@endpoint(*METHODS)
def _unknown(request):
    raise NotFound(f"no endpoint {request.path}; endpoints: {', '.join(HANDLERS)}")


def _name_the_worker(response: flask.Response) -> flask.Response:
    response.headers[WORKER_HEADER] = str(os.getpid())
    return response


def create_app() -> flask.Flask:
    app = flask.Flask("multimsg")
    app.after_request(_name_the_worker)
    for path, handler in HANDLERS.items():
        app.add_url_rule(path, endpoint=path, view_func=lambda h=handler: h(flask.request), methods=METHODS)
    app.add_url_rule("/webhook/<serv>", endpoint="webhook-serv", view_func=lambda serv: HANDLERS["/webhook/wpp1"](flask.request), methods=METHODS)
    app.add_url_rule("/", endpoint="root", view_func=lambda: _unknown(flask.request), methods=METHODS)
    app.add_url_rule("/<path:rest>", endpoint="unknown", view_func=lambda rest: _unknown(flask.request), methods=METHODS)
    return app
