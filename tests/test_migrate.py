"""``multimsg migrate --to redis://...``: an embedded deployment's messages and content move into Redis, once.

A data folder with a queued message, a leased one (a drain pass of the old deployment died) and a
delivered one; the command copies all three with their content, keeps their ids and states, leaves
the archive alone, and a second run copies nothing. Then a runner on the Redis backend (another,
empty data folder) delivers the queued ones and reports the delivered one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import Message, State
from multimsg.queue.backends.files import FileSpool
from multimsg.queue.backends.tiny import TinyStore
from multimsg.queue.sealed import SealedSpool, open_name
from multimsg.storage_keys import KeyFile
from tests.gatewayproc import ROOT, Gateway
from tests.redis_support import redis_server, redis_url  # noqa: F401  (fixtures)

CLIENT = "ip:127.0.0.1"


def run_migrate(home, url: str, key_file: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MULTIMSG_HOME": str(home), "MULTIMSG_FSYNC": "0", "MULTIMSG_STORAGE_KEY_FILE": key_file}
    return subprocess.run([sys.executable, "-m", "multimsg", "migrate", "--to", url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_migrate_copies_queued_and_final_messages_with_their_content_once(tmp_path, redis_url, gateway_env, telegram):
    from multimsg.queue.backends.redis import RedisSpool, RedisStore, connect

    home = tmp_path / "embedded"
    layout = Layout(home)
    store, spool = TinyStore(layout, fsync=False), FileSpool(layout, ttl=3600, fsync=False)
    now = time.time()
    made = {}
    for name, text, changes in [("queued", b"en cola", {}), ("leased", b"con lease", {"claim": "old-pass", "claim_until": now + 3600}),
                                ("delivered", b"entregado", {"state": State.DELIVERED, "platform_ids": ["p1"]})]:
        info = spool.put(CLIENT, [text], "t.txt")
        m = Message(id=new_id(), client=CLIENT, data_id=info.data_id, serv="telegram", dest=str(4700 + len(made)), type="text",
                    filename="t.txt", created_at=now, updated_at=now, next_attempt_at=now).with_changes(**changes)
        spool.attach(CLIENT, info.data_id, m.id)
        store.add(m)
        made[name] = (m, text)
    archived = spool.put(CLIENT, [b"archivado"], "t.txt")
    gone = Message(id=new_id(), client=CLIENT, data_id=archived.data_id, serv="telegram", dest="4799", type="text", filename="t.txt",
                   created_at=now, updated_at=now, next_attempt_at=now, state=State.DELIVERED)
    store.add(gone)
    assert store.archive(gone.id, now) is not None  # in the archive: not migrated

    first = run_migrate(home, redis_url, gateway_env["MULTIMSG_STORAGE_KEY_FILE"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "migrate: copied 3, already there 0, without content 0"
    again = run_migrate(home, redis_url, gateway_env["MULTIMSG_STORAGE_KEY_FILE"])
    assert again.stdout.strip() == "migrate: copied 0, already there 3, without content 0", again.stderr

    client = connect(redis_url)
    keys = KeyFile(Path(gateway_env["MULTIMSG_STORAGE_KEY_FILE"]))
    target, target_spool = RedisStore(client), SealedSpool(RedisSpool(client, ttl=3600), keys)  # sealed at rest
    for name, (m, text) in made.items():
        copied = target.get(m.id)
        assert copied is not None and copied.state == m.state and copied.claim is None, name
        assert target_spool.message_content(CLIENT, m.id).read() == text
        assert open_name(target_spool.message_content(CLIENT, m.id), copied.filename) == "t.txt"
    assert target.get(gone.id) is None
    assert len(client.keys("mm:{mm}:blob:*")) == 3  # one blob per message: the second run added none
    states = target.counters.snapshot()["services"]["telegram"]["states"]
    assert (states["queued"], states["delivered"]) == (2, 1)

    with Gateway(tmp_path / "runner", {**gateway_env, "MULTIMSG_BACKEND": redis_url, "MULTIMSG_IDENTITY": "ip",
                                             "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"}) as runner:
        assert runner.cons(made["delivered"][0].id).text == "delivered"
        for name in ("queued", "leased"):
            assert runner.wait_state(made[name][0].id)["state"] == "delivered", name
    texts = sorted(r["fields"]["text"] for r in telegram.received(ok_only=True))
    assert texts == ["con lease", "en cola"]
