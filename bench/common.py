"""What the benchmarks share: a runner and an emulator on loopback, bulk seeding, figures, the results file.

The runner is the real ``local_runner.py`` (``tests.gatewayproc.Gateway``), the
platforms are the test emulators (``tests.emulators``), which enforce their
limits over any sliding window. Messages can be seeded straight into a data
folder through the store API (one write per shard), which is how the 100k
backlog is made in seconds instead of through 200k HTTP requests.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import Message
from multimsg.queue.backends.files import FileSpool
from multimsg.queue.backends.tiny import TinyStore
from tests.emulators import TelegramEmulator, WhatsAppEmulator
from tests.emulators.common import max_in_window
from tests.gatewayproc import Gateway

__all__ = ["RESULTS", "runner", "emulator_env", "seed", "seed_mixed", "drain_all", "drained_by_children",
           "tree_cpu", "Drained", "delivered_times", "worker_memory", "worker_cpu",
           "save", "machine", "max_in_window", "quantile", "process_tree"]

RESULTS = Path(__file__).resolve().parent / "results.json"
CLIENT = "mac:00:00:00:00:00:00"  # what a loopback client is (the seeded messages belong to it)


def emulator_env(emulator, serv: str | None = None) -> dict[str, str]:
    """The environment that points instance ``serv`` (default: the built-in one of the emulator's kind) at ``emulator``."""
    if isinstance(emulator, TelegramEmulator):
        kind, settings = "telegram", {"TOKEN": emulator.token, "API_URL": emulator.url}
    else:
        assert isinstance(emulator, WhatsAppEmulator)
        kind, settings = "whatsapp", {"TOKEN": emulator.token, "PHONE_NUMBER_ID": emulator.phone_id, "API_URL": emulator.url}
    builtin = "telegram" if kind == "telegram" else "wpp1"
    name = (serv or builtin).upper()
    env = {f"MULTIMSG_{name}_{key}": value for key, value in settings.items()}
    if name != builtin.upper():
        env[f"MULTIMSG_{name}_KIND"] = kind
    return env


@contextmanager
def runner(env: dict[str, str], home: Path | None = None) -> Iterator[Gateway]:
    """A real runner with its own data folder (a fresh temporary one unless ``home``)."""
    home = home or Path(tempfile.mkdtemp(prefix="multimsg-bench-")) / "home"
    base = {"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"}
    gateway = Gateway(home, {**base, **env}).start(timeout=120)
    try:
        yield gateway
    finally:
        gateway.stop()


def seed(home: Path, serv: str, dests: Iterable[str], *, text: bytes = b"benchmark message", due: bool = True) -> int:
    """Queue one message per ``dest`` straight into the data folder; returns how many."""
    return seed_mixed(home, ((serv, dest) for dest in dests), text=text, due=due)


def seed_mixed(home: Path, pairs: Iterable[tuple[str, str]], *, text: bytes = b"benchmark message", due: bool = True,
               env: dict[str, str] | None = None) -> int:
    """Queue one message per ``(serv, dest)`` straight into the data folder, in that order; returns how many.

    With ``env`` naming a shared store (``MULTIMSG_BACKEND``), into the store and spool the gateway builds from ``env``.
    """
    if env and env.get("MULTIMSG_BACKEND"):
        store, spool = _configured(home, env)
    else:
        layout = Layout(home)
        store, spool = TinyStore(layout, fsync=False), FileSpool(layout, ttl=30 * 24 * 3600.0, fsync=False)
    now = time.time()

    def messages():
        for n, (serv, dest) in enumerate(pairs):
            if n % 10_000 == 0:  # a file system allows some 65,000 links to one file
                data = spool.put(CLIENT, [text], "bench.txt")
            message = Message(id=new_id(), client=CLIENT, data_id=data.data_id, serv=serv, dest=dest, type="text",
                              filename="bench.txt", created_at=now, updated_at=now,
                              next_attempt_at=now if due else now + 30 * 24 * 3600.0)
            spool.attach(CLIENT, data.data_id, message.id)
            yield message

    added = store.add_many(messages())  # counted as it is added, like any enqueue
    # Written without fsync, for speed: flushed once here, as a gateway's own fsyncs would have. Left
    # dirty, the first fsyncs of the gateway measured next waited for all of it (a /msg p99 near 200 ms).
    os.sync()
    return added


def _configured(home: Path, env: dict[str, str]):
    """The store and spool a gateway with ``env`` and data folder ``home`` uses (``gateway._backend``)."""
    from multimsg.config import settings
    from multimsg.gateway import _backend

    saved = dict(os.environ)
    os.environ.update({**env, "MULTIMSG_HOME": str(home)})
    settings.cache_clear()
    try:
        store, spool, _ = _backend(settings(), Layout(home))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        settings.cache_clear()
    return store, spool


@dataclass
class Drained:
    """A backlog drained by ``drain_all``: how long it took, the runner's CPU seconds, the passes' summaries."""

    seconds: float
    cpu: float
    passes: list[dict]
    messages: int | None = None  # delivered within ``seconds`` (and ``cpu``), when not the whole backlog


def drain_all(gateway: Gateway, seeded: int) -> Drained:
    """``POST /drain`` until ``seeded`` messages were delivered (one pass drains it all, except what a destination's limit defers)."""
    started, cpu = time.monotonic(), worker_cpu(gateway)
    passes, delivered = [], 0
    while delivered < seeded:
        summary = gateway.drain()
        passes.append(summary)
        delivered += summary["delivered"]
        if not summary["claimed"]:
            time.sleep(0.2)
    return Drained(time.monotonic() - started, worker_cpu(gateway) - cpu, passes)


def drained_by_children(gateway: Gateway, emulators: Iterable, seeded: int, timeout: float = 600.0) -> Drained:
    """Wait until the runner's drain children (``MULTIMSG_DRAIN_INTERVAL`` > 0) have delivered ``seeded`` messages to ``emulators``.

    The time runs from the call (made right after the runner started) to the
    last acceptance (the emulators' own clock); the CPU is the whole runner's
    (every process of its tree) over the same span, and ``messages`` those
    delivered within it (the drain children start sending before the runner
    answers its first health check). The emulators are asked every half second: a
    stats answer goes through every request received, and asking six of them
    ten times a second took CPU from the runner being measured.
    """
    emulators = list(emulators)
    started, cpu = time.monotonic(), tree_cpu(gateway.proc.pid)
    before = sum(emulator.stats()["accepted"] for emulator in emulators)
    while sum(emulator.stats()["accepted"] for emulator in emulators) < seeded:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the backlog was not drained within {timeout:g} s")
        time.sleep(0.5)
    spent = tree_cpu(gateway.proc.pid) - cpu
    last = max(emulator.stats()["last_t"] or 0.0 for emulator in emulators)
    return Drained(last - started, spent, [], seeded - before)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every process below it."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def delivered_times(emulator) -> list[float]:
    """When the emulator accepted each message it delivered (time.monotonic, system-wide on Linux), in order."""
    return sorted(r["t"] for r in emulator.received() if r["outcome"] == "delivered")


def worker_memory(gateway: Gateway) -> dict[str, int]:
    """VmHWM (peak) and VmRSS of the runner's gunicorn worker, in KiB."""
    children = subprocess.run(["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True).stdout.split()
    pid = children[0] if children else str(gateway.proc.pid)
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            figures[key] = int(value.split()[0])
    return figures


def worker_cpu(gateway: Gateway) -> float:
    """CPU seconds (user + system) the runner's gunicorn worker has used so far."""
    children = subprocess.run(["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True).stdout.split()
    pid = children[0] if children else str(gateway.proc.pid)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (all threads' children), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_at_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(section: str, figures: dict) -> None:
    """Merge ``figures`` into results.json under ``section``."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[section] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
