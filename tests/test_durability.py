"""Nothing accepted is lost: kill -9 right after /msg, and many writers at once."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from multimsg.layout import Layout
from multimsg.queue.backends.tiny import TinyStore
from tests.gatewayproc import ROOT


def test_queued_message_survives_kill_9_and_is_delivered_after_restart(make_gateway, telegram):
    gateway = make_gateway()
    message_id = gateway.send(b"survive me", "telegram", "4242")
    gateway.kill9()

    restarted = make_gateway(home=gateway.home)
    assert restarted.cons(message_id).text == "queued"
    assert restarted.wait_state(message_id)["state"] == "delivered"
    assert telegram.wait_for(count=1)[0]["fields"]["text"] == "survive me"


WRITER = r"""
import sys, requests
url_a, url_b, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ids = []
for i in range(n):
    url = url_a if i % 2 else url_b
    data_id = requests.post(url + "/data", files={"data": ("t", f"{tag}-{i}".encode())}).text
    response = requests.post(url + "/msg", data={"id": data_id, "serv": "telegram", "dest": str(1000 + i), "type": "text"})
    assert response.status_code == 200, response.text
    ids.append(response.text)
print(" ".join(ids))
"""


def test_concurrent_writers_in_several_processes_lose_nothing(make_gateway):
    # Two runner processes share one data folder; four client processes write through both.
    first = make_gateway()
    second = make_gateway(home=first.home)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, first.url, second.url, "25", f"w{n}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    ids = []
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        ids += out.split()
    assert len(ids) == len(set(ids)) == 100

    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(lambda mid: first.cons(mid).text, ids))
    assert states == ["queued"] * 100

    TinyStore(Layout(first.home), fsync=False).fold()  # the journals into the shards, as the drain's first claim does
    stored = 0
    for shard in (first.home / "store").glob("*.json"):
        stored += len(json.loads(shard.read_text())["messages"])
    assert stored == 100
