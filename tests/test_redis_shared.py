"""Everything processes of one deployment must agree on, shared through a real redis-server.

Runners (and CLI commands) each have their own, empty data folder and the same
``MULTIMSG_BACKEND`` and ``MULTIMSG_KEY_SEAL``: server keys and their
rotation, client tokens, the per-client rate limit, the quota, the replay
record, and the drain's pacing and holds across 4 drain processes, measured
on the emulators (which enforce the platforms' limits over any sliding window).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from multimsg.crypto import encrypt_upload
from tests.gatewayproc import ROOT, Gateway
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

SEAL = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def shared_env(gateway_env, redis_url) -> dict[str, str]:
    return {**gateway_env, "MULTIMSG_BACKEND": redis_url, "MULTIMSG_KEY_SEAL": SEAL}


@pytest.fixture
def runners(tmp_path, shared_env):
    started: list[Gateway] = []

    def start(name: str, **env: str) -> Gateway:
        runner = Gateway(tmp_path / name, {**shared_env, **env}).start()  # an empty, private data folder
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()


def cli(tmp_path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / f"cli-{time.monotonic_ns()}"  # a host of its own, with an empty data folder
    return subprocess.run([sys.executable, "-m", "multimsg", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env, "MULTIMSG_HOME": str(home)})


def raw_values(redis_url: str) -> list[bytes]:
    import redis

    r = redis.Redis.from_url(redis_url)
    values: list[bytes] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values.append(r.get(key))
        elif kind == "hash":
            values += list(r.hgetall(key).values())
        elif kind == "zset":
            values += r.zrange(key, 0, -1)
        elif kind == "set":
            values += list(r.smembers(key))
        elif kind == "list":
            values += r.lrange(key, 0, -1)
    return values


# -- keys --------------------------------------------------------------------------


def test_an_upload_encrypted_for_one_runner_is_read_by_another(runners, telegram, redis_url, tmp_path, shared_env):
    a, b = runners("a"), runners("b")
    pem = a.http.get(a.url + "/key", timeout=10).text
    assert b.http.get(b.url + "/key", timeout=10).text == pem  # one key pair for the deployment
    data, key = encrypt_upload(pem, b"secreto de A")
    data_id = a.upload_id(data, key=key, filename="t.txt")
    queued = b.msg(id=data_id, serv="telegram", dest="4242", type="text")
    assert queued.status_code == 200, queued.text
    assert b.drain()["delivered"] == 1
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "secreto de A"

    replayed = b.upload(data, key=key)  # the same wrapped key, to the other process
    assert replayed.status_code == 409, replayed.text

    values = raw_values(redis_url)
    assert values and not any(b"PRIVATE KEY" in v or b"BEGIN" in v for v in values)

    rotated = cli(tmp_path, shared_env, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_pem = a.http.get(a.url + "/key", timeout=10).text
    assert new_pem != pem and b.http.get(b.url + "/key", timeout=10).text == new_pem  # rotated for all
    old_data, old_key = encrypt_upload(pem, b"con la clave vieja")
    assert b.upload(old_data, key=old_key).status_code == 200  # the old key decrypts during its grace
    assert not any(b"PRIVATE KEY" in v for v in raw_values(redis_url))

    gone = cli(tmp_path, shared_env, "keys", "rotate", "--grace", "0")
    assert gone.returncode == 0, gone.stderr
    stale_data, stale_key = encrypt_upload(pem, b"demasiado tarde")
    assert a.upload(stale_data, key=stale_key).status_code == 400  # no grace: the first key opens nothing now


def test_without_the_seal_a_runner_refuses_to_start(tmp_path, shared_env):
    env = {**shared_env, "MULTIMSG_KEY_SEAL": ""}  # unset (an empty value is no value), whatever the environment holds
    with pytest.raises(RuntimeError, match="MULTIMSG_KEY_SEAL is not set"):
        Gateway(tmp_path / "noseal", env).start(timeout=20)
    wrong = {**shared_env, "MULTIMSG_KEY_SEAL": "c2hvcnQ="}
    with pytest.raises(RuntimeError, match="MULTIMSG_KEY_SEAL must be 32 random bytes"):
        Gateway(tmp_path / "badseal", wrong).start(timeout=20)


def test_creators_racing_for_the_first_key_end_with_one_key_pair(redis_url, tmp_path):
    """Four creators, each with its own connection, ask for the key at once: SET NX lets one key pair win."""
    import redis

    from multimsg.crypto import ServerKeys
    from multimsg.layout import Layout
    from multimsg.queue.backends.redis_engine import RedisKeyStore, parse_seal

    seal = parse_seal(SEAL)
    found: list[str] = []

    def make(i: int) -> None:
        store = RedisKeyStore(redis.Redis.from_url(redis_url), "mm", seal)
        found.append(ServerKeys(Layout(tmp_path / str(i)), store=store).public_pem)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(found) == 4 and len(set(found)) == 1


# -- tokens, rate limit, quota --------------------------------------------------------


def test_a_token_added_on_one_host_is_accepted_by_another_and_removal_takes_effect(runners, tmp_path, shared_env, redis_url):
    from multimsg.queue.backends.redis import RedisStore, connect

    env = {**shared_env, "MULTIMSG_IDENTITY": "token"}
    hook = "http://127.0.0.1:9/alice"  # resolves (a /msg checks that), never called here
    added = cli(tmp_path, env, "token", "add", "alice", "--callback", hook)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    b = runners("b", MULTIMSG_IDENTITY="token", MULTIMSG_CALLBACK_ALLOW_PRIVATE="1")
    auth = {"Authorization": f"Bearer {token}"}
    ok = b.http.post(b.url + "/data", files={"data": ("t.txt", b"hola")}, headers=auth, timeout=10)
    assert ok.status_code == 200, ok.text
    queued = b.http.post(b.url + "/msg", data={"id": ok.text, "serv": "telegram", "dest": "77", "type": "text"}, headers=auth, timeout=10)
    assert queued.status_code == 200, queued.text
    client = connect(redis_url)
    assert RedisStore(client).get(queued.text).callback == hook  # the token's default, set on another host
    client.close()
    assert cli(tmp_path, env, "token", "list").stdout.split() == ["alice"]
    assert cli(tmp_path, env, "token", "remove", "alice").returncode == 0
    refused = b.http.post(b.url + "/data", files={"data": ("t.txt", b"hola")}, headers=auth, timeout=10)
    assert refused.status_code == 401, refused.text


def test_the_rate_limit_holds_across_two_processes(runners):
    rate, seconds = 20, 3.0
    a, b = runners("a", MULTIMSG_RATE_LIMIT=str(rate), MULTIMSG_RATE_BURST="1", MULTIMSG_IDENTITY="ip"), \
        runners("b", MULTIMSG_RATE_LIMIT=str(rate), MULTIMSG_RATE_BURST="1", MULTIMSG_IDENTITY="ip")
    passed, limited = [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def hammer(runner: Gateway) -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            status = session.post(runner.url + "/cons", data={"id": "A" * 16}, timeout=10).status_code
            with lock:
                if status == 429:
                    limited[0] += 1
                else:
                    passed[0] += 1

    threads = [threading.Thread(target=hammer, args=(r,)) for r in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print(f"rate limit {rate}/s over {seconds:g} s across 2 processes: {passed[0]} passed, {limited[0]} refused")
    assert limited[0] > 0
    assert rate * seconds * 0.8 <= passed[0] <= rate * seconds * 1.15 + 2  # about N/s in all, not 2N


def test_the_quota_counts_uploads_on_every_process(runners):
    a, b = runners("a", MULTIMSG_CLIENT_QUOTA="1000", MULTIMSG_IDENTITY="ip"), runners("b", MULTIMSG_CLIENT_QUOTA="1000", MULTIMSG_IDENTITY="ip")
    assert a.upload(b"x" * 600).status_code == 200
    over = b.upload(b"y" * 600)
    assert over.status_code == 413 and "quota" in over.text, over.text
    assert b.upload(b"z" * 200).status_code == 200  # what the spool holds counts: 600 bytes sealed are 776


# -- the drain's pacing and holds across workers ------------------------------------------------


def _backlog(runner: Gateway, serv: str, count: int, dest) -> None:
    data_id = runner.upload_id(b"hola", filename="t.txt")
    for i in range(count):
        answer = runner.msg(id=data_id, serv=serv, dest=dest(i), type="text")
        assert answer.status_code == 200, answer.text


def _drain_workers(tmp_path, env: dict[str, str], n: int = int(os.environ.get("WORKERS", "4"))) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        home = tmp_path / f"worker-{i}"
        log = open(tmp_path / f"worker-{i}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "multimsg", "drain", "--json"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **env, "MULTIMSG_HOME": str(home), "MULTIMSG_DRAIN_LOCK": "off"}))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError("a drain worker did not finish in time") from None
    finally:
        for proc in procs:  # our own children, by their PIDs
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.parametrize("serv, count, limit", [("wpp1", 400, 80), ("telegram", 160, 30)])
def test_four_drain_workers_share_the_platform_limit(runners, tmp_path, shared_env, telegram, whatsapp, serv, count, limit):
    emulator = whatsapp if serv == "wpp1" else telegram
    a = runners("a")
    _backlog(a, serv, count, (lambda i: f"3460{i:07d}") if serv == "wpp1" else (lambda i: str(100000 + i)))
    started = time.monotonic()
    # The suite runs on two busy cores (two test workers): a worker that stalls between its slot and the
    # wire bunches with the next, so this test keeps a wider margin than the default 0.92. The default's
    # rate and its zero rate-limit answers are measured on a quiet machine with PACE_MARGIN=0.92
    # (bench/README.md, section 6).
    margin = os.environ.get("PACE_MARGIN", "0.85")
    _wait(_drain_workers(tmp_path, {**shared_env, "MULTIMSG_PACE_MARGIN": margin}), timeout=60)
    stats = emulator.stats()
    times = sorted(r["t"] for r in emulator.received() if r["outcome"] == "delivered")
    if os.environ.get("DUMP"):
        Path(os.environ["DUMP"]).write_text("\n".join(repr(t) for t in times))
    print("per second:", [sum(1 for t in times if k <= t - times[0] < k + 1) for k in range(int(times[-1] - times[0]) + 1)])
    rate = (stats["accepted"] - 1) / (stats["last_t"] - stats["first_t"])
    print(f"{serv}: 4 workers, {stats['accepted']} sent at {rate:.1f}/s (limit {limit}/s, {rate / limit:.0%}); "
          f"most in any 1 s window {stats['max_in_any_window']}; rate-limited {stats['rate_limited']}; "
          f"{time.monotonic() - started:.1f} s with start-up")
    assert (stats["accepted"], stats["rate_limited"]) == (count, 0), stats
    assert stats["max_in_any_window"] <= limit
    # Shared, not split: four workers each pacing to a quarter would make about 25%. The rate itself
    # (about 90% here on a quiet machine) is a benchmark figure (bench/README.md), not a test bound.
    assert rate >= 0.5 * limit


def test_a_retry_after_answered_to_one_worker_holds_every_worker(runners, tmp_path, shared_env, telegram, redis_url):
    import redis

    a = runners("a")
    _backlog(a, "telegram", 120, lambda i: str(200000 + i))
    telegram.script("retry_after", retry_after=2, times=1)  # the first send, whichever worker makes it
    _wait(_drain_workers(tmp_path, shared_env), timeout=60)
    records = [r for r in telegram.received() if r["method"] not in ("getMe",)]
    [throttled] = [r for r in records if r.get("script")]
    # The hold as the worker that got the 429 wrote it (Redis's clock, the emulator's wall clock: one machine).
    client = redis.Redis.from_url(redis_url)
    [key] = [k for k in client.scan_iter(match="mm:*pace:telegram")]
    hold_until = float(client.hget(key, "hold")) / 1000.0
    client.close()
    hold_written = hold_until - 2.0
    later = sorted(r["wall"] for r in records if r["wall"] > throttled["wall"] and r["outcome"] == "delivered")
    # Sends that had passed their last look before the hold was written may still land just after it;
    # any send well inside the hold came from a worker that did not see it.
    inside = [t - hold_written for t in later if hold_written + 0.5 < t < hold_until - 0.05]
    print(f"429 at {throttled['wall']:.3f}, hold written {hold_written - throttled['wall']:.3f} s later, "
          f"sends during the hold: {[round(t, 3) for t in inside]}; {len(later)} sent after the 429")
    assert hold_written >= throttled["wall"] - 0.05
    assert inside == []  # no worker sent during the hold
    assert any(t >= hold_until - 0.05 for t in later)  # and they all went on after it
    if telegram.stats()["accepted"] < 120:  # the throttled message was due again after the workers' passes ended
        a.drain()
    assert telegram.stats()["accepted"] == 120
