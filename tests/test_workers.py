"""The local runner with several worker processes (``MULTIMSG_WORKERS``), as a real process tree.

Two workers answer on one port (each answer names its process in
``X-Multimsg-Worker``), and connections opened at once are spread over them; the drain runs in children of its own (one, or one per
share of the service instances), so N messages are sent N times, not more; a worker killed with SIGKILL is replaced; a
client's rate limit is one count for all the workers; SIGTERM to the parent
stops every child, and a parent killed with SIGKILL takes its children with
it. ``MULTIMSG_WORKERS=1`` is one process, as before.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from multimsg.functions.app import WORKER_HEADER
from tests.gatewayproc import Gateway
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 20.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def fresh(url: str, method: str = "GET", **kwargs) -> requests.Response:
    """One request on a connection of its own (the kernel picks the worker that accepts it)."""
    return requests.request(method, url, headers={"Connection": "close"}, timeout=30, **kwargs)


def workers_seen(url: str, want: int = 2, timeout: float = 30.0) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < want and time.monotonic() < deadline:
            for answer in pool.map(lambda _: fresh(url + "/key"), range(16)):
                assert answer.status_code == 200
                seen.add(int(answer.headers[WORKER_HEADER]))
    return seen


@pytest.fixture
def runner(make_gateway):
    def start(**env: str) -> Gateway:
        return make_gateway("workers", env={"MULTIMSG_WORKERS": "2", "MULTIMSG_DRAIN_WORKERS": "2", **env})

    return start


@pytest.fixture(params=["embedded", "redis"])
def backend(request) -> dict[str, str]:
    return {} if request.param == "embedded" else {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url")}


def test_two_workers_answer_on_one_port_from_two_processes(runner):
    gw = runner()
    seen = workers_seen(gw.url)
    assert len(seen) == 2, seen
    assert seen <= children(gw.proc.pid)  # the parent's own children, not the parent
    assert len(children(gw.proc.pid)) == 2  # no drain child: MULTIMSG_DRAIN_INTERVAL=0 in tests


def test_keep_alive_connections_opened_at_once_are_spread_over_the_workers(runner):
    """A burst of connections (wrk, a pool) is shared out, not all taken by the worker that wakes first."""
    gw = runner()
    workers_seen(gw.url)  # both workers are up
    for _ in range(3):
        start = threading.Barrier(8)
        sessions = [requests.Session() for _ in range(8)]

        def first(session: requests.Session, start: threading.Barrier = start) -> int:
            start.wait()
            return int(session.get(gw.url + "/key", timeout=30).headers[WORKER_HEADER])

        with ThreadPoolExecutor(8) as pool:
            holders = collections.Counter(pool.map(first, sessions))
        for session in sessions:  # later requests stay on their connection's worker
            assert int(session.get(gw.url + "/key", timeout=30).headers[WORKER_HEADER]) in holders
            session.close()
        assert len(holders) == 2 and min(holders.values()) >= 3, holders


def test_a_worker_that_stopped_accepting_is_woken_when_the_other_takes_more(runner):
    """The worker holding more connections leaves new ones to the other, and must not sleep on them.

    An idle keep-alive connection on one worker makes it leave the listening
    socket to the other. A burst then fills the other past it: the first worker
    must take its share at once. Before the wake-up, it slept in its event loop
    until that loop's one-second timeout, and the burst's connections waited in
    the kernel's queue for it. The lost wake-up is visible only as that wait,
    so this bounds the first answers at half that timeout, well above a
    loaded machine's few milliseconds for ``GET /key``.
    """
    gw = runner()
    workers_seen(gw.url)  # both workers are up
    idle = requests.Session()
    idle.get(gw.url + "/key", timeout=30)  # held open, unused, for the whole test
    slowest = 0.0
    for _ in range(5):
        time.sleep(0.2)  # the burst's connections from the round before are closed on both sides
        start = threading.Barrier(8)
        sessions = [requests.Session() for _ in range(8)]

        def first(session: requests.Session, start: threading.Barrier = start) -> float:
            start.wait()
            began = time.monotonic()
            assert session.get(gw.url + "/key", timeout=30).status_code == 200
            return time.monotonic() - began

        with ThreadPoolExecutor(8) as pool:
            slowest = max(slowest, *pool.map(first, sessions))
        for session in sessions:
            session.close()
    idle.close()
    assert slowest < 0.5, f"a connection of a burst waited {slowest:.2f} s for a worker to accept it"


def test_the_drain_runs_in_one_child_and_sends_each_message_once(runner, backend, telegram):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="0.2", MULTIMSG_DRAIN_WORKERS="1", **backend)
    assert len(children(gw.proc.pid)) == 3  # two workers and the drain
    sent = send_texts(gw, [("telegram", str(4200 + n), f"mensaje {n}") for n in range(30)])
    wait_until(lambda: all_delivered(gw, sent), 60, "every delivery")
    texts = sorted(record["fields"]["text"] for record in telegram.received())
    assert texts == sorted(f"mensaje {n}" for n in range(30))  # each once
    assert gw.log().count("drain started") == 1


def test_two_drain_children_each_send_for_their_own_instances_and_each_message_once(runner, backend, telegram, whatsapp):
    # Dealt by declared rate: wpp1 (80/s) to one share; telegram (30/s) and the outbox (no account: no weight) to the other.
    gw = runner(MULTIMSG_DRAIN_INTERVAL="0.2", MULTIMSG_DRAIN_WORKERS="2", **backend)
    assert len(children(gw.proc.pid)) == 4  # two workers and two drains
    assert gw.log().count("drain 1/2 started") == 1 and gw.log().count("drain 2/2 started") == 1
    # each builds its gateway at its first pass, in either order
    wait_until(lambda: "share 1/2" in gw.log() and "share 2/2" in gw.log(), 30, "the drains' first passes")
    assert "this drain sends for share 1/2 of the service instances: wpp1\n" in gw.log()
    assert "this drain sends for share 2/2 of the service instances: outbox, telegram\n" in gw.log()
    wanted = [("telegram", str(4300 + n), f"tg {n}") for n in range(30)] + [("wpp1", str(5491170000000 + n), f"wa {n}") for n in range(30)]
    sent = send_texts(gw, wanted, at=time.time() + 3)  # all due at once, for both drains
    wait_until(lambda: all_delivered(gw, sent), 60, "every delivery")
    assert sorted(record["fields"]["text"] for record in telegram.received()) == sorted(f"tg {n}" for n in range(30))  # each once
    assert sorted(record["json"]["text"]["body"] for record in whatsapp.received()) == sorted(f"wa {n}" for n in range(30))
    # which drain leases which instance's messages: test_backend_contract.py::test_drains_with_shares_*


def cores_allowed(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))


def each_on_one_core(pids: set[int]) -> list[str]:
    """The one core each of ``pids`` keeps to; empty until every one keeps to one."""
    cores = sorted(map(cores_allowed, pids))
    return cores if pids and all(core.isdigit() for core in cores) else []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores to choose from")
def test_each_http_worker_and_each_drain_child_keeps_to_a_core_of_its_own(runner, telegram, whatsapp):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="0.2", MULTIMSG_DRAIN_WORKERS="2")
    workers = workers_seen(gw.url)
    drains = wait_until(lambda: (kids := children(gw.proc.pid)) and len(kids) == 4 and kids - workers, 20, "the drain children")
    assert len(set(wait_until(lambda: each_on_one_core(workers), 20, "the workers keeping to one core each"))) == 2
    assert len(set(wait_until(lambda: each_on_one_core(drains), 20, "the drains keeping to one core each"))) == 2
    assert cores_allowed(gw.proc.pid) == cores_allowed(os.getpid())  # the parent: every core
    log = gw.log()
    assert log.count("this HTTP worker runs on core") == 2 and log.count("this drain process runs on core") == 2


def test_pinning_can_be_turned_off(runner, telegram, whatsapp):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="0.2", MULTIMSG_DRAIN_WORKERS="2", MULTIMSG_DRAIN_PIN="0", MULTIMSG_WORKER_PIN="0")
    wait_until(lambda: "share 1/2" in gw.log() and "share 2/2" in gw.log(), 30, "the drains' first passes")
    everything = cores_allowed(os.getpid())
    assert [cores_allowed(pid) for pid in children(gw.proc.pid)] == [everything] * 4
    assert "runs on core" not in gw.log()


def send_texts(gw: Gateway, wanted: list[tuple[str, str, str]], at: float | None = None) -> set[str]:
    """POST /send one text per (serv, dest, text), 8 at a time (scheduled for ``at``, if given); the message ids."""
    scheduled = {} if at is None else {"at": (None, f"{at:.3f}")}
    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(lambda w: fresh(gw.url + "/send", "POST", files={
            "data": ("t.txt", w[2].encode()), "serv": (None, w[0]), "dest": (None, w[1]), "type": (None, "text"), **scheduled}),
            wanted))
    assert all(answer.status_code == 200 for answer in sent), [a.text for a in sent if a.status_code != 200]
    return {answer.text for answer in sent}


def all_delivered(gw: Gateway, pending: set[str]) -> bool:
    """Whether every message of ``pending`` was reported delivered (each reported once: MULTIMSG_REPORT_GRACE=0 in tests)."""
    pending.difference_update({message_id for message_id in list(pending) if gw.cons(message_id).text == "delivered"})
    return not pending


def test_a_killed_worker_is_replaced(runner):
    gw = runner()
    before = workers_seen(gw.url)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: (kids := children(gw.proc.pid)) and victim not in kids and len(kids) == 2 and kids,
                          what="a replacement worker")
    assert workers_seen(gw.url) == replaced  # both answer, the new one included
    assert "(killed by SIGKILL); starting another" in gw.log()


def test_a_clients_rate_limit_is_one_count_for_every_worker(runner, backend):
    gw = runner(MULTIMSG_RATE_LIMIT="0.01", MULTIMSG_RATE_BURST="5", **backend)
    answers: list[requests.Response] = []
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(8) as pool:  # until both workers have answered some (the kernel picks who accepts)
        while len({answer.headers[WORKER_HEADER] for answer in answers}) < 2 and time.monotonic() < deadline:
            answers += pool.map(lambda _: fresh(gw.url + "/cons", "POST", data={"id": "A" * 16}), range(8))
    assert len({answer.headers[WORKER_HEADER] for answer in answers}) == 2  # both workers took some
    assert [answer.status_code for answer in answers].count(404) == 5  # the burst, not 5 per worker
    assert {answer.status_code for answer in answers} == {404, 429}


def test_sigterm_to_the_parent_stops_every_process(runner):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="5")
    kids = wait_until(lambda: len(children(gw.proc.pid)) == 4 and children(gw.proc.pid))  # two workers, two drains
    os.kill(gw.proc.pid, signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    wait_until(lambda: not any(alive(pid) for pid in kids), 10, "the children's exit")


def test_ctrl_c_to_the_whole_group_stops_it_cleanly(runner):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="5")
    kids = wait_until(lambda: len(children(gw.proc.pid)) == 4 and children(gw.proc.pid))  # two workers, two drains
    os.killpg(gw.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert gw.proc.wait(15) == 0
    wait_until(lambda: not any(alive(pid) for pid in kids), 10, "the children's exit")
    assert "Traceback" not in gw.log() and "failed" not in gw.log()


def test_a_parent_killed_with_sigkill_takes_its_workers_with_it(runner):
    gw = runner(MULTIMSG_DRAIN_INTERVAL="5")
    kids = wait_until(lambda: len(children(gw.proc.pid)) == 4 and children(gw.proc.pid))  # two workers, two drains
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in kids), 10, "the children's exit")
    with pytest.raises(requests.ConnectionError):
        fresh(gw.url + "/key")


def test_one_worker_is_one_process_as_before(make_gateway, telegram):
    gw = make_gateway("one", env={"MULTIMSG_WORKERS": "1", "MULTIMSG_DRAIN_INTERVAL": "0.2"})
    assert children(gw.proc.pid) == set()  # the drain is a thread of the same process
    answer = fresh(gw.url + "/key")
    assert int(answer.headers[WORKER_HEADER]) == gw.proc.pid
    message_id = gw.send(b"uno solo", "telegram", "1")
    wait_until(lambda: gw.cons(message_id).text == "delivered", 30, "the delivery")
