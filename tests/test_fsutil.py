"""Durable writes on a full disk: a short write or ENOSPC never leaves a torn line.

``os.write`` / ``os.pwrite`` are replaced by versions that write part of the
buffer and then fail with ENOSPC, the way a filling disk behaves.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from multimsg.fsutil import append_durable
from multimsg.layout import Layout
from multimsg.model import Message
from multimsg.queue.backends.tiny import TinyStore


def filling_disk(real, calls: list[int]):
    """``real`` (os.write or os.pwrite) that writes half the buffer once, then fails with ENOSPC."""

    def write(fd, data, *args):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[: len(data) // 2]), *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_append_on_a_full_disk_leaves_no_torn_line_and_the_next_append_reads(tmp_path, monkeypatch):
    path = tmp_path / "archive.jsonl"
    append_durable(path, b'{"id": "first"}\n')
    calls: list[int] = []
    monkeypatch.setattr(os, "write", filling_disk(os.write, calls))
    with pytest.raises(OSError) as full:
        append_durable(path, b'{"id": "second, on a full disk"}\n')
    assert full.value.errno == errno.ENOSPC and len(calls) == 2  # the short write was continued, then failed
    monkeypatch.undo()
    assert path.read_bytes() == b'{"id": "first"}\n'
    append_durable(path, b'{"id": "third"}\n')
    assert [json.loads(line)["id"] for line in path.read_bytes().splitlines()] == ["first", "third"]


def test_append_continues_short_writes(tmp_path, monkeypatch):
    path = tmp_path / "archive.jsonl"
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    append_durable(path, b'{"id": "written three bytes at a time"}\n')
    monkeypatch.undo()
    assert json.loads(path.read_bytes())["id"] == "written three bytes at a time"


def test_counters_on_a_full_disk_are_never_torn(tmp_path, monkeypatch):
    store = TinyStore(Layout(tmp_path), fsync=False, shard_hex_digits=1)

    def message(n: int) -> Message:
        return Message(id=f"{n:016d}", client="ip:127.0.0.1", data_id="d" * 16, serv="telegram", dest="1", type="text",
                       created_at=1000.0 + n)

    shard = store.shard_of(message(1).id)
    same_shard = [m for m in (message(n) for n in range(1, 200)) if store.shard_of(m.id) == shard]
    store.add(same_shard[0])
    store.add(same_shard[1])
    calls: list[int] = []
    monkeypatch.setattr(os, "write", filling_disk(os.write, calls))
    with pytest.raises(OSError):
        store.counters.write(shard, {"version": 2, "services": {"telegram": {"states": {"queued": 99}}}})
    monkeypatch.undo()
    raw = Path(store.counters.path(shard)).read_bytes()
    assert raw == b"" or json.loads(raw)  # empty (recounted on the next change) or whole, never torn
    store.add(same_shard[2])  # an empty figures file is recounted from the shard's records
    figures = store.counters.snapshot(time.time())["services"]["telegram"]
    assert figures["states"]["queued"] == 3


# -- appends from many threads: a group commit -----------------------------------------------------
GROUPED = """
import sys, threading, contextlib
from pathlib import Path
from multimsg.fsutil import append_grouped
path, threads, each = Path(sys.argv[1]), 16, 25
start = threading.Barrier(threads)
def work(t):
    start.wait()
    for n in range(each):
        append_grouped(path, b"\\n%d-%d" % (t, n), fsync=True, lock=contextlib.nullcontext)
workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
"""


def test_appends_from_many_threads_share_writes_and_fsyncs_and_keep_every_line(tmp_path):
    import re
    import subprocess
    import sys

    from tests.conftest import require_tool

    strace = require_tool("strace", "apt-get install -y strace")
    path, counts = tmp_path / "history.jsonl", tmp_path / "counts"
    subprocess.run([strace, "-f", "-c", "-e", "trace=fsync", "-o", str(counts), sys.executable, "-c", GROUPED, str(path)],
                   check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    lines = path.read_bytes().split(b"\n")[1:]
    assert sorted(lines) == sorted(b"%d-%d" % (t, n) for t in range(16) for n in range(25))  # each line once, none torn
    fsyncs = int(re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?fsync\s*$", counts.read_text(), re.M)[1])
    assert 1 <= fsyncs < 400  # 400 lines, each made durable by a shared fsync
    print(f"400 durable appends from 16 threads: {fsyncs} fsyncs")


def test_a_failed_grouped_write_fails_every_line_in_it_and_the_next_write_goes_on(tmp_path):
    import contextlib

    from multimsg.fsutil import append_grouped

    path = tmp_path / "missing-folder" / "history.jsonl"
    with pytest.raises(FileNotFoundError):
        append_grouped(path, b"\nlost", lock=contextlib.nullcontext)
    path.parent.mkdir()
    append_grouped(path, b"\nkept", lock=contextlib.nullcontext)
    assert path.read_bytes() == b"\nkept"
