"""The per-client spool quota (``MULTIMSG_CLIENT_QUOTA``, bytes; 1 GB by default, 0 turns it off).

Before an upload is stored, the bytes the spool already holds for the client
(``Spool.usage``, a running count: its live uploads, and on the embedded
backend its messages' content that no upload shares) plus the size of
the incoming upload must fit in the quota; otherwise ``QuotaExceeded`` (413,
with "quota" in the reason) and nothing is stored. Space comes back as uploads
expire (MULTIMSG_DATA_TTL) and as final states are reported. Uploads of one
client that arrive at the same instant are each checked against what is
stored, so together they may pass the quota by what is in flight.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from .errors import QuotaExceeded

__all__ = ["check_quota"]


def _size(data: BinaryIO) -> int:
    try:
        here = data.tell()
        size = data.seek(0, io.SEEK_END)
        data.seek(here)
        return size - here
    except (OSError, AttributeError, ValueError):  # not seekable: counted as it is stored, not before
        return 0


def check_quota(spool, client: str, data: BinaryIO, quota: int) -> None:
    """``QuotaExceeded`` if storing ``data`` would put ``client`` over ``quota`` bytes (0: no quota)."""
    usage = getattr(spool, "usage", None)
    if quota <= 0 or usage is None:
        return
    used, incoming = usage(client), _size(data)
    if used + incoming > quota:
        raise QuotaExceeded(
            f"over this client's storage quota: its uploads hold {used} bytes on the server and this one is "
            f"{incoming} bytes; the quota is {quota} bytes (space comes back as uploads expire and results are reported)"
        )
