"""Every multimsg handler by name, for functions-framework and Google Cloud Functions.

    functions-framework --source main.py --target msg   # or key, data, send, cons, drain, health, metrics, openapi, webhook, callback_key, cancel

Each target is one endpoint of the HTTP API; they share the data folder
(MULTIMSG_HOME), or the store MULTIMSG_BACKEND names. ``local_runner.py``
serves them all on one port instead.

A target's module is imported when functions-framework asks for it (module
``__getattr__``), so a function deployed alone starts without importing the
other handlers and their dependencies.
"""

import os

from multimsg.logs import setup as _setup_logs

os.umask(0o077)  # files the handlers or their libraries create (metrics, temp files) are private
_setup_logs()  # one log format for every handler (MULTIMSG_LOG_FORMAT), secrets redacted

TARGETS = ("key", "data", "msg", "send", "cons", "drain", "openapi", "health", "metrics", "webhook", "callback_key", "cancel")
__all__ = [*TARGETS]  # each one supplied by __getattr__ below


def __getattr__(name: str):
    if name in TARGETS:
        from multimsg.functions import handler

        return handler(name)
    raise AttributeError(f"module 'main' has no attribute {name!r}")
