"""multimsg: a self-hosted gateway that sends files and messages to messaging platforms.

The folders are the architecture: ``functions/`` (HTTP in, HTTP out),
``queue/`` (store, spool, claims, the drain), ``services/`` (one platform each).
``gateway`` holds the core operations the handlers call.
"""

__version__ = "0.1.0"

from .client import Client  # noqa: E402  (the Python client: multimsg.Client)

__all__ = ["Client", "__version__"]
