"""Every multimsg handler by name, for functions-framework and Google Cloud Functions.

    functions-framework --source main.py --target msg   # or key, data, cons, drain

Each target is one endpoint of the HTTP API; they share the data folder
(MULTIMSG_HOME). ``local_runner.py`` serves them all on one port instead.
"""

from multimsg.functions import cons, data, drain, key, msg
from multimsg.functions import openapi
from multimsg.functions import health, metrics
from multimsg.logs import setup as _setup_logs

_setup_logs()  # one log format for every handler (MULTIMSG_LOG_FORMAT), secrets redacted

__all__ = ["key", "data", "msg", "cons", "drain", "openapi", "health", "metrics"]
