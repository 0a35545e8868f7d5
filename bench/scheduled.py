"""Benchmark 7: a drain's look into the due index with 100,000 scheduled messages, per backend.

Scheduled sends (``/msg`` ``at``) are queued messages whose ``next_attempt_at``
is their time, so they sit in the due index like retries. This measures
``claim_due`` (what every drain pass starts with) at a moment none of them is
due, on an empty store and on one holding ``--count`` messages scheduled
1 to 30 days ahead: on the embedded store (TinyDB shards and the due index
files) and on Redis (a real redis-server started for the run). The HTTP-level
idle pass with 100,000 not-due messages is benchmark 2 (``bench.backlog``).

Run: ``python -m bench.scheduled [--count 100000] [--passes 30] [--only embedded|redis]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import Message
from multimsg.queue.backends.tiny import TinyStore

from .common import CLIENT


def scheduled(count: int):
    now = time.time()
    for n in range(count):
        at = now + 86400 * (1 + 29 * n / max(1, count))
        yield Message(id=new_id(), client=CLIENT, data_id="d" * 16, serv="telegram", dest=str(n), type="text",
                      created_at=now, updated_at=now, next_attempt_at=at, scheduled_for=at)


def look_ms(store, passes: int) -> float:
    """Median milliseconds of a claim_due that finds nothing due."""
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        assert list(store.claim_due(time.time(), 60)) == []
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def measure(make, count: int, passes: int) -> dict:
    store = make()
    empty = look_ms(store, passes)
    started = time.perf_counter()
    store.add_many(scheduled(count))
    seeded = time.perf_counter() - started
    full = look_ms(store, passes)
    return {"empty_ms": empty, "scheduled_ms": full, "messages": count, "seed_seconds": round(seeded, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--only", choices=["embedded", "redis"], help="measure one backend")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="multimsg-bench-"))
    try:
        if args.only != "redis":
            print("embedded", measure(lambda: TinyStore(Layout(folder / "home"), fsync=False), args.count, args.passes), flush=True)
        if args.only == "embedded":
            return
        binary = shutil.which("redis-server")
        if binary is None:
            print("redis: redis-server is not installed")
            return
        from multimsg.queue.backends.redis import RedisStore, connect
        from tests.redis_support import RedisServer

        server = RedisServer(binary, folder).start()
        try:
            client = connect(server.url + "/0")
            print("redis", measure(lambda: RedisStore(client, "bench"), args.count, args.passes), flush=True)
            client.close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
