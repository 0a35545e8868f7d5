"""Benchmark: the CPU one platform request costs the drain, through ``ServiceBase.post``.

A Telegram service instance posts ``sendMessage`` to a local Telegram emulator
(``tests.emulators.TelegramEmulator``, no latency, no rate limit) ``--count``
times, one request after the other, and the CPU of this process
(``time.process_time``: the emulator runs in its own process) per ``post`` is
printed, classification of the answer included. Two bodies: the form fields
Telegram's text messages send (``data=``) and a JSON body (``json=``, the
shape of WhatsApp's ``/messages`` and most other services). Each is sent
through three clients, in alternating rounds (the best round counts):

- ``requests_session``: a plain ``requests.Session`` with the services' pool,
  what every service used before (the environment's proxies, CA bundle and
  netrc read on every request);
- ``platform_session``: ``multimsg.services.base.PlatformSession``, what the
  services use now (the environment read once per host);
- ``urllib3_bare``: a bare ``urllib3.PoolManager`` POST of the same body, no
  classification, no proxies, no redirects: the floor of anything built on
  urllib3 and http.client, for reference.

The emulator closes every connection after its answer, so each request here
also pays a TCP connect that a platform's keep-alive spares. The environment
is this process's: requests' per-request proxy lookup walks all of
``os.environ``, so a bigger environment widens the gap. Figures are merged
into bench/results.json under ``service_request``.

Run: ``python3 -m bench.service_request [--count 2000] [--rounds 3]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import requests
import urllib3

from multimsg.config import ServiceConfig
from multimsg.services.base import POOL_SIZE, PlatformSession
from multimsg.services.telegram import Telegram
from tests.emulators import TelegramEmulator

from .common import machine, save

BODIES = ("form", "json")


def telegram(emulator: TelegramEmulator, session: requests.Session) -> Telegram:
    """A Telegram instance on ``session`` (ServiceBase mounts its pooled adapter on it)."""
    config = ServiceConfig(name="telegram", values={"token": emulator.token, "api_url": emulator.url})
    return Telegram(config, session=session)


def service_post(service: Telegram, body: str) -> Callable[[int], None]:
    url = service._url("sendMessage")

    def post(i: int) -> None:
        fields = {"chat_id": str(1000 + i), "text": f"message {i}"}
        outcome = service.post(url, service.classify, **{"data" if body == "form" else "json": fields})
        assert outcome.kind == "delivered", outcome
    return post


def bare_post(emulator: TelegramEmulator, body: str) -> Callable[[int], None]:
    pool = urllib3.PoolManager(num_pools=4, maxsize=POOL_SIZE)
    url = f"{emulator.url}/bot{emulator.token}/sendMessage"
    timeout = urllib3.Timeout(connect=5.0, read=30.0)

    def post(i: int) -> None:
        fields = {"chat_id": str(1000 + i), "text": f"message {i}"}
        if body == "form":
            response = pool.request("POST", url, fields=fields, encode_multipart=False, timeout=timeout, redirect=False)
        else:
            response = pool.request("POST", url, json=fields, timeout=timeout, redirect=False)
        assert response.status == 200, response.status
    return post


def cpu_ms(post: Callable[[int], None], count: int) -> float:
    for i in range(20):  # connections, caches
        post(i)
    started = time.process_time()
    for i in range(count):
        post(i)
    return 1000 * (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with TelegramEmulator(rate=0, chat_rate=0).start() as emulator:
        clients = {}
        for body in BODIES:
            clients[f"requests_session/{body}"] = service_post(telegram(emulator, requests.Session()), body)
            clients[f"platform_session/{body}"] = service_post(telegram(emulator, PlatformSession()), body)
            clients[f"urllib3_bare/{body}"] = bare_post(emulator, body)
        rounds: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, post in clients.items():
                rounds[name].append(cpu_ms(post, args.count))
    best = {name: round(min(values), 3) for name, values in rounds.items()}
    saved = {body: round(100 * (1 - best[f"platform_session/{body}"] / best[f"requests_session/{body}"]), 1) for body in BODIES}
    result = {"machine": machine(), "count": args.count, "environment_variables": len(os.environ),
              "cpu_ms_per_post": best, "percent_saved": saved, "rounds": {k: [round(x, 3) for x in v] for k, v in rounds.items()}}
    print(json.dumps(result, indent=2))
    save("service_request", result)


if __name__ == "__main__":
    main()
