"""Nothing accepted is lost, and nothing is sent twice but what was in flight at a crash.

- ``kill -9`` of the runner in the middle of a large drain, then a restart:
  every message is delivered at least once, and the duplicates are at most
  the sends that were in flight (the pool size).
- Clients keep enqueueing while drains run in two runner processes on one
  data folder (their timers, plus ``POST /drain`` to both): no duplicates,
  nothing lost, and the passes that found another one running said ``busy``.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

IN_FLIGHT = 4  # MULTIMSG_WPP1_CONCURRENCY of the crash test: at most this many sends at once


def texts_delivered(emulator) -> collections.Counter:
    return collections.Counter(r["json"]["text"]["body"] if r.get("json") else r["fields"]["text"] for r in emulator.received(ok_only=True))


def enqueue(gateway, serv: str, items: list[tuple[str, str]], threads: int = 4) -> list[str]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda item: gateway.send(item[0].encode(), serv, item[1]), items))


def test_kill_9_mid_drain_then_restart_delivers_everything_with_at_most_the_in_flight_duplicated(make_gateway, whatsapp):
    whatsapp.configure(latency=0.05)
    # The dead pass's leases lapse after MULTIMSG_LEASE; then the restarted runner takes them back.
    env = {"MULTIMSG_WPP1_CONCURRENCY": str(IN_FLIGHT), "MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_LEASE": "3"}
    gateway = make_gateway(env=env)
    texts = [f"crash test {n}" for n in range(120)]
    ids = enqueue(gateway, "wpp1", [(text, str(5491190000000 + n)) for n, text in enumerate(texts)])

    def drain_until_killed():
        try:
            gateway.drain()
        except (requests.ConnectionError, AssertionError):
            pass  # killed mid-pass

    background = threading.Thread(target=drain_until_killed, daemon=True)
    background.start()
    whatsapp.wait_for(count=30, timeout=30)
    gateway.kill9()
    background.join(10)
    sent_before = len(whatsapp.received())
    assert sent_before < len(texts), "the drain finished before the kill: nothing was tested"

    restarted = make_gateway(home=gateway.home, env=env)
    deadline = time.monotonic() + 60
    while sum(1 for n in texts_delivered(whatsapp).values()) < len(texts):
        restarted.drain()
        assert time.monotonic() < deadline, f"{len(texts_delivered(whatsapp))} of {len(texts)} delivered"
    delivered = texts_delivered(whatsapp)
    assert set(delivered) == set(texts)  # at least once each
    duplicates = sum(count - 1 for count in delivered.values())
    assert duplicates <= IN_FLIGHT, delivered.most_common(IN_FLIGHT + 1)
    with ThreadPoolExecutor(8) as pool:
        states = collections.Counter(pool.map(lambda mid: restarted.cons(mid).text, ids))
    assert states == {"delivered": len(ids)}


@pytest.mark.parametrize("lock", ["on", "off"])
def test_drains_in_two_runners_while_clients_enqueue_send_each_message_exactly_once(make_gateway, telegram, lock):
    # "off": nothing but the leases keeps the two runners' passes apart; they overlap all the time.
    telegram.configure(latency=0.1)
    env = {"MULTIMSG_DRAIN_INTERVAL": "0.2", "MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0",
           "MULTIMSG_DRAIN_LOCK": lock}
    first = make_gateway(env=env)
    second = make_gateway(home=first.home, env=env)  # two timers and two /drain on one data folder

    summaries: list[dict] = []
    stop = threading.Event()
    telegram.script("timeout", dest="820999999", seconds=1.5)  # one slow answer: one pass lasts 1.5 s
    slow = first.send(b"a slow one", "telegram", "820999999")

    def operator(runner):  # POST /drain, over and over, to each runner, while their timers run too
        while not stop.is_set():
            summaries.append(runner.drain())

    def client(n: int) -> list[str]:
        runner = (first, second)[n % 2]
        return [runner.send(f"client {n} message {m}".encode(), "telegram", str(820_000_000 + 100 * n + m)) for m in range(25)]

    drains = [threading.Thread(target=operator, args=(runner,)) for runner in (first, second)]
    for thread in drains:
        thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            ids = [slow] + [mid for batch in pool.map(client, range(4)) for mid in batch]
        expected = {"a slow one"} | {f"client {n} message {m}" for n in range(4) for m in range(25)}
        deadline = time.monotonic() + 60
        while set(texts_delivered(telegram)) != expected:
            assert time.monotonic() < deadline, f"{len(texts_delivered(telegram))} of {len(expected)} delivered"
            time.sleep(0.1)
        time.sleep(0.5)  # a few more passes, which must not send anything again
    finally:
        stop.set()
        for thread in drains:
            thread.join(30)

    delivered = texts_delivered(telegram)
    assert set(delivered) == expected and max(delivered.values()) == 1, delivered.most_common(3)
    if lock == "on":
        assert len(telegram.received()) == len(expected)
    else:  # pacing is per process: two passes together may be told "too fast"; those are retried, never sent twice
        refused = [r for r in telegram.received() if r.get("error")]
        assert len(telegram.received()) == len(expected) + len(refused), [r["error"] for r in refused]
    if lock == "on":
        assert any(s["busy"] for s in summaries)  # passes met, and the later one stood back
    else:
        assert not any(s["busy"] for s in summaries)  # no pass stood back: they ran together
    with ThreadPoolExecutor(8) as pool:
        states = collections.Counter(pool.map(lambda mid: first.cons(mid).text, ids))
    assert states == {"delivered": len(ids)}
