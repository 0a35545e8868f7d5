"""Benchmark 8: what encryption at rest costs on POST /data and on the drain of large media.

Two real runners side by side, each with its own data folder and the same
Telegram emulator: one from the ``main`` checkout named by ``--baseline``
(uploads kept in the clear, the code before encryption at rest), one from
this tree (uploads sealed, ``queue/sealed.py``). Requests alternate between
them, so the machine's load falls on both alike:

- ``/data`` of a 1 KB and of a ``--size`` (20 MB) upload, plain (no client encryption);
- a message with a ``--size`` document, from ``POST /msg`` to delivered by ``POST /drain``.

Also, in-process, the spool alone: ``FileSpool`` vs ``SealedSpool`` over it,
storing and then streaming back ``--size`` bytes (MB/s).

Run: ``python -m bench.at_rest [--baseline /work/main] [--size 20000000] [--rounds 5]``.
The figures are printed and merged into bench/results.json (section ``at_rest``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from pathlib import Path

from multimsg.layout import Layout
from multimsg.queue.backends.files import FileSpool
from multimsg.queue.sealed import SealedSpool
from multimsg.storage_keys import storage_keys
from tests import media
from tests.emulators import TelegramEmulator
from tests.gatewayproc import ROOT, Gateway

from .backlog import summarize
from .common import CLIENT, machine, save


def upload(runner: Gateway, content: bytes) -> str:
    return runner.upload_id(content, filename="bench.pdf")


def drain_one(runner: Gateway, data_id: str) -> float:
    message_id = runner.msg(id=data_id, serv="telegram", dest="9", type="document").text

    started = time.perf_counter()
    while runner.drain()["delivered"] < 1:
        pass
    seconds = time.perf_counter() - started
    assert runner.state(message_id)["state"] == "delivered"
    return seconds


def spool_alone(size: int, rounds: int) -> dict:
    content = os.urandom(size)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="multimsg-bench-spool-") as folder:
        plain = FileSpool(Layout(Path(folder) / "plain"), ttl=3600, fsync=False)
        key = base64.b64encode(os.urandom(32)).decode()
        sealed = SealedSpool(FileSpool(Layout(Path(folder) / "sealed"), ttl=3600, fsync=False),
                             storage_keys(key, Path(folder) / "k", Path(folder) / "sealed"))
        for name, spool in (("plain", plain), ("sealed", sealed)):
            writes, reads = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                info = spool.put(CLIENT, (content[i:i + (1 << 20)] for i in range(0, size, 1 << 20)), "bench.bin")
                writes.append(time.perf_counter() - started)
                started = time.perf_counter()
                with spool.content(CLIENT, info.data_id).open() as stream:
                    while stream.read(1 << 20):
                        pass
                reads.append(time.perf_counter() - started)
            figures[name] = {"write_mb_s": round(size / 1e6 / min(writes), 1), "read_mb_s": round(size / 1e6 / min(reads), 1)}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.at_rest", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=Path("/work/main"), help="a checkout without encryption at rest")
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict = {"machine": machine(), "size": args.size}
    big = media.pad(media.pdf("bench"), args.size)
    small = os.urandom(1000)
    with tempfile.TemporaryDirectory(prefix="multimsg-bench-at-rest-") as folder, \
            TelegramEmulator(latency=0.0, rate=0).start() as telegram:
        env = {"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_REPORT_GRACE": "3600",
               "MULTIMSG_TELEGRAM_TOKEN": telegram.token, "MULTIMSG_TELEGRAM_API_URL": telegram.url,
               "MULTIMSG_STORAGE_KEY_FILE": str(Path(folder) / "storage-keys")}
        runners = {"clear": Gateway(Path(folder) / "clear", env, root=args.baseline).start(timeout=120),
                   "sealed": Gateway(Path(folder) / "sealed", env, root=ROOT).start(timeout=120)}
        try:
            times: dict[str, dict[str, list[float]]] = {name: {"data_1kb": [], "data_big": [], "drain_big": []} for name in runners}
            for runner in runners.values():
                upload(runner, small)  # warm-up: imports, first-request caches
            for _ in range(args.rounds * 4):
                for name, runner in runners.items():
                    started = time.perf_counter()
                    upload(runner, small)
                    times[name]["data_1kb"].append(time.perf_counter() - started)
            for _ in range(args.rounds):
                for name, runner in runners.items():
                    started = time.perf_counter()
                    data_id = upload(runner, big)
                    times[name]["data_big"].append(time.perf_counter() - started)
                    times[name]["drain_big"].append(drain_one(runner, data_id))
            for name in runners:
                results[name] = {kind: summarize(values) for kind, values in times[name].items()}
                print(name, json.dumps(results[name]), flush=True)
        finally:
            for runner in runners.values():
                runner.stop()
    results["ratio_median"] = {kind: round(results["sealed"][kind]["median_ms"] / results["clear"][kind]["median_ms"], 2)
                               for kind in ("data_1kb", "data_big", "drain_big")}
    results["spool_alone"] = spool_alone(args.size, args.rounds)
    save("at_rest", results)
    print(json.dumps({"ratio_median": results["ratio_median"], "spool_alone": results["spool_alone"]}, indent=2))


if __name__ == "__main__":
    main()
