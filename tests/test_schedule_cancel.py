"""Scheduled sends (``/msg`` ``at``) and ``POST /cancel``, through real gateways on the embedded store and on Redis.

A scheduled message is queued with its ``at`` as its due time: a drain pass
before then leaves it, one after sends it; ``/cons`` says ``queued`` in plain
text and shows ``scheduled_for`` in JSON. A ``kill -9`` of the gateway with
scheduled messages queued loses none: the restarted runner sends them when due.
Cancel makes a queued or scheduled message ``cancelled`` (reported once, counted
in /metrics, never sent); in flight or final is 409 with the state; a foreign or
unknown id 404. The CLI's ``multimsg cancel`` and ``Client.cancel`` speak the same endpoint.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from multimsg.client import Client, NotFound, RequestRejected
from tests.backend_gateways import backend_gateway  # noqa: F401  (fixture)
from tests.gatewayproc import ROOT
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)


def _cons_json(gw, message_id: str) -> dict:
    answer = gw.cons(message_id, as_json=True)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_scheduled_message_is_not_sent_before_its_time_and_is_sent_after(backend_gateway, telegram):
    gw = backend_gateway()
    at = time.time() + 3
    iso = datetime.fromtimestamp(at, timezone.utc).isoformat()  # RFC 3339 with an offset (+00:00)
    message_id = gw.send(b"later", "telegram", "31", at=iso)
    assert gw.cons(message_id).text == "queued"  # plain text: the state alone
    report = _cons_json(gw, message_id)
    assert report["state"] == "queued" and report["scheduled_for"].startswith(iso[:19])
    assert gw.drain()["claimed"] == 0  # not due yet
    assert telegram.received() == []
    deadline = time.monotonic() + 30
    while time.time() < at:  # wait for its time (polling, not a bare sleep)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gw.wait_state(message_id)["state"] == "delivered"
    [sent] = telegram.wait_for(count=1)
    assert sent["fields"]["text"] == "later"


def test_at_in_unix_seconds_in_the_past_is_now_and_beyond_the_horizon_is_400(backend_gateway, telegram):
    gw = backend_gateway(env={"MULTIMSG_VALIDITY": str(40 * 86400)})
    past = gw.send(b"past", "telegram", "32", at=str(int(time.time()) - 3600))
    assert _cons_json(gw, past)["scheduled_for"] is None  # in the past: an ordinary message, due now
    assert gw.wait_state(past)["state"] == "delivered"

    data_id = gw.upload_id(b"x", filename="t.txt")
    far = gw.msg(id=data_id, serv="telegram", dest="32", type="text", at=str(int(time.time() + 31 * 86400)))
    assert far.status_code == 400 and "scheduling horizon" in far.text
    for bad in ("tomorrow", "2026-12-01T10:00:00", "1e9", "-5"):  # no offset, not a time
        answer = gw.msg(id=data_id, serv="telegram", dest="32", type="text", at=bad)
        assert answer.status_code == 400 and "'at'" in answer.text, (bad, answer.text)
    ok = gw.msg(id=data_id, serv="telegram", dest="32", type="text", at=str(int(time.time() + 29 * 86400)))
    assert ok.status_code == 200, ok.text


def test_the_horizon_never_passes_the_validity(backend_gateway, telegram):
    gw = backend_gateway(env={"MULTIMSG_VALIDITY": "600"})
    data_id = gw.upload_id(b"x", filename="t.txt")
    answer = gw.msg(id=data_id, serv="telegram", dest="33", type="text", at=str(int(time.time() + 900)))
    assert answer.status_code == 400 and "600 s ahead" in answer.text


@pytest.mark.slow
def test_kill_9_with_scheduled_messages_queued_loses_none(backend_gateway, telegram):
    gw = backend_gateway()
    at = time.time() + 4
    ids = [gw.send(f"scheduled {n}".encode(), "telegram", str(40 + n), at=f"{at:.3f}") for n in range(5)]
    assert {gw.cons(i).text for i in ids} == {"queued"}
    gw.kill9()
    restarted = backend_gateway(env={"MULTIMSG_DRAIN_INTERVAL": "0.5", "MULTIMSG_REPORT_GRACE": "3600"},
                                home=gw.home)  # the same data folder (or Redis), a runner that drains on its own
    sent = telegram.wait_for(count=5, timeout=60)
    assert sorted(r["fields"]["text"] for r in sent) == sorted(f"scheduled {n}" for n in range(5))
    assert time.time() >= at  # none was sent before its time
    assert {restarted.wait_state(i, drain=False, timeout=30)["state"] for i in ids} == {"delivered"}


def test_cancel_a_scheduled_message_it_is_never_sent_and_cons_reports_it_once(backend_gateway, telegram):
    gw = backend_gateway()
    message_id = gw.send(b"never", "telegram", "50", at=str(int(time.time() + 3600)))
    other = gw.http.post(gw.url + "/cancel", data={"id": message_id}, headers={"Accept": "application/json"}, timeout=30)
    assert other.status_code == 200 and other.json()["state"] == "cancelled"
    assert gw.http.post(gw.url + "/cancel", data={"id": message_id}, timeout=30).status_code == 409  # final now
    metrics = gw.http.get(gw.url + "/metrics", timeout=30).text
    assert 'multimsg_deliveries_total{outcome="cancelled",service="telegram"} 1.0' in metrics
    assert 'multimsg_queue_messages{service="telegram",state="cancelled"} 1.0' in metrics
    assert gw.drain()["claimed"] == 0
    assert gw.cons(message_id).text == "cancelled"  # reported once (no grace in tests), then archived
    assert gw.cons(message_id).status_code == 404
    assert telegram.received() == []


def test_cancel_refuses_a_sent_message_409_and_a_foreign_or_unknown_id_404(backend_gateway, telegram):
    gw = backend_gateway()
    queued = gw.send(b"mine", "telegram", "51", at=str(int(time.time() + 3600)))
    foreign = gw._session("127.0.0.2").post(gw.url + "/cancel", data={"id": queued}, timeout=30)
    assert foreign.status_code == 404, foreign.text
    assert gw.http.post(gw.url + "/cancel", data={"id": "A" * 16}, timeout=30).status_code == 404
    sent = gw.send(b"gone", "telegram", "52")
    assert gw.drain()["delivered"] == 1
    answer = gw.http.post(gw.url + "/cancel", data={"id": sent}, timeout=30)
    assert answer.status_code == 409 and "delivered" in answer.text
    assert gw.cons(queued).text == "queued"  # the foreign attempt changed nothing


def test_cli_cancel_and_client_cancel(backend_gateway, telegram):
    gw = backend_gateway()
    first = gw.send(b"a", "telegram", "53", at=str(int(time.time() + 3600)))
    second = gw.send(b"b", "telegram", "54", at=str(int(time.time() + 3600)))
    run = subprocess.run([sys.executable, "-m", "multimsg", "cancel", first, "--server", gw.url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.split() == [first, "cancelled"], (run.stdout, run.stderr)
    again = subprocess.run([sys.executable, "-m", "multimsg", "cancel", first, "--server", gw.url],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "cancelled" in again.stderr
    waited = subprocess.run([sys.executable, "-m", "multimsg", "status", first, "--wait", "--server", gw.url],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert waited.returncode == 11, (waited.returncode, waited.stderr)  # cancelled: neither delivered (0) nor failed (1)
    with Client(gw.url) as client:
        assert client.cancel(second).state == "cancelled"
        with pytest.raises(RequestRejected):
            client.cancel(second)
        with pytest.raises(NotFound):
            client.cancel("B" * 16)
    assert gw.drain()["claimed"] == 0 and telegram.received() == []

