"""Prometheus metrics: what ``GET /metrics`` serves, and where each figure comes from.

Two sources, so that every process sharing one data folder serves the same figures:

- Request counts (``multimsg_http_requests_total{endpoint,status}``) are per
  process by nature; they use prometheus-client's multiprocess mode, one small
  mmap file per process in ``metrics/`` of the data folder (or
  ``PROMETHEUS_MULTIPROC_DIR`` if set), summed at scrape time. Files of
  processes that no longer exist are swept when a process starts counting
  and at most once a minute on a scrape (``sweep``): their live gauges are
  removed (``mark_process_dead``), their counters and histograms are added
  into one ``<type>_merged.db`` file and removed, so the totals stay and the
  folder does not grow with every worker restart.
- Queue figures come from the store's counters (``queue/counters.py``), changed
  with each state change by whichever process made it, read once per scrape:
  ``multimsg_queue_messages{service,state}``,
  ``multimsg_queue_oldest_age_seconds{service}``,
  ``multimsg_deliveries_total{service,outcome}`` (delivered, failed, retried),
  ``multimsg_send_latency_seconds{service,outcome}`` (histogram: from /msg
  accepting the message to its final state), ``multimsg_drain_pass_duration_seconds``
  (histogram), ``multimsg_drain_last_pass_timestamp_seconds``; plus
  ``multimsg_service_configured{service}`` from the process's settings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .config import settings
from .fsutil import ensure_private_dir
from .layout import Layout
from .model import State
from .queue.counters import Counters
from .queue.figures import DRAIN_BOUNDS, LATENCY_BOUNDS, OUTCOMES

__all__ = ["count_request", "count_receipt", "receipt_counts", "render", "sweep", "CONTENT_TYPE", "QueueCollector"]

log = logging.getLogger("multimsg.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_lock = threading.Lock()
_requests = None  # the Counter, made on first use (after the multiprocess folder is set)
_failed = False


def _multiprocess_dir() -> str:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        path = str(ensure_private_dir(Layout(settings().home).metrics))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    else:
        ensure_private_dir(Path(path))
    return path


SWEEP_EVERY = 60.0
_swept_at = 0.0
_FOLDED = ("counter", "histogram")  # summed over processes: a dead process's values stay in the totals


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scrape_lock(path: str):
    from filelock import FileLock

    return FileLock(os.path.join(path, ".sweep.lock"), timeout=10)


def sweep(path: str | None = None) -> int:
    """Clean the files of processes that no longer exist; returns how many files were removed."""
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    global _swept_at
    path = path or _multiprocess_dir()
    _swept_at = time.monotonic()
    removed = 0
    with _scrape_lock(path):  # scrapes hold it too: a file never vanishes under a reader
        for name in sorted(os.listdir(path)):
            if not name.endswith(".db"):
                continue
            typ, _, pid = name[:-3].rpartition("_")
            if not pid.isdigit() or _alive(int(pid)):
                continue
            kind = typ.split("_")[0]
            if kind == "gauge":
                multiprocess.mark_process_dead(int(pid), path)  # live gauges; other modes keep the last value
            if kind in _FOLDED:
                merged = MmapedDict(os.path.join(path, f"{kind}_merged.db"))
                try:
                    for key, value, *rest in MmapedDict.read_all_values_from_file(os.path.join(path, name)):
                        timestamp = rest[0] if len(rest) > 1 else 0.0  # (key, value, timestamp, pos); no timestamp before 0.21
                        merged.write_value(key, merged.read_value(key)[0] + value, timestamp)
                finally:
                    merged.close()
                os.unlink(os.path.join(path, name))
            removed += not os.path.exists(os.path.join(path, name))
    return removed


def _sweep_quietly(path: str) -> None:
    try:
        sweep(path)
    except Exception:
        log.exception("metrics files of ended processes not swept")


def _request_counter():
    global _requests
    with _lock:
        if _requests is None:
            _sweep_quietly(_multiprocess_dir())
            from prometheus_client import Counter, values

            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus_client picks its value class at import; if it was
                # imported before the folder was set, switch it now (before our
                # first metric is made).
                values.ValueClass = values.MultiProcessValue()
            _requests = Counter(
                "multimsg_http_requests", "HTTP requests answered, by endpoint and status code",
                ["endpoint", "status"], registry=None,
            )
        return _requests


_receipts = None


def _receipt_counter():
    global _receipts
    _request_counter()  # the multiprocess value class is set up
    with _lock:
        if _receipts is None:
            from prometheus_client import Counter

            _receipts = Counter("multimsg_receipts", "Platform receipts (status webhooks) received, by service and status",
                                ["service", "status"], registry=None)
        return _receipts


def count_receipt(status: str, service: str = "wpp1") -> None:
    """Count one receipt received. Never raises."""
    try:
        _receipt_counter().labels(service, status).inc()
    except Exception:
        log.exception("receipt metrics are off in this process")


def receipt_counts() -> dict[str, dict[str, int]]:
    """Receipts received by the processes of this data folder: service -> status -> count (``multimsg stats``)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = _multiprocess_dir()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    counts: dict[str, dict[str, int]] = {}
    with _scrape_lock(path):
        for family in registry.collect():
            for sample in family.samples if family.name == "multimsg_receipts" else ():
                if sample.name == "multimsg_receipts_total":
                    counts.setdefault(sample.labels["service"], {})[sample.labels["status"]] = int(sample.value)
    return counts


_request_children: dict[tuple[str, int], Any] = {}  # (handler, status) -> its labelled counter


def count_request(endpoint: str, status: int) -> None:
    """Count one answered request. Never raises: metrics must not break a request."""
    global _failed
    if _failed:
        return
    try:
        # The labelled counter kept per (handler, status): the one labels() gives every time, without its checks and lock.
        child = _request_children.get((endpoint, status))
        if child is None:
            child = _request_children[(endpoint, status)] = _request_counter().labels(endpoint.lstrip("_"), str(status))
        child.inc()
    except Exception:
        _failed = True
        log.exception("request metrics are off in this process")


def _cumulative(histogram: dict, bounds: tuple) -> list[tuple[str, float]]:
    from prometheus_client.utils import floatToGoString

    running, out = 0, []
    buckets = histogram.get("buckets") or [0] * len(bounds)
    for bound, count in zip(bounds, buckets):
        running += count
        out.append((floatToGoString(bound), running))
    out.append(("+Inf", running + histogram.get("inf", 0)))
    return out


class QueueCollector:
    """Queue figures from the counters file, read once per scrape."""

    def __init__(self, counters: Counters, outbox=None):
        self.counters = counters
        self.outbox = outbox  # () -> the store's outbox figures (callbacks), or None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from .services import get_service, instances

        snapshot = self.counters.snapshot()
        configured_instances = instances()
        services = sorted(set(configured_instances) | set(snapshot["services"]))
        depth = GaugeMetricFamily(
            "multimsg_queue_messages",
            "Messages in the store by service and state (delivered/failed/cancelled: not yet reported by /cons)",
            labels=["service", "state"],
        )
        oldest = GaugeMetricFamily(
            "multimsg_queue_oldest_age_seconds", "Age of the oldest queued message (0 when none; to the minute; a scheduled one from its at)",
            labels=["service"],
        )
        outcomes = CounterMetricFamily(
            "multimsg_deliveries", "Delivery attempts by outcome: delivered, failed (for good), retried; and messages cancelled",
            labels=["service", "outcome"],
        )
        latency = HistogramMetricFamily(
            "multimsg_send_latency_seconds", "Time from /msg accepting a message to its final state",
            labels=["service", "outcome"],
        )
        configured = GaugeMetricFamily(
            "multimsg_service_configured", "1 if the service has its credentials on this server", labels=["service"],
        )
        for serv in services:
            figures = snapshot["services"].get(serv, {})
            states = figures.get("states", {})
            for state in sorted({str(x) for x in State} | set(states)):
                depth.add_metric([serv, state], states.get(state, 0))
            oldest.add_metric([serv], figures.get("oldest_queued_age") or 0.0)
            for outcome in OUTCOMES:
                outcomes.add_metric([serv, outcome], figures.get("outcomes", {}).get(outcome, 0))
            for outcome in ("delivered", "failed"):
                histogram = figures.get("latency", {}).get(outcome, {})
                latency.add_metric([serv, outcome], _cumulative(histogram, LATENCY_BOUNDS), histogram.get("sum", 0.0))
            if serv in configured_instances:
                try:
                    configured.add_metric([serv], 1.0 if get_service(serv).configured() else 0.0)
                except Exception:
                    configured.add_metric([serv], 0.0)
        drain = snapshot.get("drain", {})
        durations = drain.get("duration", {})
        passes = HistogramMetricFamily("multimsg_drain_pass_duration_seconds", "Duration of drain passes that ran")
        passes.add_metric([], _cumulative(durations, DRAIN_BOUNDS), durations.get("sum", 0.0))
        last = GaugeMetricFamily("multimsg_drain_last_pass_timestamp_seconds", "When the last drain pass ended (0: never)")
        last.add_metric([], drain.get("last_at") or 0.0)
        yield from (depth, oldest, outcomes, latency, passes, last, configured)
        yield from self._callbacks()

    def _callbacks(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.outbox is None:
            return
        try:
            figures = self.outbox()
        except Exception:
            log.exception("callback figures not read")
            return
        pending = GaugeMetricFamily("multimsg_callbacks_pending", "Status events in the outbox, not yet delivered")
        pending.add_metric([], figures.get("pending", 0))
        ended = CounterMetricFamily("multimsg_callbacks", "Status events that left the outbox, by outcome (delivered, given_up)",
                                    labels=["outcome"])
        for outcome in ("delivered", "given_up"):
            ended.add_metric([outcome], figures.get(outcome, 0))
        yield from (pending, ended)


def render(counters: Counters | None = None) -> bytes:
    """The Prometheus text exposition of every multimsg figure (``counters``: the gateway's)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    outbox = None
    if counters is None:
        from .gateway import gateway

        counters = gateway().store.counters
        outbox = gateway().store.outbox_figures

    registry = CollectorRegistry()
    _request_counter()  # this process's file exists, so the request series are there from the first scrape
    path = _multiprocess_dir()
    if time.monotonic() - _swept_at >= SWEEP_EVERY:
        _sweep_quietly(path)
    MultiProcessCollector(registry, path=path)
    registry.register(QueueCollector(counters, outbox))
    with _scrape_lock(path):
        return generate_latest(registry)
