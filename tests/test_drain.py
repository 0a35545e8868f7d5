"""The delivery engine (multimsg/queue/drain.py, pacing.py, retry.py), through a real runner and the emulators.

Retries back off with jitter and never come before the platform's
``retry_after``; attempts run out and validity expires into ``failed``; a
misconfigured service keeps its messages queued and says so; a second pass
is ``busy``; a service's rate and each destination's limit are kept, and a
destination that must wait holds up nobody else.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

from multimsg.model import Message
from multimsg.queue.retry import RetryPolicy, transition
from multimsg.services.base import Outcome
from tests.gatewayproc import ROOT

_chats = itertools.count(810_000_001)
_numbers = itertools.count(5491180000001)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def sent_to(emulator, dest: str) -> list[dict]:
    return [r for r in emulator.received() if str(r["dest"]) == dest]


def drain_until(gateway, message_id: str, done, timeout: float = 15.0) -> dict:
    """Drain and look (a queued message can be looked at any number of times) until ``done(report)``."""
    deadline = time.monotonic() + timeout
    while True:
        gateway.drain()
        report = gateway.state(message_id)
        if done(report):
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.05)


# -- the retry policy (a pure function: many samples) ---------------------------------------
def test_backoff_is_jittered_exponential_and_never_before_retry_after():
    policy = RetryPolicy(base=2.0, factor=3.0, cap=60.0, max_attempts=10, validity=86400.0)
    record = Message(id="m" * 16, client="ip:127.0.0.1", data_id="d" * 16, serv="telegram", dest="1", type="text",
                     created_at=1000.0)
    for attempts in range(1, 6):
        ceiling = min(60.0, 2.0 * 3.0 ** (attempts - 1))
        delays = {transition(record.with_changes(attempts=attempts - 1), Outcome.retry("5xx"), policy, 2000.0)["next_attempt_at"] - 2000.0
                  for _ in range(200)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, min(delays), max(delays))
        assert len(delays) > 150  # jittered, not one fixed value
    # retry_after wins over a shorter backoff, for a throttle as for a plain retry.
    for outcome in (Outcome.retry("429", retry_after=7.5), Outcome.retry("5xx with Retry-After", retry_after=7.5, throttle=None)):
        for _ in range(200):
            assert transition(record, outcome, policy, 2000.0)["next_attempt_at"] >= 2007.5
    # A retry is never scheduled past the validity deadline: it would only fail late.
    old = record.with_changes(created_at=2000.0 - 86400.0 + 3.0)
    assert transition(old, Outcome.retry("5xx"), RetryPolicy(base=600.0), 2000.0)["next_attempt_at"] <= 2003.01


# -- retries, end to end -----------------------------------------------------------------------
def test_retry_backs_off_then_honours_retry_after_then_delivers(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_RETRY_BASE": "0.4", "MULTIMSG_RETRY_FACTOR": "2", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"})
    chat = str(next(_chats))
    telegram.script("server_error", dest=chat, times=2)
    message_id = gateway.send(b"try, try again", "telegram", chat)

    assert gateway.drain()["retried"] == 1
    first = gateway.state(message_id)
    assert first["state"] == "queued" and first["attempts"] == 1 and "Internal Server Error" in first["last_error"]
    assert 0.2 - 0.002 <= epoch(first["next_attempt_at"]) - epoch(first["updated_at"]) <= 0.4 + 0.002

    second = drain_until(gateway, message_id, lambda r: r["attempts"] == 2)
    assert 0.4 - 0.002 <= epoch(second["next_attempt_at"]) - epoch(second["updated_at"]) <= 0.8 + 0.002

    # Now the platform says "too many requests, retry after 2 s": no attempt used, and nothing before 2 s.
    telegram.script("retry_after", dest=chat, retry_after=2)
    throttled = drain_until(gateway, message_id, lambda r: "retry after" in (r["last_error"] or ""))
    assert throttled["attempts"] == 2 and len(sent_to(telegram, chat)) == 3
    assert epoch(throttled["next_attempt_at"]) - epoch(throttled["updated_at"]) >= 2.0 - 0.002
    report = gateway.wait_state(message_id, timeout=15)
    assert report["state"] == "delivered" and report["attempts"] == 2
    arrivals = [r["t"] for r in sent_to(telegram, chat)]
    assert len(arrivals) == 4 and arrivals[3] - arrivals[2] >= 2.0


def test_a_retry_is_not_claimed_before_it_is_due(make_gateway, telegram):
    # A backoff of 30 to 60 s: every pass below certainly runs before the message is due.
    gateway = make_gateway(env={"MULTIMSG_RETRY_BASE": "60", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"})
    chat = str(next(_chats))
    telegram.script("server_error", dest=chat, times=1)
    message_id = gateway.send(b"not yet", "telegram", chat)
    assert gateway.drain()["retried"] == 1
    first = gateway.state(message_id)
    assert first["attempts"] == 1 and epoch(first["next_attempt_at"]) - time.time() > 25
    for _ in range(3):
        assert gateway.drain()["claimed"] == 0
    again = gateway.state(message_id)
    assert len(sent_to(telegram, chat)) == 1
    assert (again["state"], again["attempts"], again["next_attempt_at"]) == ("queued", 1, first["next_attempt_at"])


def test_attempts_run_out_and_the_message_fails(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_RETRY_MAX_ATTEMPTS": "3", "MULTIMSG_RETRY_CAP": "0.1"})
    chat = str(next(_chats))
    telegram.script("server_error", dest=chat, times=10)
    message_id = gateway.send(b"never gets through", "telegram", chat)
    report = gateway.wait_state(message_id, timeout=20)
    assert report["state"] == "failed" and report["attempts"] == 3
    assert report["last_error"].startswith("gave up after 3 attempts: telegram: Internal Server Error")
    assert len(sent_to(telegram, chat)) == 3


def test_a_message_older_than_its_validity_fails_as_expired_without_waiting_out_its_backoff(make_gateway, telegram):
    # The backoff would be 30-60 s, the validity is 1.5 s: it fails at about 1.5 s.
    gateway = make_gateway(env={"MULTIMSG_VALIDITY": "1.5", "MULTIMSG_RETRY_BASE": "60"})
    chat = str(next(_chats))
    telegram.script("server_error", dest=chat)
    message_id = gateway.send(b"too late", "telegram", chat)
    assert gateway.drain()["retried"] == 1
    report = gateway.wait_state(message_id, timeout=20)
    assert report["state"] == "failed" and report["last_error"].startswith("expired: not delivered within 1.5 s")
    assert "Internal Server Error" in report["last_error"]  # says what went wrong before
    assert len(sent_to(telegram, chat)) == 1


# -- a misconfigured service ----------------------------------------------------------------------
def test_a_refused_token_keeps_messages_queued_reports_it_and_validity_still_applies(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_TELEGRAM_TOKEN": "123456:not-the-bots-token", "MULTIMSG_VALIDITY": "4"})
    chats = [str(next(_chats)) for _ in range(3)]
    ids = [gateway.send(f"held {n}".encode(), "telegram", chat) for n, chat in enumerate(chats)]

    summary = gateway.drain()
    assert "was refused (Unauthorized)" in summary["misconfigured"]["telegram"]
    assert summary["delivered"] == summary["failed"] == summary["retried"] == 0
    tried = len(telegram.received())
    assert 1 <= tried <= 3
    for message_id in ids:
        report = gateway.state(message_id)
        assert report["state"] == "queued" and report["attempts"] == 0
    assert "ERROR multimsg.drain" in gateway.log() and "misconfigured" in gateway.log()

    # The service is on hold: the next pass says so again and sends nothing.
    again = gateway.drain()
    assert "telegram" in again["misconfigured"] and again["claimed"] == 0
    assert len(telegram.received()) == tried

    # After the validity period they fail as expired, still without being sent.
    for message_id in ids:
        report = gateway.wait_state(message_id, timeout=20)
        assert report["state"] == "failed" and report["last_error"].startswith("expired") and report["attempts"] == 0
    assert len(telegram.received()) == tried


# -- one pass at a time ---------------------------------------------------------------------------
def test_a_second_pass_started_meanwhile_answers_busy(make_gateway, telegram):
    # One send at a time, 1.5 s each: the first pass still runs 4.5 s after its first send arrives, long enough
    # for a CLI started then to find it running on a loaded machine (with two sends at once it had 1.5 s).
    gateway = make_gateway(env={"MULTIMSG_TELEGRAM_DEST_INTERVAL": "0", "MULTIMSG_TELEGRAM_CONCURRENCY": "1"})
    telegram.configure(latency=1.5)
    for _ in range(4):
        gateway.send(b"slow platform", "telegram", str(next(_chats)))
    first: dict = {}
    runner = threading.Thread(target=lambda: first.update(gateway.drain()))
    runner.start()
    telegram.wait_for(count=1)  # the first pass is sending now

    assert gateway.drain() == {"busy": True, "claimed": 0, "delivered": 0, "retried": 0, "failed": 0, "misconfigured": {}}
    cron = subprocess.run([sys.executable, "-m", "multimsg", "drain", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **gateway.env, "MULTIMSG_HOME": str(gateway.home)})
    assert cron.returncode == 0, cron.stderr
    assert json.loads(cron.stdout.strip().splitlines()[-1])["busy"] is True

    runner.join(30)
    assert first["busy"] is False and first["delivered"] == 4


def test_cron_passes_with_a_drain_share_each_send_for_their_own_instances(make_gateway, telegram, whatsapp):
    gateway = make_gateway()
    by_serv = {"telegram": gateway.send(b"por telegram", "telegram", str(next(_chats))),
               "wpp1": gateway.send(b"por whatsapp", "wpp1", str(next(_numbers)))}

    def cron(share: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "multimsg", "drain", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **gateway.env, "MULTIMSG_HOME": str(gateway.home), "MULTIMSG_DRAIN_SHARE": share})

    # Dealt by declared rate: wpp1 (80/s) is share 0's; telegram (30/s) and the outbox (no weight) are share 1's
    first = cron("0/2")
    assert first.returncode == 0 and json.loads(first.stdout.strip().splitlines()[-1])["delivered"] == 1, first.stderr
    assert gateway.state(by_serv["wpp1"])["state"] == "delivered" and gateway.state(by_serv["telegram"])["state"] == "queued"
    assert telegram.received() == [] and len(whatsapp.received()) == 1
    second = cron("1/2")
    assert second.returncode == 0 and json.loads(second.stdout.strip().splitlines()[-1])["delivered"] == 1, second.stderr
    assert [record["fields"]["text"] for record in telegram.received()] == ["por telegram"]
    bad = cron("2/2")
    assert bad.returncode != 0 and "MULTIMSG_DRAIN_SHARE must be I/N" in bad.stderr


# -- pacing -----------------------------------------------------------------------------------------
def test_the_service_rate_is_kept_in_every_sliding_second(make_gateway, whatsapp):
    whatsapp.configure(rate=10)
    gateway = make_gateway(env={"MULTIMSG_WPP1_RATE": "10", "MULTIMSG_PACE_MARGIN": "0.8", "MULTIMSG_RATE_LIMIT": "0"})
    ids = [gateway.send(f"n{n}".encode(), "wpp1", str(next(_numbers))) for n in range(30)]
    summary = gateway.drain()
    assert summary["delivered"] == 30, summary
    stats = whatsapp.stats()
    assert stats["accepted"] == 30 and stats["rate_limited"] == 0 and stats["max_in_any_window"] <= 10
    assert gateway.state(ids[0])["state"] == "delivered"


def test_a_drain_that_stands_still_does_not_send_the_slots_it_missed_in_a_burst(make_gateway, whatsapp):
    # Senders sleep until slots they reserved ahead; a process stopped past them woke them all at once.
    whatsapp.configure(rate=40, latency=0.1)
    gateway = make_gateway(env={"MULTIMSG_WPP1_RATE": "40", "MULTIMSG_PACE_MARGIN": "0.8", "MULTIMSG_WPP1_CONCURRENCY": "30",
                                "MULTIMSG_RATE_LIMIT": "0"})
    ids = [gateway.send(f"n{n}".encode(), "wpp1", str(next(_numbers))) for n in range(100)]
    summary: dict = {}
    passing = threading.Thread(target=lambda: summary.update(gateway.drain()))
    passing.start()
    deadline = time.monotonic() + 30
    while whatsapp.stats()["accepted"] < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(2):  # stand still twice, mid-drain, long past the reserved slots
        os.kill(gateway.proc.pid, signal.SIGSTOP)
        time.sleep(0.6)
        os.kill(gateway.proc.pid, signal.SIGCONT)
        time.sleep(1.1)
    passing.join(60)
    assert summary.get("delivered") == 100, summary
    stats = whatsapp.stats()
    assert stats["rate_limited"] == 0 and stats["max_in_any_window"] <= 40, stats
    assert gateway.state(ids[-1])["state"] == "delivered"


def test_a_destination_that_must_wait_holds_up_nobody(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_RATE_LIMIT": "0"})
    private, group = str(next(_chats)), "-100" + str(next(_chats))
    others = [str(next(_chats)) for _ in range(6)]
    for n in range(3):
        gateway.send(f"private {n}".encode(), "telegram", private)
    for n in range(2):
        gateway.send(f"group {n}".encode(), "telegram", group)
    for chat in others:
        gateway.send(b"just one", "telegram", chat)

    summary = gateway.drain()
    assert summary["delivered"] == 11, summary
    assert telegram.stats()["rate_limited"] == 0  # 1 per second per chat, 20 per minute per group: kept
    to_private = sent_to(telegram, private)
    assert sorted(r["fields"]["text"] for r in to_private) == ["private 0", "private 1", "private 2"]
    assert all(b["t"] - a["t"] >= 1.0 for a, b in zip(to_private, to_private[1:]))
    to_group = sent_to(telegram, group)
    assert len(to_group) == 2 and to_group[1]["t"] - to_group[0]["t"] >= 3.0  # 20 a minute, evenly
    # Everyone else went out while the private chat and the group were waiting their turn.
    assert max(sent_to(telegram, chat)[0]["t"] for chat in others) < to_private[1]["t"]


def test_a_rate_limit_answer_holds_the_whole_service_for_retry_after(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_RETRY_BASE": "0.05"})
    chat = str(next(_chats))
    telegram.script("retry_after", dest=chat, retry_after=2)
    throttled_id = gateway.send(b"too fast", "telegram", chat)
    assert gateway.drain()["retried"] == 1
    [answer] = sent_to(telegram, chat)
    assert answer["status"] == 429

    later = [gateway.send(b"meanwhile", "telegram", str(next(_chats))) for _ in range(3)]
    for message_id in [throttled_id, *later]:
        assert gateway.wait_state(message_id, timeout=15)["state"] == "delivered"
    after = [r for r in telegram.received() if r["t"] > answer["t"]]
    assert len(after) == 4 and min(r["t"] for r in after) >= answer["t"] + 2.0
    assert all(r["status"] == 200 for r in after)


def test_a_platform_hold_longer_than_a_pass_leaves_the_services_messages_queued_untouched(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_DRAIN_HORIZON": "5"})  # a pass waits out holds of 5 s at most
    chat = str(next(_chats))
    telegram.script("retry_after", dest=chat, retry_after=30)
    throttled_id = gateway.send(b"flood", "telegram", chat)
    assert gateway.drain()["retried"] == 1

    later = [gateway.send(b"not now", "telegram", str(next(_chats))) for _ in range(3)]
    summary = gateway.drain()  # returns at once instead of sleeping through the 30 s
    assert summary["claimed"] == 0 and summary["retried"] == 0
    for message_id in later:
        report = gateway.state(message_id)
        assert report["state"] == "queued" and report["attempts"] == 0 and report["last_error"] is None
    throttled = gateway.state(throttled_id)
    assert throttled["attempts"] == 0 and epoch(throttled["next_attempt_at"]) - epoch(throttled["updated_at"]) >= 30
    assert len(telegram.received()) == 1
