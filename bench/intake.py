"""Benchmark 4: intake throughput, ``POST /data`` and ``POST /msg`` from concurrent clients.

``--clients`` threads, each with its own keep-alive connection, send
upload-then-queue pairs for ``--seconds`` seconds against a real runner
(rate limit off, fsync on). Prints requests per second and p50/p99 latency per
endpoint and merges them into bench/results.json under ``intake`` and the
``--label`` given (one label per server arrangement).

``--tree PATH`` runs the ``local_runner.py`` of another checkout (an exported
older commit, for the before/after comparison):

    git archive c65e90e | tar -x -C /tmp/multimsg-before
    python3 -m bench.intake --tree /tmp/multimsg-before --label gunicorn-gthread
    python3 -m bench.intake --label waitress
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from tests.emulators import TelegramEmulator
from tests.gatewayproc import ROOT, Gateway, session_from

from .common import RESULTS, emulator_env, machine, quantile


def client(runner: Gateway, seconds: float, timings: dict[str, list[float]], errors: list[str], barrier: threading.Barrier) -> None:
    session = session_from(None)
    barrier.wait(30)
    until, n = time.monotonic() + seconds, 0
    while time.monotonic() < until and n < 100_000:
        n += 1
        started = time.perf_counter()
        upload = session.post(runner.url + "/data", files={"data": ("b.txt", b"benchmark message %d" % n)}, timeout=30)
        middle = time.perf_counter()
        if upload.status_code != 200:
            errors.append(f"/data {upload.status_code} {upload.text[:80]}")
            continue
        queued = session.post(runner.url + "/msg", timeout=30,
                              data={"id": upload.text, "serv": "telegram", "dest": str(700_000_000 + n), "type": "text"})
        ended = time.perf_counter()
        if queued.status_code != 200:
            errors.append(f"/msg {queued.status_code} {queued.text[:80]}")
            continue
        timings["/data"].append(middle - started)
        timings["/msg"].append(ended - middle)
    session.close()


def figures(latencies: list[float], seconds: float) -> dict:
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * quantile(latencies, 0.50), 2),
        "p99_ms": round(1000 * quantile(latencies, 0.99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose local_runner.py runs (default: this one)")
    parser.add_argument("--label", required=True, help="the key these figures go under in results.json's 'intake'")
    args = parser.parse_args()

    with TelegramEmulator().start() as emulator:
        home = Path(tempfile.mkdtemp(prefix="multimsg-bench-")) / "home"
        env = {**emulator_env(emulator), "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"}
        runner = Gateway(home, env, root=args.tree).start(timeout=120)
        try:
            runner.send(b"warm-up", "telegram", "1")
            timings: dict[str, list[float]] = {"/data": [], "/msg": []}
            errors: list[str] = []
            barrier = threading.Barrier(args.clients + 1)
            threads = [threading.Thread(target=client, args=(runner, args.seconds, timings, errors, barrier), daemon=True)
                       for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            barrier.wait(30)
            started = time.monotonic()
            for thread in threads:
                thread.join(args.seconds + 120)
            seconds = time.monotonic() - started
        finally:
            runner.stop()

    result = {
        "machine": machine(),
        "clients": args.clients,
        "seconds": round(seconds, 1),
        "errors": len(errors),
        "/data": figures(timings["/data"], seconds),
        "/msg": figures(timings["/msg"], seconds),
    }
    print(json.dumps({args.label: result}, indent=2))
    if errors:
        print("first errors:", errors[:5])
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("intake", {})[args.label] = result
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
