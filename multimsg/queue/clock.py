"""The drain's clock: wall time for what is shown and stored, a bounded belief for what it decides.

Stored times are wall-clock (``time.time()``): they are shown to clients and
shared between processes. But a decision that a wall-clock jump could make
in bulk (fail a message as expired, archive a result unread) uses
``trusted()``: the wall clock as long as it moves with the monotonic clock; after
a step of more than ``max_step`` seconds, the time the monotonic clock
says has passed since the last believed reading, until the new wall time has
held for ``settle`` seconds (a clock that was set right stays right; one that
jumped by mistake is usually stepped back sooner).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["SteadyClock"]

log = logging.getLogger("multimsg.drain")


class SteadyClock:
    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 max_step: float = 300.0, settle: float = 3600.0):
        self.wall = wall
        self.mono = mono
        self.max_step = max_step
        self.settle = settle
        self._anchor = (wall(), mono())  # a believed (wall, monotonic) pair
        self._step_since: float | None = None  # monotonic time a step was first seen
        self._lock = threading.Lock()

    def now(self) -> float:
        """Wall time: for what is stored and shown."""
        return self.wall()

    def trusted(self) -> float:
        """Wall time, unless it just stepped by more than ``max_step``: then the monotonic estimate."""
        wall, mono = self.wall(), self.mono()
        with self._lock:
            estimate = self._anchor[0] + (mono - self._anchor[1])
            if abs(wall - estimate) <= self.max_step:
                self._anchor, self._step_since = (wall, mono), None
                return wall
            if self._step_since is None:
                self._step_since = mono
                log.warning("the wall clock stepped by %+.0f s; expiry decisions follow the monotonic clock for now", wall - estimate)
            if mono - self._step_since >= self.settle:
                self._anchor, self._step_since = (wall, mono), None
                return wall
            return estimate
