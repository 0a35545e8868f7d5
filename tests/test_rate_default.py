"""The default per-client rate limit never throttles one client queueing as fast as the server answers.

One client bulk-queueing a campaign over 8 connections (an upload and a /msg per
message, 1,200 requests) gets no 429 under the defaults: the limit is a safety net
against runaway loops, not a pace below what the server and the drain handle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from tests.gatewayproc import session_from

PAIRS, THREADS = 600, 8


def test_one_client_queueing_over_8_connections_as_fast_as_it_can_gets_no_429(make_gateway):
    runner = make_gateway("campaign")  # the default MULTIMSG_RATE_LIMIT / MULTIMSG_RATE_BURST
    statuses: Counter = Counter()
    lock = threading.Lock()
    todo = iter(range(PAIRS))

    def client() -> None:
        with session_from(None) as http:
            for n in todo:
                up = http.post(runner.url + "/data", files={"data": ("m.txt", f"campaign message {n}".encode())}, timeout=30)
                seen = [up.status_code]
                if up.status_code == 200:
                    seen.append(http.post(runner.url + "/msg", timeout=30,
                                          data={"id": up.text, "serv": "telegram", "dest": str(100_000 + n), "type": "text"}).status_code)
                with lock:
                    statuses.update(seen)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    seconds = time.monotonic() - started
    assert statuses[429] == 0, f"{statuses[429]} answers 429 at {sum(statuses.values()) / seconds:.0f} requests/s: {dict(statuses)}"
    assert statuses == {200: 2 * PAIRS}, dict(statuses)
