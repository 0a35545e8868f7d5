"""Benchmark 1: how fast a backlog drains, against emulators that enforce the platforms' limits.

Scenarios (each backlog message to its own recipient unless said otherwise):

- ``wpp1``: WhatsApp, emulator answering in 150 ms and allowing 80 messages in
  any sliding second; goal 72/s or more, no rate-limit answer.
- ``telegram``: Telegram, 30 per sliding second bot-wide (same latency); goal 27/s or more.
- ``wpp1-naive`` / ``telegram-naive``: the same with one send at a time
  (``MULTIMSG_<SERV>_CONCURRENCY=1``), the seed's design, for comparison.
- ``telegram-chat``: one private chat (limit 1 per sliding second).
- ``telegram-group``: one group (limit 20 per sliding minute).

Run: ``python -m bench.throughput [--count 2000] [--only wpp1,telegram,...]``.
The figures are printed and written to bench/results.json (section ``throughput``).
"""

from __future__ import annotations

import argparse

from tests.emulators import TelegramEmulator, WhatsAppEmulator

from .common import delivered_times, drain_all, emulator_env, machine, max_in_window, runner, save, seed

LATENCY = 0.15


def scenarios(count: int) -> dict[str, dict]:
    many_numbers = [str(5491100000000 + n) for n in range(count)]
    many_chats = [str(700_000_000 + n) for n in range(count)]
    return {
        "wpp1": dict(emulator=WhatsAppEmulator, options={"rate": 80}, serv="wpp1", dests=many_numbers, limit=80, env={}),
        "telegram": dict(emulator=TelegramEmulator, options={"rate": 30}, serv="telegram", dests=many_chats, limit=30, env={}),
        "wpp1-naive": dict(emulator=WhatsAppEmulator, options={"rate": 80}, serv="wpp1", dests=many_numbers[:150], limit=80,
                           env={"MULTIMSG_WPP1_CONCURRENCY": "1"}),
        "telegram-naive": dict(emulator=TelegramEmulator, options={"rate": 30}, serv="telegram", dests=many_chats[:150], limit=30,
                               env={"MULTIMSG_TELEGRAM_CONCURRENCY": "1"}),
        "telegram-chat": dict(emulator=TelegramEmulator, options={}, serv="telegram", dests=["123456789"] * 15, limit=1, env={}),
        "telegram-group": dict(emulator=TelegramEmulator, options={}, serv="telegram", dests=["-1001234567890"] * 30,
                               limit=20, window=60.0, env={}),
    }


def run(name: str, spec: dict) -> dict:
    with spec["emulator"](latency=LATENCY, **spec["options"]).start() as emulator:
        with runner({**emulator_env(emulator), **spec["env"]}) as gateway:
            gateway.stop()  # seed while no runner holds the folder, then start again
            seeded = seed(gateway.home, spec["serv"], spec["dests"])
            gateway.start(timeout=120)
            drained = drain_all(gateway, seeded)
            seconds, cpu, passes = drained.seconds, drained.cpu, drained.passes
            stats = emulator.stats()
            times = delivered_times(emulator)
    window = spec.get("window", 1.0)
    figures = {
        "messages": seeded,
        "limit": spec["limit"],
        "limit_window_s": window,
        "seconds": round(seconds, 2),
        "rate": round(seeded / seconds, 2),
        "rate_first_to_last": round((len(times) - 1) / (times[-1] - times[0]), 2) if len(times) > 1 else None,
        "rate_limited": stats["rate_limited"],
        "max_in_any_window": max_in_window(times, window),
        "passes": len(passes),
        "runner_cpu_ms_per_message": round(1000 * cpu / seeded, 2),
        "retried": sum(p["retried"] for p in passes),
    }
    if window == 1.0 and spec["limit"] > 1:
        figures["percent_of_limit"] = round(100 * figures["rate"] / spec["limit"], 1)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="backlog size for wpp1 and telegram (default %(default)s)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args(argv)
    chosen = scenarios(args.count)
    if args.only:
        chosen = {name: chosen[name] for name in args.only.split(",")}
    results = {"machine": machine(), "emulator_latency_s": LATENCY}
    for name, spec in chosen.items():
        figures = run(name, spec)
        results[name] = figures
        print(f"{name:15} {figures}", flush=True)
    save("throughput" if not args.only else f"throughput-{args.only}", results)


if __name__ == "__main__":
    main()
