"""HTTP in, HTTP out: one functions-framework handler per endpoint.

Each module holds one decorated handler (``key``, ``data``, ``msg``, ``cons``,
``send``, ``drain``, ...) that can be deployed alone; ``app`` mounts them all on one Flask
app for the local runner. ``http`` is the layer they share.

A handler's module is imported when the handler is first asked for
(``multimsg.functions.msg``, ``HANDLERS``): a function deployed alone loads
what it needs, not every handler's dependencies (cold start).
"""

from importlib import import_module

__all__ = ["HANDLERS", "key", "data", "msg", "send", "cons", "drain", "openapi", "health", "metrics", "webhook", "callback_key", "cancel", "messages"]

NAMES = ("key", "data", "msg", "send", "cons", "drain", "openapi", "health", "metrics", "webhook", "callback_key", "cancel", "messages")
# URL path -> handler name; the public contract's endpoint names.
PATHS = {"/key": "key", "/data": "data", "/msg": "msg", "/send": "send", "/cons": "cons", "/drain": "drain",
         "/openapi.json": "openapi", "/health": "health", "/metrics": "metrics",
         "/webhook/wpp1": "webhook",  # the local runner also routes /webhook/<serv> here (app.py): 404 for others
         "/callback-key": "callback_key",
         "/cancel": "cancel", "/messages": "messages"}


def handler(name: str):
    """The handler ``name`` (its module imported now)."""
    return getattr(import_module(f"{__name__}.{name}"), name)


def __getattr__(name: str):
    if name == "HANDLERS":  # URL path -> handler (imports every handler: the local runner serves them all)
        return {path: handler(target) for path, target in PATHS.items()}
    if name in NAMES:
        return handler(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
