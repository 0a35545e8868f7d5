"""HTTP in, HTTP out: one functions-framework handler per endpoint.

Each module holds one decorated handler (``key``, ``data``, ``msg``, ``cons``,
``drain``) that can be deployed alone; ``app`` mounts them all on one Flask
app for the local runner. ``http`` is the layer they share.
"""

from .callback_key import callback_key
from .cons import cons
from .data import data
from .drain import drain
from .health import health
from .key import key
from .metrics import metrics
from .msg import msg
from .openapi import openapi
from .webhook import webhook

__all__ = ["HANDLERS", "key", "data", "msg", "cons", "drain", "openapi", "health", "metrics", "webhook", "callback_key"]

# URL path -> handler; the public contract's endpoint names.
HANDLERS = {"/key": key, "/data": data, "/msg": msg, "/cons": cons, "/drain": drain}
HANDLERS["/openapi.json"] = openapi
HANDLERS["/health"] = health
HANDLERS["/metrics"] = metrics
HANDLERS["/webhook/wpp1"] = webhook  # the local runner also routes /webhook/<serv> here (app.py): 404 for others
HANDLERS["/callback-key"] = callback_key
