"""Holds: services whose credentials were refused (or are missing), kept across drain passes.

A held service's messages stay queued, untouched; every pass reports it (and
logs an ERROR) until a probe gets through. A hold lapses after ``recheck``
seconds so that the next pass sends one probe message; a delivery releases it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["Holds", "MISCONFIGURED_RECHECK"]

log = logging.getLogger("multimsg.drain")

MISCONFIGURED_RECHECK = 60.0  # seconds between probes of a service whose credentials were refused


class Holds:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._held: dict[str, tuple[float, str]] = {}  # serv -> (when the next probe may go, reason)
        self._lock = threading.Lock()

    def reason(self, serv: str) -> str | None:
        """Why ``serv`` is on hold now, or None (also None once the hold lapsed, so that a probe goes)."""
        with self._lock:
            held = self._held.get(serv)
        if held is None or self.clock() >= held[0]:
            return None
        return held[1]

    def probing(self, serv: str) -> bool:
        """Whether ``serv`` was held and has not yet delivered since (it sends one message at a time)."""
        with self._lock:
            return serv in self._held

    def held(self) -> dict[str, str]:
        """Every service on hold now, with its reason."""
        with self._lock:
            servs = list(self._held)
        return {serv: reason for serv in servs if (reason := self.reason(serv))}

    def hold(self, serv: str, reason: str, recheck: float = MISCONFIGURED_RECHECK) -> None:
        with self._lock:
            self._held[serv] = (self.clock() + recheck, reason)
        log.error("service %s is misconfigured; its messages stay queued (next try in %g s): %s", serv, recheck, reason)

    def release(self, serv: str) -> None:
        with self._lock:
            released = self._held.pop(serv, None)
        if released is not None:
            log.warning("service %s works again; sending its queued messages", serv)
