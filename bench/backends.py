"""Benchmark 5b: /msg throughput on the embedded backend and on Redis, from concurrent clients.

``--clients`` threads, each with its own keep-alive connection, send
upload-then-queue pairs for ``--seconds`` seconds against a real runner (rate
limit off, fsync on), once on the embedded backend and once on a real
redis-server for each append-only fsync policy (``appendfsync everysec`` and
``always``: what a 200 means under each is in the README). Prints a table and
keeps it in bench/results.json under ``intake_backends``:

    python3 -m bench.backends
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


def measure(env: dict[str, str], clients: int, seconds: float, tree: Path = ROOT) -> dict:
    """Run the clients against a fresh runner with ``env`` (plus an emulator and no rate limit); the figures."""
    with TelegramEmulator().start() as emulator:
        home = Path(tempfile.mkdtemp(prefix="multimsg-bench-")) / "home"
        env = {**emulator_env(emulator), "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0", **env}
        runner = Gateway(home, env, root=tree).start(timeout=120)
        try:
            runner.send(b"warm-up", "telegram", "1")
            timings: dict[str, list[float]] = {"/data": [], "/msg": []}
            errors: list[str] = []
            barrier = threading.Barrier(clients + 1)
            threads = [threading.Thread(target=client, args=(runner, seconds, timings, errors, barrier), daemon=True)
                       for _ in range(clients)]
            for thread in threads:
                thread.start()
            barrier.wait(30)
            started = time.monotonic()
            for thread in threads:
                thread.join(seconds + 120)
            elapsed = time.monotonic() - started
        finally:
            runner.stop()
    if errors:
        print("first errors:", errors[:5])
    return {
        "machine": machine(),
        "clients": clients,
        "seconds": round(elapsed, 1),
        "errors": len(errors),
        "/data": figures(timings["/data"], elapsed),
        "/msg": figures(timings["/msg"], elapsed),
    }


# --backends: the same clients on each backend; Redis with each append-only fsync policy (what a 200 means: README)
BACKENDS = {
    "embedded": (),
    "redis appendfsync everysec": ("--appendonly", "yes", "--appendfsync", "everysec"),
    "redis appendfsync always": ("--appendonly", "yes", "--appendfsync", "always"),
}


def compare_backends(clients: int, seconds: float) -> dict:
    import shutil

    from tests.redis_support import RedisServer

    results = {}
    for label, redis_args in BACKENDS.items():
        if not redis_args:
            results[label] = measure({}, clients, seconds)  # TinyDB + spool folder, MULTIMSG_FSYNC on
            continue
        with tempfile.TemporaryDirectory(prefix="multimsg-bench-redis-") as folder:
            server = RedisServer(shutil.which("redis-server") or "redis-server", Path(folder), extra=redis_args).start()
            try:
                results[label] = measure({"MULTIMSG_BACKEND": server.url + "/0", "MULTIMSG_KEY_SEAL": SEAL}, clients, seconds)
            finally:
                server.stop()
    print(f"\n/data + /msg pairs from {clients} clients for {seconds:g} s each\n")
    print("| backend | /msg per s | /msg p50 ms | /msg p99 ms | /data per s | /data p50 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, r in results.items():
        m, d = r["/msg"], r["/data"]
        print(f"| {label} | {m['requests_per_s']} | {m['p50_ms']} | {m['p99_ms']} | {d['requests_per_s']} | {d['p50_ms']} | {r['errors']} |")
    return results


SEAL = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # a throwaway MULTIMSG_KEY_SEAL (32 bytes, base64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["intake_backends"] = compare_backends(args.clients, args.seconds)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
