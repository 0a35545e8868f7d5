"""Message states. Every state a message can be in, and which are final.

A message is ``QUEUED`` from ``/msg`` until the drain records a final outcome:
``DELIVERED`` (the platform accepted every part) or ``FAILED`` (the platform
refused it for good, its attempts ran out, or it expired). After ``/cons`` has
reported a final state once, the record moves to the archive.
"""

from __future__ import annotations

__all__ = ["QUEUED", "DELIVERED", "FAILED", "FINAL_STATES", "ALL_STATES"]

QUEUED = "queued"
DELIVERED = "delivered"
FAILED = "failed"

FINAL_STATES = frozenset({DELIVERED, FAILED})
ALL_STATES = (QUEUED, DELIVERED, FAILED)
