"""Benchmark 7: several accounts at once: 4 WhatsApp numbers and 2 Telegram bots drain one mixed backlog.

Each instance has its own emulator process (its own limit over any sliding second, answers
in 150 ms): ``wpp1``, ``wa2``, ``wa3``, ``wa4`` (kind whatsapp, 80/s each) and ``telegram``,
``tg2`` (kind telegram, 30/s each), configured by environment in one runner. The backlog
holds ``--seconds`` worth of each instance's limit, every message to its own recipient,
shuffled into one queue. Figures per instance: its rate while every instance was sending
(from the last first delivery to the first last delivery, all emulators' clocks being the
same monotonic clock), that rate against its own limit, the most the emulator accepted in any
sliding second and its rate-limit answers; and the CPU the runner used per message.

The runner drains from its own drain children (``MULTIMSG_DRAIN_WORKERS``,
``--drains``, one per core by default), each sending for its share of the
instances (``multimsg.queue.shares``), as a deployed runner does; ``--drains 1``
measures one drain process for every instance.

Goal (on 2 quiet cores): each instance at 90% or more of its own limit at the same time
(288 + 54 msg/s combined), no rate-limit answer.

Run: ``python -m bench.accounts [--seconds 20]``; prints a table, writes bench/results.json
(section ``accounts``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tests.emulators import TelegramEmulator, WhatsAppEmulator
from tests.redis_support import RedisServer

from .common import delivered_times, drained_by_children, emulator_env, machine, max_in_window, runner, save, seed_mixed

LATENCY = 0.15
INSTANCES = {  # serv -> (emulator, limit per second)
    "wpp1": (WhatsAppEmulator, 80), "wa2": (WhatsAppEmulator, 80), "wa3": (WhatsAppEmulator, 80), "wa4": (WhatsAppEmulator, 80),
    "telegram": (TelegramEmulator, 30), "tg2": (TelegramEmulator, 30),
}


def backlog(seconds: float) -> list[tuple[str, str]]:
    """``seconds`` worth of each instance's limit, one recipient each, shuffled (fixed seed)."""
    pairs = []
    for index, (serv, (emulator, limit)) in enumerate(INSTANCES.items()):
        base = 700_000_000 if emulator is TelegramEmulator else 5491100000000
        pairs += [(serv, str(base + index * 1_000_000 + n)) for n in range(int(limit * seconds))]
    random.Random(7).shuffle(pairs)
    return pairs


def shared_store(stack: ExitStack) -> dict[str, str]:
    """A real redis-server for this run (append-only file, fsync every second, as a deployment keeps it) and the settings naming it."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="multimsg-bench-redis-")))
    server = RedisServer(shutil.which("redis-server") or "redis-server", folder,
                         extra=("--appendonly", "yes", "--appendfsync", "everysec")).start()
    stack.callback(server.stop)
    return {"MULTIMSG_BACKEND": server.url + "/0",
            "MULTIMSG_KEY_SEAL": os.environ.get("MULTIMSG_KEY_SEAL") or "bXVsdGltc2cgYmVuY2g6IG5vdCBhIHNlY3JldCEhISE="}


def run(seconds: float, drains: int, backend: str = "embedded") -> dict:
    pairs = backlog(seconds)
    with ExitStack() as stack:
        emulators = {serv: stack.enter_context(cls(latency=LATENCY, rate=limit).start()) for serv, (cls, limit) in INSTANCES.items()}
        env = {key: value for serv, emulator in emulators.items() for key, value in emulator_env(emulator, serv).items()}
        if backend == "redis":
            env |= shared_store(stack)
        gateway = stack.enter_context(runner(env))
        gateway.stop()  # seed while no runner holds the folder, then start again, draining from its drain children
        seeded = seed_mixed(gateway.home, pairs, env=gateway.env)
        gateway.env.update({"MULTIMSG_WORKERS": "2", "MULTIMSG_DRAIN_WORKERS": str(drains), "MULTIMSG_DRAIN_INTERVAL": "0.2"})
        gateway.start(timeout=120)
        drained = drained_by_children(gateway, emulators.values(), seeded)
        times = {serv: delivered_times(emulator) for serv, emulator in emulators.items()}
        limited = {serv: emulator.stats()["rate_limited"] for serv, emulator in emulators.items()}
    together_from = max(t[0] for t in times.values())  # every instance sending from here...
    together_to = min(t[-1] for t in times.values())  # ...to here
    instances = {}
    for serv, (_, limit) in INSTANCES.items():
        inside = [t for t in times[serv] if together_from <= t <= together_to]
        rate = len(inside) / (together_to - together_from) if together_to > together_from else 0.0
        instances[serv] = {"kind": "telegram" if INSTANCES[serv][0] is TelegramEmulator else "whatsapp", "limit": limit,
                           "messages": len(times[serv]), "rate_together": round(rate, 2),
                           "percent_of_limit": round(100 * rate / limit, 1), "rate_limited": limited[serv],
                           "max_in_any_window": max_in_window(times[serv])}
    return {
        "machine": machine(), "backend": backend, "emulator_latency_s": LATENCY, "messages": seeded, "drain_processes": drains,
        "seconds": round(drained.seconds, 2), "rate": round((drained.messages or seeded) / drained.seconds, 2),
        "together_s": round(together_to - together_from, 2),
        "sending_s": round(max(t[-1] for t in times.values()) - min(t[0] for t in times.values()), 2),
        "rate_together": round(sum(i["rate_together"] for i in instances.values()), 2),
        "runner_cpu_ms_per_message": round(1000 * drained.cpu / (drained.messages or seeded), 2),
        "runner_cpu_share": round(drained.cpu / drained.seconds, 2),
        "instances": instances,
    }


def table(figures: dict) -> str:
    rows = ["| instance | kind | limit/s | messages | rate together (msg/s) | % of its limit | 429s | most in any 1 s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for serv, i in figures["instances"].items():
        rows.append(f"| {serv} | {i['kind']} | {i['limit']} | {i['messages']} | {i['rate_together']} | {i['percent_of_limit']} "
                    f"| {i['rate_limited']} | {i['max_in_any_window']} |")
    limit = sum(i["limit"] for i in figures["instances"].values())
    rows.append(f"| all | | {limit} | {figures['messages']} | {figures['rate_together']} | "
                f"{round(100 * figures['rate_together'] / limit, 1)} | {sum(i['rate_limited'] for i in figures['instances'].values())} | |")
    return "\n".join(rows) + (
        f"\n\nall sending together for {figures['together_s']} s of {figures['sending_s']} s from the first delivery to the last; "
        f"runner CPU {figures['runner_cpu_ms_per_message']} ms per message ({figures['runner_cpu_share']} cores busy), "
        f"{figures['drain_processes']} drain process(es)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accounts", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="the backlog holds this many seconds of each limit (default %(default)s)")
    parser.add_argument("--drains", type=int, default=os.cpu_count() or 1,
                        help="drain processes sharing the instances (MULTIMSG_DRAIN_WORKERS; default: one per core, %(default)s)")
    parser.add_argument("--backend", choices=("embedded", "redis"), default="embedded",
                        help="the embedded store (default) or a real redis-server started for the run")
    args = parser.parse_args(argv)
    figures = run(args.seconds, args.drains, args.backend)
    print(table(figures), flush=True)
    save("accounts" if args.backend == "embedded" else f"accounts_{args.backend}", figures)


if __name__ == "__main__":
    main()
