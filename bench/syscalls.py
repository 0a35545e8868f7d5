"""Benchmark 7: system calls per request on the embedded backend, counted by ``strace -c -f``.

A real runner (fsync on, rate limit off) gets ``--count`` uploads first; then
strace attaches to every process of the runner while ``--clients`` threads
send one ``POST /msg`` per upload (and, in a second traced loop, the uploads
themselves, ``POST /data``). Prints the calls per request by name (and how many
failed), and merges them into bench/results.json under ``syscalls`` and the
``--label`` given.

``--tree PATH`` runs another checkout's ``local_runner.py`` (an export of an
older commit, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.emulators import TelegramEmulator
from tests.gatewayproc import ROOT, Gateway, session_from

from .common import RESULTS, emulator_env, machine, process_tree

ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(?P<calls>\d+)\s+(?P<errors>\d+)?\s*(?P<name>\w+)\s*$")


def traced(runner: Gateway, out: Path, work) -> dict[str, dict[str, int]]:
    """``strace -c -f`` over every runner process while ``work()`` runs; {name: {calls, errors}}."""
    args = ["strace", "-c", "-f", "-o", str(out)]
    for pid in process_tree(runner.proc.pid):
        args += ["-p", str(pid)]
    tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached to every thread
    try:
        work()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    table = {}
    for line in out.read_text().splitlines():
        match = ROW.match(line)
        if match and match["name"] != "total":
            table[match["name"]] = {"calls": int(match["calls"]), "errors": int(match["errors"] or 0)}
    return table


def per_request(table: dict[str, dict[str, int]], requests: int) -> dict:
    rows = {name: round(row["calls"] / requests, 2) for name, row in sorted(table.items(), key=lambda kv: -kv[1]["calls"])}
    failed = {name: round(row["errors"] / requests, 2) for name, row in table.items() if row["errors"]}
    return {"total": round(sum(r["calls"] for r in table.values()) / requests, 1), "calls": rows, "failed": failed}


def parallel(clients: int, items: list, call) -> None:
    chunks = [items[i::clients] for i in range(clients)]

    def run(chunk):
        with session_from(None) as session:
            for item in chunk:
                call(session, item)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multimsg-syscalls-"))
    with TelegramEmulator().start() as emulator:
        env = {**emulator_env(emulator), "MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"}
        runner = Gateway(work / "home", env, root=args.tree).start(timeout=120)
        try:
            runner.send(b"warm-up", "telegram", "1")
            ids: list[str] = []

            def upload(session, n):
                answer = session.post(runner.url + "/data", files={"data": ("b.txt", b"x" * 1024)}, timeout=60)
                assert answer.status_code == 200, answer.text
                ids.append(answer.text)

            def queue(session, data_id):
                answer = session.post(runner.url + "/msg", timeout=60,
                                      data={"id": data_id, "serv": "telegram", "dest": "700000001", "type": "text"})
                assert answer.status_code == 200, answer.text

            data = traced(runner, work / "data.strace", lambda: parallel(args.clients, list(range(args.count)), upload))
            msg = traced(runner, work / "msg.strace", lambda: parallel(args.clients, list(ids), queue))
        finally:
            runner.stop()
    result = {"machine": machine(), "requests": args.count, "clients": args.clients,
              "/data": per_request(data, args.count), "/msg": per_request(msg, args.count)}
    print(json.dumps({args.label: result}, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("syscalls", {})[args.label] = result
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
