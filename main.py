"""Every multimsg handler by name, for functions-framework and Google Cloud Functions.

    functions-framework --source main.py --target msg   # or key, data, cons, drain, health, metrics, openapi, webhook, callback_key

Each target is one endpoint of the HTTP API; they share the data folder
(MULTIMSG_HOME). ``local_runner.py`` serves them all on one port instead.
"""

import os

from multimsg.functions import callback_key, cons, data, drain, health, key, metrics, msg, openapi, webhook
from multimsg.logs import setup as _setup_logs

os.umask(0o077)  # files the handlers or their libraries create (metrics, temp files) are private
_setup_logs()  # one log format for every handler (MULTIMSG_LOG_FORMAT), secrets redacted

__all__ = ["key", "data", "msg", "cons", "drain", "openapi", "health", "metrics", "webhook", "callback_key"]
