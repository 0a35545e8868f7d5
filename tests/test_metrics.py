"""GET /metrics and ``multimsg stats``: the figures match what was sent, across processes.

Scrapes are parsed with ``prometheus_client.parser``. Queue figures come from
the counters file beside the store, so a second runner on the same data folder
(and the ``multimsg`` command) sees the same numbers as the first.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_cli import multimsg


def scrape(gateway, **headers) -> dict[tuple, float]:
    response = gateway.http.get(gateway.url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """The sample's value; a series that is not in the scrape fails the test (it is not 0)."""
    key = (name, *sorted(labels.items()))
    assert key in samples, f"no series {name}{labels} in the scrape"
    return samples[key]


def absent(samples: dict, name: str, **labels) -> bool:
    """True if the scrape has no such series (for the places that expect none)."""
    return (name, *sorted(labels.items())) not in samples


def test_metrics_and_stats_match_what_was_sent(gateway, telegram, whatsapp):
    telegram.script("chat_not_found", dest=999)
    whatsapp.script("server_error")
    delivered = [gateway.send(f"hola {n}".encode(), "telegram", str(100 + n)) for n in range(2)]
    gateway.send(b"to nowhere", "telegram", "999")
    gateway.send(b"later", "wpp1", "5491155551234")
    assert gateway.drain()["claimed"] == 4

    samples = scrape(gateway)
    assert absent(samples, "multimsg_http_requests_total", endpoint="metrics", status="200")  # counted once answered
    assert value(samples, "multimsg_http_requests_total", endpoint="msg", status="200") == 4
    assert value(samples, "multimsg_http_requests_total", endpoint="data", status="200") == 4
    assert value(samples, "multimsg_http_requests_total", endpoint="drain", status="200") == 1
    assert value(samples, "multimsg_queue_messages", service="telegram", state="delivered") == 2
    assert value(samples, "multimsg_queue_messages", service="telegram", state="failed") == 1
    assert value(samples, "multimsg_queue_messages", service="telegram", state="queued") == 0
    assert value(samples, "multimsg_queue_messages", service="wpp1", state="queued") == 1
    assert value(samples, "multimsg_deliveries_total", service="telegram", outcome="delivered") == 2
    assert value(samples, "multimsg_deliveries_total", service="telegram", outcome="failed") == 1
    assert value(samples, "multimsg_deliveries_total", service="wpp1", outcome="retried") == 1
    assert value(samples, "multimsg_send_latency_seconds_count", service="telegram", outcome="delivered") == 2
    assert value(samples, "multimsg_send_latency_seconds_bucket", service="telegram", outcome="delivered", le="+Inf") == 2
    assert value(samples, "multimsg_drain_pass_duration_seconds_count") == 1
    assert value(samples, "multimsg_drain_last_pass_timestamp_seconds") > 0
    assert value(samples, "multimsg_service_configured", service="telegram") == 1
    assert 0 <= value(samples, "multimsg_queue_oldest_age_seconds", service="wpp1") < 3600

    # Reading a final state archives the record: the depth follows.
    assert gateway.state(delivered[0])["state"] == "delivered"
    samples = scrape(gateway)
    assert value(samples, "multimsg_queue_messages", service="telegram", state="delivered") == 1
    assert value(samples, "multimsg_http_requests_total", endpoint="metrics", status="200") == 1

    home = {"MULTIMSG_HOME": str(gateway.home)}
    result = multimsg("stats", "--json", env=home)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["services"]
    assert stats["telegram"]["states"] == {"queued": 0, "delivered": 1, "failed": 1}
    assert stats["telegram"]["last_hour"] == {"delivered": 2, "failed": 1, "retried": 0}
    assert stats["wpp1"]["states"]["queued"] == 1
    assert stats["wpp1"]["last_hour"]["retried"] == 1
    assert stats["wpp1"]["oldest_queued_age"] is not None and stats["wpp1"]["oldest_queued_age"] < 3600
    assert stats["telegram"]["oldest_queued_age"] is None

    table = multimsg("stats", env=home).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["service", "queued", "oldest"]
    assert [line.split()[:2] for line in table[1:3]] == [["telegram", "0"], ["wpp1", "1"]]
    assert table[-1].startswith("drain: 1 passes")


def test_drain_command_prints_a_summary_line_and_is_counted(gateway, telegram):
    gateway.send(b"drained by cron", "telegram", "321")
    result = multimsg("drain", env={"MULTIMSG_HOME": str(gateway.home), **gateway.env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("drain: claimed 1, delivered 1, retried 0, failed 0 in ")
    assert "message " in result.stderr.decode()  # the state-change line, logged to stderr
    samples = scrape(gateway)
    assert value(samples, "multimsg_deliveries_total", service="telegram", outcome="delivered") == 1
    assert value(samples, "multimsg_drain_pass_duration_seconds_count") == 1


def test_two_runners_on_one_data_folder_serve_the_same_figures(make_gateway, telegram):
    first = make_gateway("shared")
    second = make_gateway(home=first.home)
    for n in range(3):
        first.send(f"via the first runner {n}".encode(), "telegram", str(200 + n))
    second.drain()
    for runner in (first, second):
        samples = scrape(runner)
        assert value(samples, "multimsg_http_requests_total", endpoint="msg", status="200") == 3
        assert value(samples, "multimsg_queue_messages", service="telegram", state="delivered") == 3
        assert value(samples, "multimsg_deliveries_total", service="telegram", outcome="delivered") == 3


REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # a caller relayed by a proxy the server does not trust: not loopback


@pytest.mark.parametrize("token", [None, "s3cret-operator-token"])
def test_metrics_follow_the_drain_rule(make_gateway, token):
    gateway = make_gateway(env={"MULTIMSG_DRAIN_TOKEN": token} if token else {})
    remote = gateway.http.get(gateway.url + "/metrics", headers=REMOTE)
    assert remote.status_code == 401
    if token:
        assert gateway.http.get(gateway.url + "/metrics").status_code == 401
        assert gateway.http.get(gateway.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scrape(gateway, Authorization=f"Bearer {token}")
        scrape(gateway, Authorization=f"Bearer {token}", **REMOTE)
    else:
        scrape(gateway)
