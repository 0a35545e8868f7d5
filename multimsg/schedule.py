"""Scheduled sends: what ``/msg``'s ``at`` may say, and when such a message becomes due.

``at`` is an RFC 3339 time with an offset (``2026-12-01T09:30:00+01:00``,
``...Z``) or Unix seconds (``1796112000``, ``1796112000.5``). A time in the
past means now. A time further ahead than the horizon is refused: the horizon
is ``MULTIMSG_SCHEDULE_HORIZON`` (30 days) but never more than
``MULTIMSG_VALIDITY``, since the validity runs from the moment ``/msg``
accepted the message and a message must not expire before it is due.

A scheduled message is an ordinary queued message whose ``next_attempt_at``
is ``at``: it waits in the due index like a retry does, so scheduled messages
cost a drain pass nothing until they are due.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from .errors import InvalidInput

__all__ = ["parse_at", "AT_FIELD"]

AT_FIELD = "at"
_UNIX = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_at(value: str, now: float, horizon: float) -> float:
    """The Unix time ``value`` names, no earlier than ``now``; InvalidInput if malformed or beyond ``now + horizon``."""
    text = value
    if _UNIX.fullmatch(text):
        at = float(text)
    elif _RFC3339.fullmatch(text):
        fraction = re.search(r"\.([0-9]+)", text)
        if fraction and len(fraction.group(1)) > 6:  # datetime keeps microseconds; RFC 3339 allows more digits
            text = text.replace(fraction.group(0), fraction.group(0)[:7])
        try:
            at = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T")).timestamp()
        except ValueError:
            raise InvalidInput(f"field 'at' is not a valid time: {value[:40]!r}") from None
    else:
        raise InvalidInput("field 'at' must be an RFC 3339 time with an offset (2026-12-01T09:30:00Z) or Unix seconds")
    if not math.isfinite(at):
        raise InvalidInput("field 'at' is not a valid time")
    if at > now + horizon:
        raise InvalidInput(f"field 'at' is more than {horizon:g} s ahead (the scheduling horizon: MULTIMSG_SCHEDULE_HORIZON, "
                           "never past MULTIMSG_VALIDITY)")
    return max(at, now)
