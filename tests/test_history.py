"""GET /messages, ``multimsg history`` and ``Client.history``: a client's own messages, newest first, through a real gateway.

Each test runs on the embedded backend and on Redis (a real redis-server).
Clients are told apart by token (``MULTIMSG_IDENTITY=token``): alice never
sees bob's messages, reading the history never changes what ``/cons`` reports,
reported and archived messages stay listed, and a cursor walks every page once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from multimsg.client import Client
from multimsg.tokens import add_token
from tests.gatewayproc import ROOT
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

SEAL = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@pytest.fixture(params=["embedded", "redis"])
def runner(request, make_gateway):
    env = {"MULTIMSG_IDENTITY": "token", "MULTIMSG_RATE_LIMIT": "0"}
    if request.param == "redis":
        env |= {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url"), "MULTIMSG_KEY_SEAL": SEAL}
    env["MULTIMSG_TOKENS_FILE"] = str(request.getfixturevalue("tmp_path") / "history" / "tokens")  # a file on both backends
    gateway = make_gateway("history", env=env)
    gateway.tokens = {name: add_token(name, gateway.home / "tokens") for name in ("alice", "bob")}
    return gateway


def auth(runner, name: str) -> dict:
    return {"Authorization": f"Bearer {runner.tokens[name]}"}


def send(runner, name: str, text: bytes, serv: str = "telegram") -> str:
    headers = auth(runner, name)
    upload = runner.http.post(runner.url + "/data", files={"data": ("t.txt", text)}, headers=headers, timeout=30)
    assert upload.status_code == 200, upload.text
    queued = runner.http.post(runner.url + "/msg", data={"id": upload.text, "serv": serv, "dest": "42", "type": "text"},
                              headers=headers, timeout=30)
    assert queued.status_code == 200, queued.text
    return queued.text


def history(runner, name: str, **params) -> dict:
    answer = runner.http.get(runner.url + "/messages", params=params, headers=auth(runner, name), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cons(runner, name: str, message_id: str):
    return runner.http.post(runner.url + "/cons", data={"id": message_id}, headers=auth(runner, name), timeout=30)


def test_history_shows_only_the_clients_own_messages_and_keeps_reported_ones(runner, telegram):
    first = send(runner, "alice", b"uno")
    theirs = [send(runner, "bob", b"de bob"), send(runner, "bob", b"otro de bob")]
    runner.drain()
    assert cons(runner, "alice", first).text == "delivered"  # reported, and archived at once (no grace in tests)
    assert cons(runner, "alice", first).status_code == 404
    second = send(runner, "alice", b"dos")
    runner.drain()  # delivered, not yet reported
    third = send(runner, "alice", b"tres")  # queued

    page = history(runner, "alice")
    assert [m["id"] for m in page["messages"]] == [third, second, first]
    assert [m["state"] for m in page["messages"]] == ["queued", "delivered", "delivered"]
    assert page["next_cursor"] is None
    assert [m["id"] for m in history(runner, "bob")["messages"]] == list(reversed(theirs))
    assert cons(runner, "alice", second).text == "delivered"  # the history did not report it
    assert [m["id"] for m in history(runner, "alice", state="queued")["messages"]] == [third]
    assert history(runner, "alice", serv="wpp1")["messages"] == []
    assert runner.http.get(runner.url + "/messages", timeout=30).status_code == 401  # no token, no history


def test_history_pages_with_a_cursor_and_refuses_bad_queries(runner, telegram):
    sent = [send(runner, "alice", f"m{i}".encode()) for i in range(7)]
    send(runner, "bob", b"not alice's")
    seen, cursor = [], None
    while True:
        page = history(runner, "alice", limit=3, **({"cursor": cursor} if cursor else {}))
        seen.append([m["id"] for m in page["messages"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in seen] == [3, 3, 1]
    assert sum(seen, []) == list(reversed(sent))
    for bad in ({"limit": "501"}, {"limit": "0"}, {"cursor": "nonsense"}, {"state": "lost"}, {"since": "yesterday"}, {"page": "2"}):
        answer = runner.http.get(runner.url + "/messages", params=bad, headers=auth(runner, "alice"), timeout=30)
        assert answer.status_code == 400 and answer.text.strip(), (bad, answer.text)


def test_cli_history_prints_a_table_and_json_and_the_client_pages(runner, telegram):
    sent = [send(runner, "alice", b"hola"), send(runner, "alice", b"adios")]
    env = {**os.environ, "MULTIMSG_URL": runner.url, "MULTIMSG_TOKEN": runner.tokens["alice"], "PYTHONPATH": str(ROOT)}
    table = subprocess.run([sys.executable, "-m", "multimsg", "history"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "CREATED", "STATE", "SERV"]
    assert [line.split()[0] for line in lines[1:]] == list(reversed(sent))
    scripted = subprocess.run([sys.executable, "-m", "multimsg", "history", "--json", "--limit", "1", "--all"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert scripted.returncode == 0, scripted.stderr
    assert [m["id"] for m in json.loads(scripted.stdout)["messages"]] == list(reversed(sent))
    with Client(runner.url, runner.tokens["alice"]) as client:
        page = client.history(limit=1)
        assert [m["id"] for m in page["messages"]] == [sent[1]]
        assert [m["id"] for m in client.history(cursor=page["next_cursor"])["messages"]] == [sent[0]]


def test_messages_older_than_the_history_days_leave_the_history(make_gateway, telegram):
    import time

    runner = make_gateway("short", env={"MULTIMSG_HISTORY_DAYS": str(1.5 / 86400), "MULTIMSG_RATE_LIMIT": "0"})  # 1.5 s
    message_id = runner.send(b"pronto viejo", "telegram", "47")
    listed = runner.http.get(runner.url + "/messages", timeout=30).json()["messages"]
    assert [m["id"] for m in listed] == [message_id]
    deadline = time.monotonic() + 30
    while runner.http.get(runner.url + "/messages", timeout=30).json()["messages"]:
        assert time.monotonic() < deadline, "still listed 30 s after a 1.5 s window"
        time.sleep(0.1)
    assert runner.cons(message_id).text == "queued"  # gone from the history, not from the queue
