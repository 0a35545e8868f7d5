"""Benchmark 7: GET /messages costs the same however many messages other clients have stored.

A real runner on each backend (embedded, and Redis when redis-server is
installed). One client (the loopback client, ``bench.common.CLIENT``) has 200
messages; ``GET /messages?limit=50`` is timed, then 100k messages of another
client are added straight through the store API (``add_many``) and it is timed
again. With a per-client index the two should be about equal.

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


def timed_pages(runner: Gateway, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = runner.http.get(runner.url + "/messages", params={"limit": 50}, timeout=60)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200 and len(answer.json()["messages"]) == 50, answer.text
    return times


def measure(name: str, runner: Gateway, store, others: int, requests: int) -> dict:
    store.add_many(messages(CLIENT, 200))
    figures = {"own": 200, "alone": summarize(timed_pages(runner, requests))}
    print(f"{name}: GET /messages, 200 own messages, no others:", figures["alone"], flush=True)
    started = time.monotonic()
    store.add_many(messages("mac:00:00:00:00:00:01", others))
    figures["seed_seconds"] = round(time.monotonic() - started, 1)
    figures["others"] = others
    figures["with_others"] = summarize(timed_pages(runner, requests))
    print(f"{name}: GET /messages, 200 own messages, {others} of another client:", figures["with_others"], flush=True)
    figures["ratio"] = round(figures["with_others"]["median_ms"] / figures["alone"]["median_ms"], 2)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    results: dict = {"machine": machine()}
    env = {"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"}
    with tempfile.TemporaryDirectory(prefix="multimsg-bench-history-") as folder:
        home = Path(folder) / "embedded"
        runner = Gateway(home, env).start(timeout=120)
        try:
            results["embedded"] = measure("embedded", runner, TinyStore(Layout(home), fsync=False), args.others, args.requests)
        finally:
            runner.stop()
        binary = shutil.which("redis-server")
        if binary:
            from multimsg.queue.backends.redis import RedisStore, connect

            server = RedisServer(binary, Path(folder)).start()
            url = server.url + "/0"
            runner = Gateway(Path(folder) / "redis", {**env, "MULTIMSG_BACKEND": url, "MULTIMSG_KEY_SEAL": SEAL}).start(timeout=120)
            try:
                results["redis"] = measure("redis", runner, RedisStore(connect(url)), args.others, args.requests)
            finally:
                runner.stop()
                server.stop()
    save("history", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
