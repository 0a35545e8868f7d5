"""The embedded store's intake journal (``multimsg/queue/backends/tiny_journal.py``).

An add is one group-committed append to its process's journal segment; every
other operation first folds the journal into the shards. Checked here:

- a burst of ``/msg`` answered and then ``kill -9``-ed before anything folded
  it is all queued after a restart, and each message is delivered once;
- a line added by one process is read by another, and a live process's
  segment is never removed under it; a dead one's is, once folded;
- a drain killed -9 half-way through filing the journal: after the restart
  every message is filed exactly once;
- a line torn by a crash (no newline) is never filed;
- a fold that died after filing and before recording how far it got is done
  again without a second copy, and never brings an archived message back;
- the threads adding at the same time share fsyncs (the group commit).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from multimsg.ids import new_id
from multimsg.layout import Layout
from multimsg.model import State
from multimsg.queue.backends.tiny import TinyStore
from tests.gatewayproc import ROOT
from tests.test_backend_contract import CLIENT, message


def segments(home) -> list[str]:
    return sorted(p.name for p in (home / "store" / "journal").glob("*.log"))


def filed(home) -> int:
    """Messages in the shards (what a fold has filed)."""
    import json

    return sum(len(json.loads(p.read_text())["messages"]) for p in (home / "store").glob("*.json"))


def queue_many(gateway, data_id: str, count: int, first_dest: int) -> list[str]:
    """``count`` /msg of one upload, over 8 connections at once, to chats ``first_dest`` onwards; their ids."""
    def queue(n: int) -> str:
        answer = gateway.msg(id=data_id, serv="telegram", dest=str(first_dest + n), type="text")
        assert answer.status_code == 200, answer.text
        return answer.text

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(queue, range(count)))


def test_a_burst_answered_then_killed_before_any_fold_is_queued_after_restart_and_delivered_once(make_gateway, telegram):
    gateway = make_gateway(env={"MULTIMSG_DRAIN_INTERVAL": "0", "MULTIMSG_RATE_LIMIT": "0"})
    ids = queue_many(gateway, gateway.upload_id(b"one upload, many messages"), 40, 5000)
    assert segments(gateway.home) and filed(gateway.home) == 0  # answered from the journal alone: nothing folded yet
    gateway.kill9()

    restarted = make_gateway(home=gateway.home)
    with ThreadPoolExecutor(8) as pool:
        assert collections.Counter(pool.map(lambda mid: restarted.cons(mid).text, ids)) == {"queued": 40}
    assert filed(gateway.home) == 0  # /cons read them from the journal: a look files nothing
    deadline = time.monotonic() + 60
    while len(telegram.received(ok_only=True)) < 40:
        restarted.drain()
        assert time.monotonic() < deadline, f"{len(telegram.received(ok_only=True))} of 40 delivered"
    chats = collections.Counter(r["fields"]["chat_id"] for r in telegram.wait_for(count=40))
    assert chats == {str(5000 + n): 1 for n in range(40)}


def test_a_drain_killed_while_it_files_the_journal_loses_nothing_and_files_nothing_twice(make_gateway, telegram):
    """A kill -9 in the middle of a fold (some shards written, the offsets not): the next fold skips what is filed."""
    env = {"MULTIMSG_RATE_LIMIT": "0", "MULTIMSG_TELEGRAM_RATE": "0", "MULTIMSG_TELEGRAM_DEST_INTERVAL": "0"}
    gateway = make_gateway(env=env)
    ids = queue_many(gateway, gateway.upload_id(b"filed, killed, filed again"), 600, 7000)
    threading.Thread(target=lambda: _quietly(gateway.drain), daemon=True).start()
    deadline = time.monotonic() + 60
    while not any((gateway.home / "store").glob("*.json")):  # the pass's first claim has begun to file the journal
        assert time.monotonic() < deadline, "the drain never filed anything"
        time.sleep(0.005)
    gateway.kill9()
    assert 0 < filed(gateway.home) < 600, "the fold was not caught half-way: nothing was tested"

    assert telegram.received() == []  # killed while filing, before the pass's first send

    restarted = make_gateway(home=gateway.home, env=env)
    with ThreadPoolExecutor(8) as pool:
        assert collections.Counter(pool.map(lambda mid: restarted.cons(mid).text, ids)) == {"queued": 600}
    TinyStore(Layout(gateway.home), fsync=False).fold()  # the fold the killed one left half-done, done again
    stored = collections.Counter(r["id"] for p in (gateway.home / "store").glob("*.json")
                                 for r in __import__("json").loads(p.read_text())["messages"].values())
    assert stored == {mid: 1 for mid in ids}  # every message filed, none twice


def _quietly(call) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001  (killed mid-answer)
        pass


ADDER = r"""
import sys, time
from multimsg.layout import Layout
from multimsg.queue.backends.tiny import TinyStore
from multimsg.ids import new_id
from tests.test_backend_contract import message
store = TinyStore(Layout(__import__("pathlib").Path(sys.argv[1])), fsync=False)
for line in sys.stdin:
    if line.strip() == "exit":
        break
    m = message(id=new_id())
    store.add(m)
    print(m.id, flush=True)
"""


def test_a_line_added_by_one_process_is_read_by_another_and_only_a_dead_ones_segment_goes(tmp_path):
    home = tmp_path / "home"
    reader = TinyStore(Layout(home), fsync=False)
    adder = subprocess.Popen([sys.executable, "-c", ADDER, str(home)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        adder.stdin.write("add\n")
        adder.stdin.flush()
        first = adder.stdout.readline().strip()
        assert reader.get(first) is not None  # read from the journal
        assert filed(home) == 0
        reader.fold()
        assert filed(home) == 1 and reader.get(first) is not None  # folded by the reading process
        assert len(segments(home)) == 1  # its process is alive: its segment stays
        adder.stdin.write("add\n")
        adder.stdin.flush()
        second = adder.stdout.readline().strip()
        assert reader.get(second) is not None  # read from where the last fold stopped
        adder.stdin.write("exit\n")
        adder.stdin.flush()
        assert adder.wait(30) == 0
    finally:
        adder.kill()
    assert len(segments(home)) == 1
    reader.sweep(time.time(), 3600)  # nothing new, but its process is gone: the drain's sweep removes the segment
    assert segments(home) == [] and reader.get(first) is not None and reader.get(second) is not None


def test_a_line_torn_by_a_crash_is_never_filed(tmp_path):
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-c", ADDER, str(home)], cwd=ROOT, input="add\nexit\n", text=True, check=True,
                   capture_output=True)
    [segment] = (home / "store" / "journal").glob("*.log")
    whole = segment.read_bytes()
    torn = message(id=new_id())
    line = __import__("json").dumps(torn.to_record()).encode()
    with open(segment, "ab") as f:
        f.write(line[: len(line) // 2])  # the write a kill -9 cut short: never answered
    store = TinyStore(Layout(home), fsync=False)
    assert store.get(torn.id) is None  # not read from the journal either
    store.fold()
    assert store.get(torn.id) is None and filed(home) == 1 and whole.count(b"\n") == 1
    store.sweep(time.time(), 3600)
    assert segments(home) == []  # folded to its last whole line, its process gone


def test_a_fold_done_again_after_a_crash_files_nothing_twice_and_never_brings_back_an_archived_message(tmp_path):
    home = tmp_path / "home"
    first = TinyStore(Layout(home), fsync=False)
    done, waiting = message(state=State.DELIVERED), message()
    first.add(done)
    first.add(waiting)
    # What a fold killed between filing and recording its offsets leaves: both filed, the journal not marked folded.
    first._add_many([done, waiting], only_new=True)
    assert (home / "store" / "journal" / "folded").exists() is False

    second = TinyStore(Layout(home), fsync=False)  # another process, after the crash
    assert second.archive(done.id, time.time()) is not None
    third = TinyStore(Layout(home), fsync=False)
    third.fold()
    assert third.get(done.id) is None and third.get(waiting.id) is not None
    assert filed(home) == 1
    counted = third.counters.snapshot()["services"]["counting"]["states"]
    assert {state: n for state, n in counted.items() if n} == {"queued": 1}
    assert [m.id for m in third.history(CLIENT, time.time())].count(waiting.id) == 1


@pytest.mark.parametrize("threads", [16])
def test_threads_adding_at_once_share_fsyncs(tmp_path, monkeypatch, threads):
    store = TinyStore(Layout(tmp_path / "home"), fsync=True)
    store.add(message())  # the segment exists: what follows only appends
    calls = collections.Counter()
    real = os.fsync

    def counted(fd):
        calls[os.readlink(f"/proc/self/fd/{fd}")] += 1
        return real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    per_thread = 20
    start = threading.Barrier(threads)

    def add_some() -> None:
        start.wait()
        for _ in range(per_thread):
            store.add(message())

    workers = [threading.Thread(target=add_some) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    monkeypatch.undo()
    journal = sum(n for path, n in calls.items() if "/store/journal/" in path)
    adds = threads * per_thread
    assert 0 < journal < adds * 3 // 4, calls  # every add durable, most sharing another's fsync
    assert filed(tmp_path / "home") == 0
    store.fold()
    assert filed(tmp_path / "home") == adds + 1


def test_offsets_that_cannot_be_written_are_a_full_disk_and_the_next_fold_files_nothing_twice(tmp_path, monkeypatch):
    import errno

    from multimsg.errors import StorageFull
    from multimsg.queue.backends import tiny_journal

    home = tmp_path / "home"
    store = TinyStore(Layout(home), fsync=False)
    m = message(id=new_id())
    store.add(m)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiny_journal, "write_atomic", full)
    with pytest.raises(StorageFull):  # a 507 for whoever asked, never a 500
        store.fold()
    counted = store.counters.snapshot()["services"]["counting"]["states"]  # the figures still answer
    assert counted["queued"] == 1
    monkeypatch.undo()
    assert filed(home) == 1  # filed before the offsets failed
    store.fold()
    assert filed(home) == 1 and store.get(m.id) is not None
