"""Durable writes on a full disk: a short write or ENOSPC never leaves a torn line.

``os.write`` / ``os.pwrite`` are replaced by versions that write part of the
buffer and then fail with ENOSPC, the way a filling disk behaves.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from multimsg.queue.layout import Layout

from multimsg.fsutil import append_durable
from multimsg.queue.counters import Counters


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
    counters = Counters(Layout(tmp_path))
    record = {"serv": "telegram", "state": "queued", "created_at": 1000.0}
    counters.added(record)
    counters.added(record)
    calls: list[int] = []
    monkeypatch.setattr(os, "pwrite", filling_disk(os.pwrite, calls))
    with pytest.raises(OSError):
        counters.added(record)
    monkeypatch.undo()
    raw = counters.path.read_bytes()
    assert raw == b"" or json.loads(raw)  # empty (recounted on the next change) or whole, never torn
    counters.added(record)
    assert json.loads(counters.path.read_bytes())["services"]["telegram"]["states"]["queued"] >= 1
