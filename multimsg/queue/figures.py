"""Queue figures as plain data: how one record change is counted, and how figures add up.

A backend keeps one *figures* document per unit it changes atomically (the
whole store for the memory backend, one shard for TinyDB, one hash for
Redis) and changes it with ``count`` inside the same critical section as the
record change it counts, so figures cannot land out of order or drift.
``merge`` adds documents up for a snapshot. The document (version 2)::

    {"services": {"<serv>": {
        "states":   {"queued": n, "delivered": n, "failed": n},   # records stored now
        "queued":   {"<minute>": [count, earliest queued_since]},  # queued records by the minute they became sendable
        "outcomes": {"delivered": n, "failed": n, "retried": n},   # totals
        "recent":   {"delivered": {"<minute>": n}, ...},           # the same per minute, last hour only
        "latency":  {"delivered": histogram, "failed": histogram}}}}  # /msg accepted -> final state

A histogram is ``{"buckets": [count per upper bound], "inf": n, "sum": s, "count": n}``.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..model import FINAL_STATES, Message, State

__all__ = [
    "count", "recount", "merge", "summary", "empty", "observe", "histogram",
    "OUTCOMES", "RETRIED", "LATENCY_BOUNDS", "DRAIN_BOUNDS", "RECENT_WINDOW",
]

RETRIED = "retried"
OUTCOMES = (str(State.DELIVERED), str(State.FAILED), RETRIED, str(State.CANCELLED))
RECENT_WINDOW = 3600.0  # "the last hour"
LATENCY_BOUNDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
DRAIN_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

Figures = dict[str, Any]


def empty() -> Figures:
    return {"version": 2, "services": {}}


def histogram(bounds: tuple) -> dict:
    return {"buckets": [0] * len(bounds), "inf": 0, "sum": 0.0, "count": 0}


def observe(hist: dict, bounds: tuple, value: float) -> None:
    value = max(0.0, value)
    for i, bound in enumerate(bounds):
        if value <= bound:
            hist["buckets"][i] += 1
            break
    else:
        hist["inf"] += 1
    hist["sum"] += value
    hist["count"] += 1


def _minute(t: float) -> str:
    return str(int(t // 60))


def _service(figures: Figures, serv: str) -> dict:
    entry = figures.setdefault("services", {}).setdefault(serv, {})
    for key in ("states", "queued", "outcomes", "recent", "latency"):
        entry.setdefault(key, {})
    return entry


def _enter(entry: dict, message: Message) -> None:
    entry["states"][message.state] = entry["states"].get(message.state, 0) + 1
    if message.state == State.QUEUED:  # by ``queued_since``: a message scheduled for later is not "old" while it waits
        since = message.queued_since
        bucket = entry["queued"].setdefault(_minute(since), [0, since])
        bucket[0] += 1
        bucket[1] = min(bucket[1], since)


def _leave(entry: dict, message: Message) -> None:
    states = entry["states"]
    states[message.state] = states.get(message.state, 0) - 1
    if not states[message.state]:
        del states[message.state]
    if message.state == State.QUEUED:
        minute = _minute(message.queued_since)
        bucket = entry["queued"].get(minute)
        if bucket:
            bucket[0] -= 1
            if bucket[0] <= 0:
                del entry["queued"][minute]


def _outcome(entry: dict, outcome: str, now: float) -> None:
    entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
    recent = entry["recent"].setdefault(outcome, {})
    recent[_minute(now)] = recent.get(_minute(now), 0) + 1
    oldest = int((now - RECENT_WINDOW) // 60)
    for minute in [m for m in recent if int(m) < oldest]:
        del recent[minute]


def changes_figures(before: Message | None, after: Message | None) -> bool:
    """Whether ``count`` changes anything for this change (a lease taken, extended or dropped changes no figure)."""
    if before is None or after is None or before.state != after.state:
        return True
    return after.state == State.QUEUED and after.attempts > before.attempts


def count(figures: Figures, before: Message | None, after: Message | None, now: float) -> None:
    """Count one record change: added (no ``before``), archived (no ``after``), moved or retried."""
    if after is None:
        if before is not None:
            _leave(_service(figures, before.serv), before)
        return
    entry = _service(figures, after.serv)
    if before is None:
        _enter(entry, after)
        return
    if before.state == after.state:
        if after.state == State.QUEUED and after.attempts > before.attempts:
            _outcome(entry, RETRIED, now)
        return
    _leave(entry, before)
    _enter(entry, after)
    if after.state in FINAL_STATES:
        _outcome(entry, after.state, now)
        hist = entry["latency"].setdefault(str(after.state), histogram(LATENCY_BOUNDS))
        observe(hist, LATENCY_BOUNDS, now - after.created_at)


def recount(figures: Figures, messages: Iterable[Message]) -> int:
    """Count the stored messages again (depth and queued ages); totals are kept. Returns how many."""
    for entry in figures.get("services", {}).values():
        entry["states"], entry["queued"] = {}, {}
    counted = 0
    for message in messages:
        _enter(_service(figures, message.serv), message)
        counted += 1
    return counted


def _add_histograms(into: dict, other: dict) -> None:
    if not into:
        into.update({"buckets": list(other.get("buckets", [])), "inf": other.get("inf", 0),
                     "sum": other.get("sum", 0.0), "count": other.get("count", 0)})
        return
    into["buckets"] = [a + b for a, b in zip(into["buckets"], other.get("buckets", []))]
    for key in ("inf", "sum", "count"):
        into[key] += other.get(key, 0)


def merge(documents: Iterable[Figures]) -> Figures:
    """The sum of several figures documents (one per shard, say)."""
    total = empty()
    for doc in documents:
        for serv, entry in doc.get("services", {}).items():
            into = _service(total, serv)
            for key in ("states", "outcomes"):
                for name, n in entry.get(key, {}).items():
                    into[key][name] = into[key].get(name, 0) + n
            for minute, (n, earliest) in entry.get("queued", {}).items():
                bucket = into["queued"].setdefault(minute, [0, earliest])
                bucket[0] += n
                bucket[1] = min(bucket[1], earliest)
            for outcome, per_minute in entry.get("recent", {}).items():
                mine = into["recent"].setdefault(outcome, {})
                for minute, n in per_minute.items():
                    mine[minute] = mine.get(minute, 0) + n
            for outcome, hist in entry.get("latency", {}).items():
                _add_histograms(into["latency"].setdefault(outcome, {}), hist)
    return total


def summary(figures: Figures, now: float) -> dict:
    """Per service: depth by state, oldest queued age, outcomes in total and in the last hour, latency."""
    since = int((now - RECENT_WINDOW) // 60)
    services = {}
    for serv, entry in sorted(figures.get("services", {}).items()):
        earliest = [bucket[1] for bucket in entry.get("queued", {}).values() if bucket and bucket[0] > 0]
        services[serv] = {
            "states": {**{str(state): 0 for state in State}, **entry.get("states", {})},
            "oldest_queued_age": max(0.0, now - min(earliest)) if earliest else None,
            "outcomes": {o: entry.get("outcomes", {}).get(o, 0) for o in OUTCOMES},
            "last_hour": {
                o: sum(n for m, n in entry.get("recent", {}).get(o, {}).items() if int(m) >= since) for o in OUTCOMES
            },
            "latency": entry.get("latency", {}),
        }
    return services
