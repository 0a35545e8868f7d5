"""The per-client rate limiter's buckets shared by forked processes (``SharedRateLimiter``).

The local runner with several workers makes one before it forks them; these
fork real processes on it: together they pass a client's burst once, a table
full of other clients forgets the least recently used one first, and a
process killed while it holds the lock does not block the others.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading

import pytest

from multimsg.ratelimit import PROBES, SharedRateLimiter

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork")


def passes_in_children(limiter: SharedRateLimiter, client: str, children: int, each: int) -> int:
    """Fork ``children`` processes that each ask ``each`` times; how many passed in all."""
    read, write = os.pipe()
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            passed = sum(limiter.acquire(client) == 0.0 for _ in range(each))
            os.write(write, bytes([passed]))
            os._exit(0)
        pids.append(pid)
    os.close(write)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as results:
        return sum(results.read())


def test_forked_processes_pass_one_burst_between_them():
    limiter = SharedRateLimiter(0.001, 10)
    assert passes_in_children(limiter, "ip:192.0.2.1", children=3, each=10) == 10
    assert limiter.acquire("ip:192.0.2.1") > 0  # the parent sees the children's count
    assert limiter.acquire("ip:192.0.2.2") == 0.0  # another client has its own bucket


def test_a_full_table_forgets_the_least_recently_used_client():
    now = [1000.0]
    limiter = SharedRateLimiter(0.001, 1, slots=PROBES, clock=lambda: now[0])  # every client probes every slot
    clients = [f"ip:192.0.2.{n}" for n in range(PROBES)]
    for client in clients:
        now[0] += 1
        assert limiter.acquire(client) == 0.0  # each one's single request
    now[0] += 1
    assert limiter.acquire("ip:198.51.100.1") == 0.0  # a newcomer takes the oldest slot (clients[0]'s)
    assert limiter.acquire(clients[0]) == 0.0  # forgotten: a full burst again (and it took clients[1]'s slot)
    assert all(limiter.acquire(client) > 0 for client in clients[2:])  # the others are still counted


def test_a_process_killed_while_it_holds_the_lock_does_not_block_the_others():
    limiter = SharedRateLimiter(100, 10)
    pid = os.fork()
    if pid == 0:
        fcntl.lockf(limiter._file.fileno(), fcntl.LOCK_EX)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    done = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire("ip:192.0.2.9"), done.set()), daemon=True).start()
    assert done.wait(10), "the lock of a dead process was not released"
