"""What "healthy" means for a multimsg process: ``GET /health`` asks ``check()``.

Healthy is: the data folder takes a write (a small file written and removed),
and the store answers a read. The report also says which services have their
credentials here, so a load balancer or an operator sees a half-configured
server. A failed check raises ``Unavailable`` (503) with a one-line reason; the
path and the OS error go to the server log, not to the caller.

``/health`` is open to anyone, so a passed check is remembered for
``CACHE_SECONDS`` (per process): however often it is asked, the probe file is
written at most once in that time. A failed check is not remembered, so a
server that recovers says so on the next call.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from . import __version__
from .errors import Unavailable
from .fsutil import write_atomic

__all__ = ["check"]

log = logging.getLogger("multimsg.health")

PROBE_ID = "0" * 16  # a well-formed message id that new_id() practically never makes
CACHE_SECONDS = 5.0
_clock = time.monotonic
_lock = threading.Lock()
_passed: tuple[float, dict] | None = None  # (when, report) of the last check that passed


def check() -> dict:
    """The health report (a passed one is reused for CACHE_SECONDS), or ``Unavailable`` with the reason."""
    global _passed
    with _lock:  # one probe at a time; the callers meanwhile get its answer
        if _passed is not None and _clock() - _passed[0] < CACHE_SECONDS:
            return dict(_passed[1])
        report = _probe()
        _passed = (_clock(), report)
        return dict(report)


def _probe() -> dict:
    """The health report, or ``Unavailable`` with the reason (no cache)."""
    from . import convert
    from .config import settings
    from .gateway import gateway
    from .services import get_service, instances

    home = settings().home
    try:
        gw = gateway()
        probe = home / f".health-{os.getpid()}-{threading.get_ident()}"
        write_atomic(probe, b"ok", fsync=False)
        probe.unlink()
    except OSError as exc:
        log.error("health: the data folder %s is not writable: %s", home, exc)
        raise Unavailable(f"the data folder is not writable ({exc.strerror or type(exc).__name__})") from None
    try:
        gw.store.get(PROBE_ID)
    except Unavailable as exc:
        raise Unavailable(f"the store is not readable ({exc.reason})") from None
    except (OSError, ValueError) as exc:
        log.error("health: the store in %s is not readable: %s", home, exc)
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise Unavailable(f"the store is not readable ({reason})") from None
    problems = gw.store.problems()  # e.g. a damaged shard set aside: the rest works, an operator must look
    if problems:
        raise Unavailable(f"the store is degraded: {problems[0]}")
    services, kinds = {}, {}
    for name, kind in sorted(instances().items()):
        kinds[name] = kind
        try:
            services[name] = get_service(name).configured()
        except Exception:
            services[name] = False
    return {
        "status": "ok",
        "version": __version__,
        "services": services,
        "configured": [name for name, ok in services.items() if ok],
        "kinds": kinds,
        "ffmpeg": convert.status(),  # audio conversion (/msg convert=1)
    }
