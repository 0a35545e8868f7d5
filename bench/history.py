"""Benchmark 7: GET /messages costs the same however many messages other clients have stored.

Real runners on each backend (embedded, and Redis when redis-server is
installed). One client (the loopback client, ``bench.common.CLIENT``) has 200
messages in each of two runners; the second also holds 100k messages of another
client (added straight through the store API, ``add_many``). ``GET /messages?limit=50``
is timed on both, alternately, so the machine's load falls on both alike. With a
per-client index the two should be about equal.

Run: ``python -m bench.history [--others 100000] [--requests 200]``.
The figures are printed and merged into bench/results.json (section ``history``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import Message
from multimsg.queue.backends.tiny import TinyStore
from tests.gatewayproc import Gateway
from tests.redis_support import RedisServer

from .backlog import summarize
from .common import CLIENT, machine, save

SEAL = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def messages(client: str, count: int):
    now = time.time()
    for n in range(count):
        yield Message(id=new_id(), client=client, data_id="d" * 16, serv="outbox", dest=f"d{n}", type="text",
                      created_at=now - n * 0.001, updated_at=now, next_attempt_at=now + 30 * 24 * 3600.0)


def page_time(runner: Gateway) -> float:
    started = time.perf_counter()
    answer = runner.http.get(runner.url + "/messages", params={"limit": 50}, timeout=60)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200 and len(answer.json()["messages"]) == 50, answer.text
    return elapsed


def measure(name: str, runners: tuple[Gateway, Gateway], stores: tuple, others: int, requests: int) -> dict:
    """Two runners, the same 200 own messages in each; the second also holds ``others`` of another client.
    Requests alternate between them, so the machine's load falls on both alike."""
    started = time.monotonic()
    for store in stores:
        store.add_many(messages(CLIENT, 200))
    stores[1].add_many(messages("mac:00:00:00:00:00:01", others))
    figures: dict = {"own": 200, "others": others, "seed_seconds": round(time.monotonic() - started, 1)}
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(requests):
        for index in (0, 1):
            times[index].append(page_time(runners[index]))
    figures["alone"], figures["with_others"] = summarize(times[0]), summarize(times[1])
    figures["ratio"] = round(figures["with_others"]["median_ms"] / figures["alone"]["median_ms"], 2)
    print(f"{name}: GET /messages?limit=50, 200 own messages: alone {figures['alone']}; "
          f"with {others} of another client {figures['with_others']}; ratio {figures['ratio']}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    results: dict = {"machine": machine()}
    env = {"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"}
    with tempfile.TemporaryDirectory(prefix="multimsg-bench-history-") as folder:
        homes = (Path(folder) / "alone", Path(folder) / "crowded")
        runners = tuple(Gateway(home, env).start(timeout=120) for home in homes)
        try:
            stores = tuple(TinyStore(Layout(home), fsync=False) for home in homes)
            results["embedded"] = measure("embedded", runners, stores, args.others, args.requests)
        finally:
            for runner in runners:
                runner.stop()
        binary = shutil.which("redis-server")
        if binary:
            from multimsg.queue.backends.redis import RedisStore, connect

            server = RedisServer(binary, Path(folder)).start()
            urls = (server.url + "/0", server.url + "/1")
            runners = tuple(Gateway(Path(folder) / f"redis{i}", {**env, "MULTIMSG_BACKEND": url, "MULTIMSG_KEY_SEAL": SEAL}).start(timeout=120)
                            for i, url in enumerate(urls))
            try:
                results["redis"] = measure("redis", runners, tuple(RedisStore(connect(url)) for url in urls), args.others, args.requests)
            finally:
                for runner in runners:
                    runner.stop()
                server.stop()
    save("history", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
