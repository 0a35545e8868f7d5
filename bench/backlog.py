"""Benchmarks 2 and 3: an idle drain pass and the enqueue cost, empty and with 100k queued; the runner's memory.

- Idle pass: ``POST /drain`` when nothing is due, into an empty data folder
  and into one holding 100k queued messages none of which is due yet (their
  retry is later): with the due index, the second costs about the first.

- Enqueue cost: ``/data`` + ``/msg`` pairs from one client, one after the
  other, first into an empty data folder, then into one holding 100k queued
  messages (seeded through the store API, one write per shard). The second
  must stay within 1.5x the first.
- Memory: VmHWM (peak resident set) of the runner's gunicorn worker, from
  /proc: idle with 100k queued, after the enqueue requests, and during a drain
  pass over the 100k (emulator without latency or limit, service pacing off,
  run for ``--drain-seconds``; the pass holds at most MULTIMSG_DRAIN_WINDOW
  messages at once, so its peak does not grow with the backlog). Meanwhile a
  client keeps enqueueing: those pairs are timed too (the pass holds no lock
  while it sends; it shares the CPU).

Run: ``python -m bench.backlog [--backlog 100000] [--pairs 300] [--drain-seconds 60] [--due 20000]``.
The figures are printed and written to bench/results.json (section ``backlog``).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from tests.emulators import WhatsAppEmulator

from .common import emulator_env, machine, quantile, runner, save, seed, worker_cpu, worker_memory


def enqueue_pairs(gateway, count: int) -> list[float]:
    """Seconds per /data + /msg pair, ``count`` of them one after the other (after a few warm-up pairs)."""
    for n in range(5):
        gateway.send(b"warm-up", "wpp1", str(5491000000000 + n))
    times = []
    for n in range(count):
        started = time.perf_counter()
        gateway.send(f"enqueue benchmark {n}".encode(), "wpp1", str(5491200000000 + n))
        times.append(time.perf_counter() - started)
    return times


def idle_passes(gateway, count: int = 30) -> dict:
    """Milliseconds per POST /drain that finds nothing due."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        summary = gateway.drain()
        times.append(time.perf_counter() - started)
        assert summary["claimed"] == 0, summary
    return {"passes": count, "median_ms": round(1000 * statistics.median(times), 2), "p90_ms": round(1000 * quantile(times, 0.9), 2)}


def summarize(times: list[float]) -> dict:
    return {"pairs": len(times), "median_ms": round(1000 * statistics.median(times), 2),
            "mean_ms": round(1000 * statistics.fmean(times), 2), "p90_ms": round(1000 * quantile(times, 0.9), 2),
            "p99_ms": round(1000 * quantile(times, 0.99), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--drain-seconds", type=float, default=60.0)
    parser.add_argument("--due", type=int, default=20_000, help="messages made due for the drain-over-a-backlog part")
    args = parser.parse_args(argv)
    results: dict = {"machine": machine(), "backlog": args.backlog}

    with WhatsAppEmulator(latency=0.0, rate=0).start() as emulator:
        env = {**emulator_env(emulator), "MULTIMSG_WPP1_RATE": "0", "MULTIMSG_WPP1_DEST_INTERVAL": "0"}

        with runner(env) as empty:
            results["idle_pass_empty"] = idle_passes(empty)
            print("idle drain pass, empty store:", results["idle_pass_empty"], flush=True)
            results["memory_idle_empty_kib"] = worker_memory(empty)["VmHWM"]
            results["enqueue_empty"] = summarize(enqueue_pairs(empty, args.pairs))
            print("enqueue, empty store:", results["enqueue_empty"], flush=True)

        with runner(env) as full:
            full.stop()
            started = time.monotonic()
            seeded = seed(full.home, "wpp1", (str(5490000000000 + n) for n in range(args.backlog)), due=False)
            results["seed_seconds"] = round(time.monotonic() - started, 1)
            print(f"seeded {seeded} queued messages (none due yet) in {results['seed_seconds']} s", flush=True)
            full.start(timeout=120)
            results["idle_pass_backlog"] = idle_passes(full)
            results["idle_pass_ratio"] = round(results["idle_pass_backlog"]["median_ms"] / results["idle_pass_empty"]["median_ms"], 2)
            print(f"idle drain pass, {seeded} queued:", results["idle_pass_backlog"], "ratio", results["idle_pass_ratio"], flush=True)
            results["memory_idle_backlog_kib"] = worker_memory(full)["VmHWM"]
            results["enqueue_backlog"] = summarize(enqueue_pairs(full, args.pairs))
            print(f"enqueue, {seeded} queued:", results["enqueue_backlog"], flush=True)
            results["enqueue_ratio"] = round(results["enqueue_backlog"]["median_ms"] / results["enqueue_empty"]["median_ms"], 2)
            results["memory_after_enqueue_kib"] = worker_memory(full)["VmHWM"]

            # A drain pass over a due backlog, watched for --drain-seconds (then the runner is stopped).
            full.stop()
            seed(full.home, "wpp1", (str(5492000000000 + n) for n in range(args.due)))
            full.start(timeout=120)
            cpu = worker_cpu(full)
            drainer = threading.Thread(target=lambda: _drain_quietly(full), daemon=True)
            drainer.start()
            samples, during, started = [], [], time.monotonic()
            while time.monotonic() - started < args.drain_seconds and drainer.is_alive():
                sampled = time.monotonic()
                while time.monotonic() - sampled < 1.0:  # enqueueing goes on while the pass sends
                    pair = time.perf_counter()
                    full.send(b"enqueued during the drain", "wpp1", str(5491300000000 + len(during)))
                    during.append(time.perf_counter() - pair)
                samples.append(worker_memory(full))
            seconds = time.monotonic() - started
            sent = emulator.stats()["accepted"]
            results["drain"] = {
                "seconds_watched": round(seconds, 1),
                "sent": sent,
                "rate": round(sent / seconds, 1),
                "runner_cpu_ms_per_message": round(1000 * (worker_cpu(full) - cpu) / max(1, sent), 2),
                "finished": not drainer.is_alive(),
            }
            results["enqueue_during_drain"] = summarize(during)
            results["memory_during_drain_kib"] = max(s["VmHWM"] for s in samples)
            results["memory_rss_last_kib"] = samples[-1]["VmRSS"]
            print("drain over the backlog:", results["drain"], flush=True)
            print("enqueue during that drain:", results["enqueue_during_drain"], flush=True)
    for key in ("memory_idle_empty_kib", "memory_idle_backlog_kib", "memory_after_enqueue_kib", "memory_during_drain_kib"):
        print(f"{key}: {results[key] / 1024:.1f} MiB")
    print(f"enqueue ratio (100k / empty, medians): {results['enqueue_ratio']}")
    print(f"idle pass ratio (100k / empty, medians): {results['idle_pass_ratio']}")
    save("backlog", results)


def _drain_quietly(gateway) -> None:
    try:
        gateway.drain()
    except Exception:
        pass  # the runner is stopped under it at the end


if __name__ == "__main__":
    main()
