"""multimsg: a self-hosted gateway that sends files and messages to messaging platforms.

The folders are the architecture: ``functions/`` (HTTP in, HTTP out),
``queue/`` (store, spool, claims, the drain), ``services/`` (one platform each).
``gateway`` holds the core operations the handlers call.
"""

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str):
    if name == "Client":  # the Python client (multimsg.Client), imported on first use: a handler's cold start skips it
        from .client import Client

        return Client
    raise AttributeError(f"module 'multimsg' has no attribute {name!r}")
