"""Queue figures behind one interface: what ``/metrics`` and ``multimsg stats`` read.

A backend's ``Counters`` reads the figures documents it keeps beside its
records (``queue/figures.py`` says how a change is counted; the backend counts
inside the critical section of the change) and the drain's own figures
(passes, their duration). ``snapshot`` adds them up; it never scans records.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Iterable

from . import figures

__all__ = ["Counters", "apply_pass"]


def apply_pass(drain: dict[str, Any], seconds: float, summary: dict, now: float) -> dict[str, Any]:
    """The drain figures after one more pass that ran (not one that found another pass busy)."""
    drain["passes"] = drain.get("passes", 0) + 1
    drain["last_at"] = now
    drain["last_seconds"] = seconds
    drain["last_summary"] = {k: v for k, v in summary.items() if k in ("claimed", "delivered", "retried", "failed")}
    figures.observe(drain.setdefault("duration", figures.histogram(figures.DRAIN_BOUNDS)), figures.DRAIN_BOUNDS, seconds)
    return drain


class Counters(ABC):
    @abstractmethod
    def documents(self) -> Iterable[figures.Figures]:
        """The figures documents this backend keeps (to be merged)."""

    @abstractmethod
    def drain_figures(self) -> dict[str, Any]:
        """The drain's figures: passes, last_at, last_seconds, last_summary, duration."""

    @abstractmethod
    def drain_pass(self, seconds: float, summary: dict) -> None:
        """Count one drain pass that ran."""

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Per service: depth by state, oldest queued age, outcomes in total and in the last hour."""
        now = time.time() if now is None else now
        return {"services": figures.summary(figures.merge(self.documents()), now), "drain": self.drain_figures(), "updated_at": now}
