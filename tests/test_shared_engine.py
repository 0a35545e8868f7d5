"""The shared engine on Redis, with real processes: handlers, drain workers and redis-server itself.

- Four drain workers (``python -m multimsg drain`` in a loop, ``MULTIMSG_DRAIN_LOCK=off``) on 2,000
  messages: none lost, none sent twice, all final; and again with one worker ``kill -9``ed mid-drain:
  none lost, duplicates at most that worker's sends in flight, all final; the dead worker's leases are
  taken back by the running passes of the live workers once they lapse, so its messages are final within
  the lease and a few seconds (timed and printed).
- Durability: redis-server with ``--appendonly yes --appendfsync always`` ``kill -9``ed right after a
  200 from /msg, restarted on the same folder: the message is there and is delivered.
- Redis restarted while messages are queued and drained: no 5xx but 503, nothing acknowledged lost,
  the drain goes on by itself.

Pacing is off here (emulator and gateway): these tests are about losing and doubling, not rates.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.gatewayproc import ROOT, Gateway, free_port
from tests.redis_support import RedisServer, missing_redis, redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

NO_PACING = {"MULTIMSG_TELEGRAM_RATE": "0", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0", "MULTIMSG_WPP1_RATE": "0",
             "MULTIMSG_WPP1_DEST_INTERVAL": "0", "MULTIMSG_FSYNC": "0", "MULTIMSG_DRAIN_LOCK": "off"}
CLIENT = "ip:127.0.0.1"
MESSAGES = int(os.environ.get("MULTIMSG_TEST_DRAIN_MESSAGES", "2000"))  # the drain workers' backlog
CONCURRENCY = 8  # sends in flight per worker
RECOVERY = 12.0  # seconds after its lease lapses by which a dead worker's messages are final (generous: a loaded 2-core machine)


@pytest.fixture
def fast_telegram(telegram):
    telegram.configure(rate=0, chat_rate=0)  # the emulator's flood limits off (reset by the next test's fixture)
    return telegram


def own_redis(tmp_path: Path, *extra: str) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_redis("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir(exist_ok=True)
    return RedisServer(binary, folder, port=free_port(), extra=extra)


def enqueue(url: str, n: int, first_dest: int) -> list[str]:
    """Queue ``n`` texts straight into the shared store (one upload, one reference per message); their ids."""
    from multimsg.ids import new_id
    from multimsg.model import Message, State
    from multimsg.queue.backends.redis import RedisSpool, RedisStore, connect

    client = connect(url)
    store, spool = RedisStore(client), RedisSpool(client, ttl=3600)
    info = spool.put(CLIENT, [b"hola"], "t.txt")
    now, messages = time.time(), []
    for i in range(n):
        m = Message(id=new_id(), client=CLIENT, data_id=info.data_id, serv="telegram", dest=str(first_dest + i), type="text",
                    filename="t.txt", options={}, state=State.QUEUED, created_at=now, updated_at=now, next_attempt_at=now)
        spool.attach(CLIENT, info.data_id, m.id)
        messages.append(m)
    store.add_many(messages)
    client.close()
    return [m.id for m in messages]


def final_states(url: str, ids: list[str]) -> collections.Counter:
    from multimsg.queue.backends.redis import RedisStore, connect

    client = connect(url)
    store = RedisStore(client)
    counts = collections.Counter(str(m.state) if (m := store.get(i)) is not None else "missing" for i in ids)
    client.close()
    return counts


def dead_leases(url: str, settle: float) -> list[str]:
    """The leases nobody extends any more (the frozen worker's): in flight now, and their expiry unchanged ``settle`` s later.

    Live passes extend theirs every third of MULTIMSG_LEASE, and a dead one's lapse a whole lease after its last
    extension, so with ``settle`` between the two only the dead one's are unchanged.
    """
    import redis

    client = redis.Redis.from_url(url)
    before = dict(client.zrange("mm:{mm}:inflight", 0, -1, withscores=True))
    time.sleep(settle)
    after = dict(client.zrange("mm:{mm}:inflight", 0, -1, withscores=True))
    client.close()
    return [member.decode() for member, score in before.items() if after.get(member) == score]


def wait_final(url: str, ids: list[str], timeout: float) -> float:
    """When every one of ``ids`` was final (monotonic time); the timeout's end if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = final_states(url, ids)
        if not states.get("queued") and not states.get("missing"):
            return time.monotonic()
        time.sleep(0.25)
    return deadline


class Worker:
    """``python -m multimsg drain`` again and again, in its own process group and data folder."""

    def __init__(self, home: Path, env: dict[str, str]):
        home.mkdir(parents=True)
        self.log = open(home.parent / f"{home.name}.log", "ab")
        loop = f"while :; do {sys.executable} -m multimsg drain || sleep 0.2; sleep 0.1; done"
        self.proc = subprocess.Popen(["sh", "-c", loop], cwd=ROOT, env={**os.environ, **env, "MULTIMSG_HOME": str(home)},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def freeze(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)  # dead to the others from now on; its leases can still be told apart

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the loop and its pass at once
            self.proc.wait(10)


def drain_with_workers(tmp_path, redis_url, telegram, gateway_env, n: int, kill_one: bool, lease: float = 3.0):
    env = {**gateway_env, **NO_PACING, "MULTIMSG_BACKEND": redis_url, "MULTIMSG_LEASE": str(lease),
           "MULTIMSG_TELEGRAM_CONCURRENCY": str(CONCURRENCY), "MULTIMSG_DRAIN_WINDOW": "200"}
    first = 800_000_001
    ids = enqueue(redis_url, n, first)
    workers = [Worker(tmp_path / f"w{i}", env) for i in range(4)]
    try:
        deadline = time.monotonic() + 90
        killed_at = None
        while time.monotonic() < deadline:
            accepted = telegram.stats()["accepted"]  # a count: the whole list of thousands would load the emulator the workers wait on
            if kill_one and killed_at is None and accepted >= n // 5:
                workers[0].freeze()  # mid-drain: it holds leases and has sends in flight
                killed_at = time.monotonic()
                orphans = dead_leases(redis_url, settle=lease / 2)
                workers[0].kill9()
                orphans_final = wait_final(redis_url, orphans, lease + 45)
            if accepted >= n and len({r["dest"] for r in telegram.received(ok_only=True)}) >= n:
                break
            time.sleep(0.5)
        finished = time.monotonic()
        if kill_one:
            assert killed_at is not None
            print(f"kill -9 of a worker holding {len(orphans)} leases: all of them final {orphans_final - killed_at:.1f} s after the kill"
                  f" (MULTIMSG_LEASE={lease:g})")
            # A running pass of a live worker takes a lapsed lease within a third of a lease (scheduler.Pass._next_lapsed)
            assert orphans and orphans_final < killed_at + lease + RECOVERY, (len(orphans), orphans_final - killed_at)
        while time.monotonic() < finished + 15 and final_states(redis_url, ids)["delivered"] < n:
            time.sleep(0.5)  # the last passes record what they sent
    finally:
        for worker in workers:
            worker.kill9()
    sent = telegram.received(ok_only=True)
    per_dest = collections.Counter(int(r["dest"]) for r in sent)
    assert set(per_dest) == set(range(first, first + n)), "lost: %d" % (n - len(per_dest))
    duplicates = sum(count - 1 for count in per_dest.values())
    assert final_states(redis_url, ids) == {"delivered": n}
    return duplicates, killed_at, finished


def test_four_drain_workers_on_a_backlog_lose_none_and_send_none_twice(tmp_path, redis_url, fast_telegram, gateway_env):
    duplicates, _, _ = drain_with_workers(tmp_path, redis_url, fast_telegram, gateway_env, MESSAGES, kill_one=False, lease=30.0)
    assert duplicates == 0


def test_a_drain_worker_killed_mid_drain_loses_nothing_and_doubles_at_most_its_sends_in_flight(tmp_path, redis_url, fast_telegram, gateway_env):
    lease = 3.0
    duplicates, killed_at, finished = drain_with_workers(tmp_path, redis_url, fast_telegram, gateway_env, MESSAGES, kill_one=True, lease=lease)
    assert killed_at is not None
    assert duplicates <= CONCURRENCY  # what the killed worker had on the wire
    print(f"duplicates after kill -9: {duplicates}; all sent {finished - killed_at:.1f} s after the kill")


def test_a_200_from_msg_survives_kill_9_of_redis_with_appendfsync_always(tmp_path, fast_telegram, gateway_env):
    server = own_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        env = {**gateway_env, **NO_PACING, "MULTIMSG_BACKEND": server.url + "/0"}
        with Gateway(tmp_path / "a", env) as runner:
            message_id = runner.send(b"sobrevive", "telegram", "4646", filename="t.txt")  # a 200 from /msg
            server.kill9()  # right after the answer: no shutdown, no last write
            server.start()  # the same folder: the append-only file is replayed
            assert runner.wait_state(message_id, timeout=30)["state"] == "delivered"
        [sent] = fast_telegram.wait_for(lambda r: str(r["dest"]) == "4646")
        assert sent["fields"]["text"] == "sobrevive"
    finally:
        server.stop()


def test_redis_restarted_during_enqueue_and_drain_is_503_then_resumes_losing_nothing_acknowledged(tmp_path, fast_telegram, gateway_env):
    server = own_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    # A claim whose answer Redis never sent (it went down between running the script and replying) is
    # held by a lease this pass never learned of: it is sent once that lease lapses, so keep it short.
    env = {**gateway_env, **NO_PACING, "MULTIMSG_BACKEND": server.url + "/0", "MULTIMSG_DRAIN_INTERVAL": "0.2",
           "MULTIMSG_CONNECT_TIMEOUT": "1", "MULTIMSG_LEASE": "3"}
    acknowledged: list[str] = []
    statuses: collections.Counter = collections.Counter()
    stop = threading.Event()

    def produce(runner: Gateway) -> None:
        for i in range(5000):  # until told to stop: a fast machine answers 503s quickly while Redis is down
            if stop.is_set():
                return
            dest = str(900_000_001 + i)
            try:
                up = runner.upload(f"n{i}".encode(), filename="t.txt")
                statuses[up.status_code] += 1
                if up.status_code != 200:
                    continue
                answer = runner.msg(id=up.text, serv="telegram", dest=dest, type="text")
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    acknowledged.append(dest)
            except requests.RequestException:
                statuses["connection error"] += 1
            time.sleep(0.01)

    try:
        with Gateway(tmp_path / "a", env) as runner:
            producer = threading.Thread(target=produce, args=(runner,))
            producer.start()
            time.sleep(2.0)
            server.stop()  # down while queueing and draining
            time.sleep(2.0)
            server.start()
            before, until = len(acknowledged), time.monotonic() + 30
            while len(acknowledged) < before + 100 and time.monotonic() < until:  # enqueueing resumes
                time.sleep(0.1)
            stop.set()
            producer.join(60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = {str(r["dest"]) for r in fast_telegram.received(ok_only=True)}
                if set(acknowledged) <= got:
                    break
                time.sleep(0.5)
        assert not [s for s in statuses if s not in (200, 503)], statuses  # 503 while it is down, never another 5xx
        assert statuses[503] > 0 and len(acknowledged) > 100, statuses
        missing = set(acknowledged) - {str(r["dest"]) for r in fast_telegram.received(ok_only=True)}
        assert not missing, f"{len(missing)} acknowledged messages never sent"
    finally:
        stop.set()
        server.stop()
