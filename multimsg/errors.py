"""Domain errors: each carries a one-line, user-facing reason.

The HTTP layer (``multimsg.functions.http``) maps these types to status codes
in one place; the core never thinks in status codes.
"""

from __future__ import annotations

__all__ = [
    "MultimsgError",
    "InvalidInput",
    "NotFound",
    "TooLarge",
    "NotMultipart",
    "Unauthorized",
    "NotConfigured",
    "RateLimited",
    "Unavailable",
    "QuotaExceeded",
    "StorageFull",
    "Replayed",
    "Conflict",
    "Unprocessable",
]


class MultimsgError(Exception):
    """Base of every error a client may see. ``str(error)`` is the reason."""

    def __init__(self, reason: str):
        super().__init__(" ".join(str(reason).split()))  # always one line

    @property
    def reason(self) -> str:
        return str(self)


class InvalidInput(MultimsgError):
    """A field is missing or malformed, or the content does not fit its type."""


class NotFound(MultimsgError):
    """An id that does not exist, has expired, or belongs to another client."""


class TooLarge(MultimsgError):
    """The upload or the content is over a limit."""


class NotMultipart(MultimsgError):
    """The endpoint takes multipart/form-data and got something else."""


class Unauthorized(MultimsgError):
    """A credential is missing or wrong."""


class NotConfigured(MultimsgError):
    """The requested service has no credentials on this server."""


class RateLimited(MultimsgError):
    """The client sends too fast; ``retry_after`` says when to come back."""

    def __init__(self, reason: str, retry_after: float):
        super().__init__(reason)
        self.retry_after = retry_after


class Unavailable(MultimsgError):
    """The server cannot serve right now (storage unwritable, lock timeout)."""


class QuotaExceeded(TooLarge):
    """The client's uploads would hold more than its quota (MULTIMSG_CLIENT_QUOTA) in the spool."""


class Replayed(MultimsgError):
    """An encrypted upload whose wrapped key was used before: a replay of a captured upload."""


class StorageFull(MultimsgError):
    """The server's disk (or the user's disk quota) is full: nothing of this request was stored."""


class Forbidden(MultimsgError):
    """Credentials were given but are wrong (a webhook's signature or verify token): 403."""


class Conflict(MultimsgError):
    """The request clashes with the resource's current state (a message in flight or final; a key in use): 409."""


class Unprocessable(MultimsgError):
    """Well-formed, but it contradicts an earlier request (an idempotency key reused for another body): 422."""
