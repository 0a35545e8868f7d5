"""Benchmark 4: enqueue cost on the Redis backend, with an empty store and with 100k queued messages.

A real redis-server (no persistence: this measures the gateway, not the
disk), a real runner with ``MULTIMSG_BACKEND=redis://...`` and the WhatsApp
emulator (nothing is drained here). ``/data`` + ``/msg`` pairs from one
client, one after the other, first on an empty store, then after 100k queued
messages were added straight through the store API (``RedisStore.add_many``,
pipelined). The second should cost about what the first does: an add is a
handful of O(log n) ZSET and hash writes in one script.

Run: ``python -m bench.redis_backend [--backlog 100000] [--pairs 300]``.
The figures are printed and written to bench/results.json (section ``redis``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from multimsg.ids import new_id
from multimsg.model import Message
from multimsg.queue.backends.redis import RedisStore, connect
from tests.emulators import WhatsAppEmulator
from tests.gatewayproc import Gateway
from tests.redis_support import RedisServer

from .backlog import enqueue_pairs, summarize

RESULTS = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_backend", description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args(argv)
    results: dict = {"machine": f"{platform.python_version()}, {platform.system()}", "backlog": args.backlog}
    with tempfile.TemporaryDirectory(prefix="multimsg-bench-redis-") as folder, \
            WhatsAppEmulator(latency=0.0, rate=0).start() as emulator:
        server = RedisServer(shutil.which("redis-server") or "redis-server", Path(folder)).start()
        url = server.url + "/0"
        env = {"MULTIMSG_BACKEND": url, "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0",
               "MULTIMSG_WPP1_TOKEN": emulator.token, "MULTIMSG_WPP1_PHONE_NUMBER_ID": emulator.phone_id,
               "MULTIMSG_WPP1_API_URL": emulator.url}
        runner = Gateway(Path(folder) / "home", env).start(timeout=120)
        try:
            results["enqueue_empty"] = summarize(enqueue_pairs(runner, args.pairs))
            print("enqueue, empty store:", results["enqueue_empty"], flush=True)
            store, now = RedisStore(connect(url)), time.time()
            started = time.monotonic()
            seeded = store.add_many(
                Message(id=new_id(), client="bench", data_id="d" * 16, serv="wpp1", dest=str(5490000000000 + n), type="text",
                        created_at=now, updated_at=now, next_attempt_at=now) for n in range(args.backlog))
            results["seed_seconds"] = round(time.monotonic() - started, 1)
            print(f"seeded {seeded} queued messages in {results['seed_seconds']} s", flush=True)
            results["enqueue_backlog"] = summarize(enqueue_pairs(runner, args.pairs))
            print(f"enqueue, {seeded} queued:", results["enqueue_backlog"], flush=True)
            results["enqueue_ratio"] = round(results["enqueue_backlog"]["median_ms"] / results["enqueue_empty"]["median_ms"], 2)
            results["redis_used_memory_mib"] = round(store.r.info("memory")["used_memory"] / 2**20, 1)
        finally:
            runner.stop()
            server.stop()
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved["redis"] = results
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
