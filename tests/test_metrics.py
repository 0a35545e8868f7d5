"""GET /metrics and ``multimsg stats``: the figures match what was sent, across processes.

Scrapes are parsed with ``prometheus_client.parser``. Queue figures come from
the counters file beside the store, so a second runner on the same data folder
(and the ``multimsg`` command) sees the same numbers as the first.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
    assert stats["telegram"]["states"] == {"queued": 0, "delivered": 1, "failed": 1, "cancelled": 0}
    assert stats["telegram"]["last_hour"] == {"delivered": 2, "failed": 1, "retried": 0, "cancelled": 0}
    assert stats["wpp1"]["states"]["queued"] == 1
    assert stats["wpp1"]["last_hour"]["retried"] == 1
    assert stats["wpp1"]["oldest_queued_age"] is not None and stats["wpp1"]["oldest_queued_age"] < 3600
    assert stats["telegram"]["oldest_queued_age"] is None

    table = multimsg("stats", env=home).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["service", "queued", "oldest"]
    assert [line.split()[:2] for line in table[1:4]] == [["outbox", "0"], ["telegram", "0"], ["wpp1", "1"]]
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


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_metrics_files_of_ended_processes_are_swept_and_their_counts_kept(make_gateway, telegram, tmp_path):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    home = tmp_path / "swept"
    folder = home / "metrics"
    folder.mkdir(parents=True)
    dead = _dead_pid()
    counted = MmapedDict(str(folder / f"counter_{dead}.db"))
    counted.write_value(mmap_key("multimsg_http_requests", "multimsg_http_requests_total", ["endpoint", "status"], ["msg", "200"],
                                 "HTTP requests answered, by endpoint and status code"), 5.0, 0.0)
    counted.close()
    live = MmapedDict(str(folder / f"gauge_livesum_{dead}.db"))
    live.write_value(mmap_key("some_gauge", "some_gauge", [], [], "a live gauge of an ended process"), 7.0, 0.0)
    live.close()

    first = make_gateway(home=home)
    first.send(b"counted once", "telegram", "555")
    samples = scrape(first)
    names = sorted(p.name for p in folder.glob("*.db"))
    assert f"counter_{dead}.db" not in names and f"gauge_livesum_{dead}.db" not in names, names
    assert absent(samples, "some_gauge")  # the ended process's live gauge is gone
    assert value(samples, "multimsg_http_requests_total", endpoint="msg", status="200") == 5 + 1  # its count is kept

    # A restarted runner folds the files of the one before it: still one file per live process plus the merged ones.
    first.stop()
    second = make_gateway(home=home)
    samples = scrape(second)
    assert value(samples, "multimsg_http_requests_total", endpoint="msg", status="200") == 6
    assert value(samples, "multimsg_http_requests_total", endpoint="metrics", status="200") == 1
    assert not [p.name for p in folder.glob("counter_*.db") if p.name != "counter_merged.db" and not Path(f"/proc/{p.stem.split('_')[1]}").exists()]
